// Command gpu-check proves the agent's GPU path on a machine with an NVIDIA
// GPU, in six bounded stages, each printing its result before the next
// starts, and ends with a one-line summary:
//
//  1. nvml: the agent's inventory (driver, CUDA, every GPU's UUID, memory,
//     PCIe, MIG, ECC, power limit, temperature).
//  2. cdi: a spec generated with nvcdi for the driver root, validated by
//     the CDI library, and one GPU injected through the agent's hook policy
//     and verification.
//  3. health: the agent's Xid/ECC watcher subscribes and runs for a while.
//  4. allocation: the agent's allocator reserves a GPU and refuses a second
//     request for it (409 at the API).
//  5. container: a private containerd and runc from the bundle, and a rental
//     holding that GPU through the agent's start path; inside, exactly that
//     GPU's device node, and nvidia-smi -L listing exactly that GPU.
//  6. mig: on a GPU in MIG mode with MIG devices, the same for one MIG
//     device: a spec with its entry, its parent's node and its own
//     nvidia-caps nodes only, in the spec and in a rental, and nvidia-smi
//     -L listing exactly it; skipped, saying why, on a GPU without MIG.
//
// The driver may live outside / (NVIDIA_DRIVER_ROOT, or /usr/local/nvidia
// where sandboxed machines put it): NVML and nvcdi are both pointed there.
// --mock runs the same stages on go-nvml's dgxh100 mock and a fake driver
// root, for machines without a GPU. deploy/gpu-check.sh runs it from the
// bundle deploy/build-gpu-check.sh makes. It exits 0 when no stage failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/log"

	"github.com/host-agent/host-agent/cdi"
)

// runTimeout bounds the whole check; the stages' own bounds add up to less.
const runTimeout = 400 * time.Second

// config is what the flags and the host decide.
type config struct {
	bundle        string
	work          string
	driverRoot    string
	devRoot       string
	nvmlPath      string
	hookPath      string
	ldconfigPath  string
	mock          bool
	mockContainer bool
	logger        *slog.Logger
}

// HostInfo describes the machine the check ran on.
type HostInfo struct {
	Hostname string `json:"hostname"`
	Kernel   string `json:"kernel"`
	EUID     int    `json:"euid"`
}

