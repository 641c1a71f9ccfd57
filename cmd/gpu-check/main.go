// Command gpu-check proves the agent's GPU path on a machine with an NVIDIA
// GPU and driver: it prints the real NVML inventory, generates a CDI spec
// with nvcdi, starts a private containerd, serves a test image from a
// registry on 127.0.0.1, and starts an instance holding one GPU whose
// container must list exactly that GPU's device node. It builds nothing:
// deploy/gpu-check.sh runs it from a bundle made by deploy/build-gpu-check.sh.
// It exits 0 only when every step passed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/testenv"
)

func main() {
	bundle := flag.String("bundle", ".", "directory holding payload and nvidia-cdi-hook")
	work := flag.String("work", "", "scratch directory (default: a new temporary one)")
	flag.Parse()
	if err := run(*bundle, *work); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("PASS: the container saw exactly its GPU")
}

func step(format string, args ...any) {
	fmt.Printf("== %s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(bundle, work string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	bundle, _ = filepath.Abs(bundle)
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "gpu-check-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}

	step("NVML inventory")
	lib := nvml.New()
	inv, err := gpu.Open(lib, logger)
	if err != nil {
		return fmt.Errorf("open NVML: %w", err)
	}
	defer inv.Close()
	b, _ := json.MarshalIndent(map[string]any{"driver": inv.DriverVersion(), "cuda": inv.CUDADriverVersion(), "gpus": inv.GPUs()}, "", "  ")
	fmt.Println(string(b))
	if inv.Len() == 0 {
		return fmt.Errorf("NVML reports no GPU")
	}

	step("CDI spec generated with nvcdi")
	specDir := filepath.Join(work, "cdi")
	if err := os.MkdirAll(specDir, 0o755); err != nil {
		return err
	}
	hook := filepath.Join(bundle, "nvidia-cdi-hook")
	injector, err := cdi.New(cdi.Config{SpecDirs: []string{specDir}, AllowedHookPaths: append(cdi.DefaultHookPaths(), hook), Logger: logger})
	if err != nil {
		return err
	}
	if _, err := injector.EnsureNVIDIASpec(ctx, inv, lib, cdi.GenerateOptions{OutDir: specDir, HookPath: hook}); err != nil {
		return fmt.Errorf("generate CDI spec: %w", err)
	}
	report, _ := json.MarshalIndent(injector.Report(), "", "  ")
	fmt.Println(string(report))

	step("containerd")
	ctd, err := testenv.StartContainerd(filepath.Join(work, "containerd"))
	if err != nil {
		return err
	}
	defer ctd.Close()
	fmt.Println("containerd answers on", ctd.Address)

	step("test image on a registry at 127.0.0.1")
	payload, err := os.ReadFile(filepath.Join(bundle, "payload"))
	if err != nil {
		return err
	}
	reg := testenv.StartRegistry()
	defer reg.Close()
	ref, err := reg.PushPayloadBinary("payload:gpu-check", payload, 0)
	if err != nil {
		return err
	}
	fmt.Println("image", ref)

	step("instance with one GPU")
	backend, err := containerd.New(containerd.Options{
		Address: ctd.Address, Namespace: "rentals", AgentID: "gpu-check",
		LogDir: filepath.Join(work, "logs"), Logger: logger, Devices: injector,
	})
	if err != nil {
		return err
	}
	rt := runtime.NewLifecycle(backend, runtime.LifecycleOptions{
		Kinds:  []runtime.ReservationKind{runtime.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(inv))}},
		Logger: logger,
	})
	defer rt.Close()
	inst, err := rt.Start(ctx, runtime.InstanceSpec{
		ID: "gpu-check", Image: ref, Command: []string{"ls", "/dev", "env", "sleep", "inf"},
		Env:        map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"},
		GPURequest: runtime.GPURequest{Count: 1},
	})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer rt.Terminate(context.Background(), "gpu-check", 5*time.Second)
	fmt.Printf("instance holds %+v\n", inst.GPUs)
	var want string
	for _, g := range inv.GPUs() {
		if g.UUID == inst.GPUs[0].UUID {
			want = fmt.Sprintf("nvidia%d", g.MinorNumber)
		}
	}

	var out string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, _, err := rt.Logs(ctx, "gpu-check", 1000)
		if err != nil {
			return err
		}
		if out = string(b); strings.Contains(out, "PATH=") {
			break
		}
	}
	fmt.Println("-- the container's /dev and environment:")
	fmt.Print(out)
	var gpus []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "nvidia") && strings.TrimLeft(strings.TrimPrefix(line, "nvidia"), "0123456789") == "" {
			gpus = append(gpus, line)
		}
	}
	fmt.Printf("-- GPU device nodes inside: %v (allocated: %s)\n", gpus, want)
	if !slices.Equal(gpus, []string{want}) {
		return fmt.Errorf("container sees GPU nodes %v, want exactly [%s]", gpus, want)
	}
	return nil
}
