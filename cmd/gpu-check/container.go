package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/containerd/daemon"
)

// The bundle's files the container stage needs (see
// deploy/build-gpu-check.sh).
var bundleFiles = []string{"containerd", "containerd-shim-runc-v2", "runc", "gpu-check-probe", "lib/libc.so.6", "lib/ld-linux-x86-64.so.2"}

const instanceID = "gpu-check"

// stageContainer starts a private containerd from the bundle and, through
// the agent's own start path (allocator, CDI injection and verification,
// confinement), a rental holding the target GPU; inside, the probe must see
// exactly that GPU's device node and nvidia-smi must list exactly that GPU.
// A refusal by the host (namespaces, mounts, cgroups under a sandbox) is
// reported as this stage's failure with the runtime's own words.
func (c *check) stageContainer(ctx context.Context, out io.Writer) (any, error) {
	switch {
	case c.cfg.mock && !c.cfg.mockContainer:
		return nil, skipped("mock NVML: no real GPU to give a container (--container runs it on the fake device nodes)")
	case c.alloc == nil:
		return nil, skipped("needs the allocator (stage 4)")
	case !c.specOK:
		return nil, skipped("needs a CDI spec that injects the GPU (stage 2)")
	}
	for _, f := range bundleFiles {
		if _, err := os.Stat(filepath.Join(c.cfg.bundle, f)); err != nil {
			return nil, skipped("bundle %s lacks %s (build it with deploy/build-gpu-check.sh)", c.cfg.bundle, f)
		}
	}
	details := map[string]any{}
	logs, err := c.runProbe(ctx, out, c.cdi, c.alloc, c.target.UUID, "containerd", details)
	if err != nil {
		return details, err
	}
	return details, c.judgeProbe(logs, details)
}

// runProbe starts a private containerd from the bundle (its state under
// workName in the work directory) and, through the agent's own start path
// with injector and alloc, a rental holding the GPU or MIG device uuid that
// runs the probe; it returns the probe's output once it finished, and
// removes the rental. details gets what it learnt on the way.
func (c *check) runProbe(ctx context.Context, out io.Writer, injector *cdi.Injector, alloc *gpu.Allocator, uuid, workName string, details map[string]any) (string, error) {
	env := append(os.Environ(), "PATH="+c.cfg.bundle+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	d, err := daemon.Start(ctx, filepath.Join(c.cfg.bundle, "containerd"), filepath.Join(c.cfg.work, workName), env)
	if err != nil {
		return "", err
	}
	defer func() {
		if err := d.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "gpu-check: clean up containerd:", err)
		}
	}()
	sn, err := snapshotter(ctx, d.Address)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(out, "containerd from the bundle answers on %s (snapshotter %s)\n", d.Address, sn)
	details["snapshotter"] = sn

	archive := filepath.Join(c.cfg.work, "probe-image.tar")
	if err := buildImage(archive, filepath.Join(c.cfg.bundle, "gpu-check-probe"), filepath.Join(c.cfg.bundle, "lib")); err != nil {
		return "", fmt.Errorf("build the probe image: %w", err)
	}
	const ns = "rentals"
	if err := importImage(ctx, d.Address, ns, archive); err != nil {
		return "", err
	}
	fmt.Fprintf(out, "image %s imported\n", probeImage)

	backend, err := containerd.New(containerd.Options{
		Address: d.Address, Namespace: ns, AgentID: "gpu-check", Snapshotter: sn,
		LogDir: filepath.Join(c.cfg.work, "logs"), Logger: c.cfg.logger, Devices: injector,
	})
	if err != nil {
		return "", err
	}
	defer backend.Close()
	// The agent's own lifecycle, with every reservation kind a rental
	// takes (internal/agent), over the stage's allocator.
	rt, _, err := agent.NewLifecycle(backend, agent.LifecycleOptions{
		Inventory:    c.inv,
		Reservations: checkReservations(alloc, c.cfg.work),
		Logger:       c.cfg.logger,
	})
	if err != nil {
		return "", fmt.Errorf("the agent's reservations: %w", err)
	}
	defer rt.Close()
	inst, err := rt.Start(ctx, runtime.InstanceSpec{
		ID: instanceID, Image: probeImage,
		Env:        map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"},
		GPURequest: runtime.GPURequest{IDs: []string{uuid}},
	})
	if err != nil {
		err = fmt.Errorf("start the rental: %w", err)
		if refused(err) {
			err = fmt.Errorf("the host refused the container (sandboxed? %s): %w", sandboxHint(), err)
		}
		fmt.Fprintf(out, "containerd log (tail):\n%s\n", d.LogTail(2000))
		return "", err
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := rt.Terminate(tctx, instanceID, 2*time.Second); err != nil {
			fmt.Fprintln(out, "terminate the rental:", err)
		}
	}()
	held := make([]string, len(inst.GPUs))
	for i, g := range inst.GPUs {
		held[i] = g.UUID
	}
	details["instance_gpus"] = held
	fmt.Fprintf(out, "rental %s started, holding %v\n", inst.ContainerID, held)
	if !slices.Equal(held, []string{uuid}) {
		return "", fmt.Errorf("the rental holds %v, want exactly [%s]", held, uuid)
	}

	logs, err := waitForProbe(ctx, rt)
	fmt.Fprintf(out, "-- the probe's output:\n%s", logs)
	details["probe_output"] = logs
	return logs, err
}

