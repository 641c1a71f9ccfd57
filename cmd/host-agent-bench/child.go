package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	mockserver "github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/runtime"
	ctrd "github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// The agent under measurement runs as a child process of the bench, so that
// its memory and goroutines are its own. The bench starts its own binary
// with childEnv set; the child's configuration comes in these variables.
const (
	childEnv      = "HOST_AGENT_BENCH_CHILD"
	envContainerd = "HOST_AGENT_BENCH_CONTAINERD"
	envWorkDir    = "HOST_AGENT_BENCH_WORKDIR"
	envGPUs       = "HOST_AGENT_BENCH_GPUS"
	envCentral    = "HOST_AGENT_BENCH_CENTRAL"
	envProfileDir = "HOST_AGENT_BENCH_PROFILE_DIR"
	// envNamespace is the agent's containerd namespace (default rentals);
	// PULL_MAX_CONCURRENT_LAYERS and PULL_CHUNK_MB are read as the agent
	// reads them.
	envNamespace   = "HOST_AGENT_BENCH_NAMESPACE"
	fakeNodeMajor  = 240 // a local-use character major: its nodes open nothing
	heartbeatEvery = time.Second
	// benchCPURentalMemoryMB is a CPU rental's memory limit: small, since
	// the bench runs hundreds of `sleep` rentals at once.
	benchCPURentalMemoryMB = 64
)

// isChild says whether this process is the bench's agent child.
func isChild() bool { return os.Getenv(childEnv) == "1" }

// childMain runs the agent as cmd/host-agent builds it for containerd
// (internal/agent: API server, lifecycle with every reservation kind,
// containerd back end with CDI injection, reporter, background loops),
// over go-nvml's mock of a DGX A100 (benchNVML) with
// HOST_AGENT_BENCH_GPUS GPUs and a CDI spec for them whose device nodes
// open nothing. It writes its listen address on stdout and serves until
// SIGTERM. SIGUSR1 starts a CPU profile, SIGUSR2 stops it.
func childMain() int {
	if err := child(); err != nil {
		fmt.Fprintln(os.Stderr, "bench agent:", err)
		return 1
	}
	return 0
}

func child() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	work := os.Getenv(envWorkDir)
	n, err := strconv.Atoi(os.Getenv(envGPUs))
	if err != nil || n < 1 {
		return fmt.Errorf("%s=%q: want a positive count", envGPUs, os.Getenv(envGPUs))
	}
	// Warnings and errors reach the bench's stderr: a measurement that
	// hides the agent's failures would be worthless.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nvmlMock, _ := benchNVML(n)
	inv, err := gpu.Open(nvmlMock, logger)
	if err != nil {
		return err
	}
	defer inv.Close()
	specDir := filepath.Join(work, "cdi")
	if err := writeFakeSpec(inv, filepath.Join(work, "dev"), specDir); err != nil {
		return err
	}
	injector, err := cdi.New(cdi.Config{SpecDirs: []string{specDir}, Logger: logger, DeviceMajors: []int64{fakeNodeMajor}, Inventory: inv})
	if err != nil {
		return err
	}
	ev := agent.NewEvents(agent.DefaultEventBuffer)
	ns := cmp.Or(os.Getenv(envNamespace), "rentals")
	layers, chunk, err := pullSettings()
	if err != nil {
		return err
	}
	opts := ctrd.Options{Address: os.Getenv(envContainerd), Namespace: ns, AgentID: "bench",
		LogDir: filepath.Join(work, "logs"), Events: ev.Pulls, Logger: logger, Devices: injector,
		PullLayers: layers, PullChunkBytes: chunk}
	if subnet := os.Getenv(envNetSubnet); subnet != "" {
		n, closeNet, err := childNetwork(ctx, work, subnet, logger)
		if err != nil {
			return err
		}
		defer closeNet()
		opts.Network = n
	}
	be, err := ctrd.New(opts)
	if err != nil {
		return err
	}
	// The daemon's usage meter, read as often and carried by exits.
	meter, err := agent.NewMeter(filepath.Join(work, "usage"), be, logger)
	if err != nil {
		_ = be.Close()
		return err
	}
	// Built by the daemon's builder, with its reservation kinds (GPUs,
	// share, disk limits, NUMA, bandwidth), its reporter, API server and
	// loops (the disk watch and the usage meter among them).
	a, err := agent.New(ctx, agent.Options{
		Logger:         logger,
		Events:         ev,
		Inventory:      inv,
		Injector:       injector,
		Backend:        be,
		Reservations:   benchReservations(work, be, inv.Len(), opts.Network != nil),
		Usage:          meter,
		RestoreTimeout: 3 * time.Second,
		Reporter: &reporter.Options{ServerURL: os.Getenv(envCentral), AgentID: "bench", Token: benchToken,
			Interval: heartbeatEvery, DataDir: work},
		Server: &server.Options{RuntimeName: "containerd", Token: benchToken, AgentID: "bench"},
	})
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go profileOnSignal(os.Getenv(envProfileDir))
	fmt.Println(ln.Addr().String())
	return a.Run(ctx, ln)
}

// benchNVML is go-nvml's mock of a DGX A100 with n GPUs, given the NVML
// event sets the daemon's mock machines have, so that the agent's GPU
// health watch runs as on a real host instead of stopping at once; faults
// are injected through the events it returns.
func benchNVML(n int) (*mockserver.Server, *gpumock.Events) {
	s := dgxa100.NewWithGPUs(gpus.Multiple(n, gpus.A100_SXM4_40GB)...)
	return s, gpumock.WithEvents(s)
}