func main() {
	if filepath.Base(os.Args[0]) == "nvidia-smi" {
		os.Exit(fakeSMI(os.Args[1:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gpu-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bundle := fs.String("bundle", "", "directory of the unpacked bundle (default: this program's directory)")
	work := fs.String("work", "", "scratch directory, removed at the end (default: a new temporary one)")
	root := fs.String("driver-root", "", "where the driver's files are (default: $NVIDIA_DRIVER_ROOT, else /usr/local/nvidia if it holds NVML, else /)")
	jsonPath := fs.String("json", "", "also write the report as JSON to this file")
	mockFlag := fs.Bool("mock", false, "dry run: go-nvml's dgxh100 mock and a fake driver root instead of the GPU")
	container := fs.Bool("container", false, "with --mock: run the container stage too, on the fake device nodes")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *container && !*mockFlag {
		fmt.Fprintln(stderr, "--container goes with --mock; on a GPU the container stage always runs")
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	// The containerd client logs each attempt to reach a daemon at info.
	_ = log.SetLevel("warn")
	cfg := config{mock: *mockFlag, mockContainer: *container,
		logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))}

	start := time.Now()
	rep := &Report{Mock: cfg.mock, Started: start.UTC(), Host: hostInfo()}
	finish := func(code int) int {
		rep.Seconds = time.Since(start).Seconds()
		if *jsonPath != "" {
			if err := writeJSON(*jsonPath, rep); err != nil {
				fmt.Fprintln(stderr, "gpu-check: write report:", err)
				if code == 0 {
					code = 1
				}
			}
		}
		return code
	}

	if err := cfg.setup(*bundle, *work, *root); err != nil {
		rep.Summary = "gpu-check FAIL: setup: " + err.Error()
		fmt.Fprintln(stdout, rep.Summary)
		return finish(1)
	}
	if *work == "" {
		defer os.RemoveAll(cfg.work)
	}
	lib, err := cfg.nvml()
	rep.DriverRoot, rep.DevRoot, rep.NVMLPath = cfg.driverRoot, cfg.devRoot, cfg.nvmlPath
	c := &check{cfg: cfg, lib: lib, nvmlErr: err}
	fmt.Fprintf(stdout, "gpu-check on %s (%s), driver root %s, dev root %s, NVML %s%s\n",
		rep.Host.Hostname, rep.Host.Kernel, cfg.driverRoot, cfg.devRoot, cfg.nvmlPath, map[bool]string{true: " [MOCK: dgxh100]"}[cfg.mock])

	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	stages := []stage{
		{"nvml", 45 * time.Second, c.stageNVML},
		{"cdi", 60 * time.Second, c.stageCDI},
		{"health", healthWindow + 15*time.Second, c.stageHealth},
		{"allocation", 10 * time.Second, c.stageAllocation},
		{"container", 140 * time.Second, c.stageContainer},
		{"mig", 100 * time.Second, c.stageMIG},
	}
	for i, s := range stages {
		rep.Stages = append(rep.Stages, runStage(ctx, stdout, i+1, s))
		if *jsonPath != "" {
			// Written after each stage, so a run cut short still leaves
			// what it learnt.
			_ = writeJSON(*jsonPath, rep)
		}
	}
	if c.inv != nil {
		_ = c.inv.Close()
	}
	var ok bool
	rep.Summary, ok = summary(rep.Stages)
	rep.Passed = ok
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, rep.Summary)
	if !ok {
		return finish(1)
	}
	return finish(0)
}

// setup finds the bundle, the work directory, the driver and the hook.
func (cfg *config) setup(bundle, work, root string) error {
	if bundle == "" {
		bundle = filepath.Dir(selfPath())
	}
	var err error
	if cfg.bundle, err = filepath.Abs(bundle); err != nil {
		return err
	}
	if work == "" {
		if work, err = os.MkdirTemp("", "gpu-check-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	if cfg.work, err = filepath.Abs(work); err != nil {
		return err
	}
	cfg.hookPath = filepath.Join(cfg.bundle, "nvidia-cdi-hook")
	if _, err := os.Stat(cfg.hookPath); err != nil {
		cfg.hookPath = ""
	}
	if !hostLdconfig() {
		if p := filepath.Join(cfg.bundle, "ldconfig"); fileExists(p) {
			cfg.ldconfigPath = p
		}
	}

	if cfg.mock {
		if root != "" {
			return fmt.Errorf("--mock makes its own driver root; drop --driver-root")
		}
		cfg.driverRoot = filepath.Join(cfg.work, "fake-driver")
		smi := ""
		if cfg.mockContainer {
			smi = selfPath()
		}
		if err := makeFakeDriverRoot(cfg.driverRoot, "550.54.15", 8, smi); err != nil {
			return err
		}
		if cfg.hookPath == "" {
			if cfg.mockContainer {
				return fmt.Errorf("--container needs the bundle's nvidia-cdi-hook in %s", cfg.bundle)
			}
			// Never run: the container stage is skipped.
			cfg.hookPath = filepath.Join(cfg.driverRoot, "usr/bin/nvidia-cdi-hook")
			if err := os.MkdirAll(filepath.Dir(cfg.hookPath), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(cfg.hookPath, []byte("#!/bin/false\n"), 0o755); err != nil {
				return err
			}
		}
		cfg.devRoot = cfg.driverRoot
		cfg.nvmlPath = "go-nvml dgxh100 mock"
		return nil
	}

	var why string
	cfg.driverRoot, why = driverRoot(root)
	cfg.devRoot = devRoot(cfg.driverRoot)
	cfg.logger.Info("driver root", "root", cfg.driverRoot, "why", why, "dev_root", cfg.devRoot)
	if cfg.hookPath == "" {
		for _, p := range cdi.DefaultHookPaths() {
			if fileExists(p) {
				cfg.hookPath = p
				break
			}
		}
		if cfg.hookPath == "" {
			cfg.hookPath = filepath.Join(cfg.bundle, "nvidia-cdi-hook") // reported missing by stage 2
		}
	}
	return nil
}

// nvml returns the library the stages use, and records where it came from.
func (cfg *config) nvml() (nvml.Interface, error) {
	if cfg.mock {
		return mockNVML(), nil
	}
	lib, path, err := openNVML(cfg.driverRoot)
	if err != nil {
		return nil, err
	}
	cfg.nvmlPath = path
	return lib, nil
}

// selfPath is this program's file. Run through the bundle's dynamic loader
// (ld.so gpu-check), /proc/self/exe is the loader, but argv[0] is the
// program.
func selfPath() string {
	if strings.Contains(os.Args[0], "/") {
		if p, err := filepath.Abs(os.Args[0]); err == nil {
			return p
		}
	}
	p, _ := os.Executable()
	return p
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func hostInfo() HostInfo {
	h := HostInfo{EUID: os.Geteuid()}
	h.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/version"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	return h
}