// checkReservations are the agent's defaults (RENTAL_PIDS_LIMIT 16384,
// SHM_MEMORY_FRACTION 0.5, NUMA_ALIGN true) but that nothing of the host is
// kept back and no disk reserve refuses the start: gpu-check runs its one
// rental alone, on hosts and sandboxes of any size.
func checkReservations(alloc *gpu.Allocator, work string) agent.Reservations {
	return agent.Reservations{
		GPUs:      alloc,
		Shares:    agent.ShareOptions{Pids: 16384, ShmFraction: 0.5},
		DiskPath:  work,
		NUMAAlign: true,
	}
}

// waitForProbe waits for the probe's END line and returns its output.
func waitForProbe(ctx context.Context, rt runtime.Runtime) (string, error) {
	for {
		b, _, err := rt.Logs(ctx, instanceID, 1000)
		if err == nil && probeDone(string(b)) {
			return string(b), nil
		}
		if inst, gerr := rt.Get(ctx, instanceID); gerr == nil && inst.Status == runtime.StatusExited {
			b, _, _ = rt.Logs(ctx, instanceID, 1000)
			if probeDone(string(b)) {
				return string(b), nil
			}
			code := "?"
			if inst.ExitCode != nil {
				code = strconv.Itoa(*inst.ExitCode)
			}
			return string(b), fmt.Errorf("the probe exited (code %s) before it finished", code)
		}
		select {
		case <-ctx.Done():
			return string(b), fmt.Errorf("the probe did not finish: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func probeDone(logs string) bool {
	return strings.HasPrefix(logs, "END\n") || strings.Contains(logs, "\nEND\n")
}

// judgeProbe checks that the container saw exactly the target GPU: one
// /dev/nvidiaN, the target's minor, and nvidia-smi listing exactly one GPU
// with the target's UUID.
func (c *check) judgeProbe(logs string, details map[string]any) error {
	var nodes, smi []string
	smiPath, smiExit := "", ""
	for _, line := range strings.Split(logs, "\n") {
		switch k, v, _ := strings.Cut(line, " "); k {
		case "DEV":
			if _, ok := gpuNodeMinor(v); ok {
				nodes = append(nodes, v)
			}
		case "SMI":
			smi = append(smi, v)
		case "SMI-PATH":
			smiPath = v
		case "SMI-EXIT":
			smiExit = v
		}
	}
	want := fmt.Sprintf("nvidia%d", c.target.MinorNumber)
	details["gpu_device_nodes"] = nodes
	if !slices.Equal(nodes, []string{want}) {
		return fmt.Errorf("the container sees GPU device nodes %v, want exactly [%s]", nodes, want)
	}
	if smiPath == "" {
		if c.cfg.mock {
			details["nvidia_smi"] = "not checked: the fake driver root has no nvidia-smi"
			return nil
		}
		return errors.New("no nvidia-smi in the container: the CDI spec did not mount the driver's nvidia-smi")
	}
	var listed []string
	for _, l := range smi {
		if strings.HasPrefix(l, "GPU ") {
			listed = append(listed, l)
		}
	}
	details["nvidia_smi"] = map[string]any{"path": smiPath, "exit": smiExit, "gpus": listed}
	switch {
	case smiExit != "0":
		return fmt.Errorf("nvidia-smi -L at %s exited %s: %s", smiPath, smiExit, strings.Join(smi, " | "))
	case len(listed) != 1 || !strings.Contains(listed[0], "UUID: "+c.target.UUID+")"):
		return fmt.Errorf("nvidia-smi -L lists %v, want exactly the GPU %s", listed, c.target.UUID)
	}
	return nil
}

// refused reports whether err looks like the host denying what a container
// needs rather than the agent getting something wrong.
func refused(err error) bool {
	s := strings.ToLower(err.Error())
	for _, w := range []string{"operation not permitted", "permission denied", "not supported", "no such file or directory: unknown", "cgroup", "namespace", "mount", "pivot_root", "seccomp"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// sandboxHint names the kernel, which tells gVisor (it reports 4.4.0) from
// a real one.
func sandboxHint() string {
	b, err := os.ReadFile("/proc/version")
	if err != nil {
		return "kernel unknown"
	}
	return strings.TrimSpace(string(b))
}