// benchReservations are the daemon's defaults (HOST_RESERVED_MEMORY_MB
// 2048, HOST_RESERVED_CPUS 1, RENTAL_PIDS_LIMIT 16384, NUMA_ALIGN true)
// but for the rental sizes the bench's loads need: hundreds of CPU
// rentals at once, which one GPU's share each would not fit (an operator
// hosting many small rentals sets CPU_RENTAL_MEMORY_MB the same way), and
// a disk reserve of 1 GiB on the bench's directory rather than 20 and a
// default disk limit of 64 MiB (RENTAL_DISK_GB in bytes), since the
// bench's images are small and its rentals write next to nothing. The
// limits are watched every DISK_WATCH_INTERVAL's default. No volume store:
// the bench's rentals name no volumes. Host ports, from the daemon's
// default range, where the rentals have a network (the networked phase),
// as the daemon publishes them.
func benchReservations(work string, be agent.Backend, gpus int, networked bool) agent.Reservations {
	limits := &disk.Limits{Path: work, ReserveBytes: 1 << 30, Default: benchDiskLimitBytes, GPUs: gpus}
	if m, ok := be.(runtime.DiskMeter); ok {
		limits.Used = m.DiskUsed
	}
	return agent.Reservations{
		Shares: agent.ShareOptions{ReservedMemoryMB: 2048, ReservedCPUs: 1, Pids: 16384, ShmFraction: 0.5,
			CPURentalMemoryMB: benchCPURentalMemoryMB, CPURentalCPUs: 1},
		Ports:             hostport.NewAllocator(hostport.DefaultRange, nil),
		PublishPorts:      networked,
		DiskPath:          work,
		DiskReserveBytes:  1 << 30,
		DiskLimits:        limits,
		DiskWatchInterval: disk.DefaultWatchInterval,
		NUMAAlign:         true,
	}
}

// benchDiskLimitBytes is the disk limit of each of the bench's rentals.
const benchDiskLimitBytes = 64 << 20

// pullSettings reads PULL_MAX_CONCURRENT_LAYERS and PULL_CHUNK_MB (unset:
// the back end's defaults).
func pullSettings() (layers int, chunk int64, err error) {
	if v := os.Getenv("PULL_MAX_CONCURRENT_LAYERS"); v != "" {
		if layers, err = strconv.Atoi(v); err != nil || layers < 1 {
			return 0, 0, fmt.Errorf("PULL_MAX_CONCURRENT_LAYERS=%q: want a positive count", v)
		}
	}
	if v := os.Getenv("PULL_CHUNK_MB"); v != "" {
		mb, err := strconv.Atoi(v)
		if err != nil || mb < 0 {
			return 0, 0, fmt.Errorf("PULL_CHUNK_MB=%q: want a whole number of MiB", v)
		}
		chunk = int64(mb) << 20
	}
	return layers, chunk, nil
}

// profileOnSignal writes a CPU profile to dir/cpu-N.pprof from each SIGUSR1
// to the next SIGUSR2.
func profileOnSignal(dir string) {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	var f *os.File
	for n := 1; ; {
		switch <-sig {
		case syscall.SIGUSR1:
			if f != nil || dir == "" {
				continue
			}
			var err error
			if f, err = os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", n))); err != nil {
				continue
			}
			_ = pprof.StartCPUProfile(f)
		case syscall.SIGUSR2:
			if f == nil {
				continue
			}
			pprof.StopCPUProfile()
			f.Close()
			f = nil
			n++
		}
	}
}

// writeFakeSpec writes a CDI spec naming each GPU of inv by UUID, as
// nvidia-ctk does, mapping a device node of fakeNodeMajor (minor: the
// GPU's) to /dev/nvidiaN, with an env entry and a read-only library mount
// common to all.
func writeFakeSpec(inv *gpu.Inventory, nodes, specDir string) error {
	for _, d := range []string{nodes, specDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	lib := filepath.Join(nodes, "libnvidia-fake.so.1")
	if err := os.WriteFile(lib, []byte("not a library"), 0o644); err != nil {
		return err
	}
	var devices []map[string]any
	for _, g := range inv.GPUs() {
		node := filepath.Join(nodes, fmt.Sprintf("nvidia%d", g.MinorNumber))
		if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(fakeNodeMajor, uint32(g.MinorNumber)))); err != nil && !os.IsExist(err) {
			return fmt.Errorf("mknod %s: %w", node, err)
		}
		devices = append(devices, map[string]any{
			"name": g.UUID,
			"containerEdits": map[string]any{
				"deviceNodes": []map[string]any{{"path": fmt.Sprintf("/dev/nvidia%d", g.MinorNumber), "hostPath": node}},
			},
		})
	}
	spec := map[string]any{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": devices,
		"containerEdits": map[string]any{
			"env":    []string{"FAKE_NVIDIA_DRIVER=550.54.15"},
			"mounts": []map[string]any{{"hostPath": lib, "containerPath": "/usr/lib/libnvidia-fake.so.1", "options": []string{"ro", "nosuid", "nodev", "bind"}}},
		}}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(specDir, "nvidia.json"), b, 0o644)
}
