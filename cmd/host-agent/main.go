// Command host-agent runs on a GPU provider's machine and rents its GPUs out
// as isolated containers on the central scheduler's request. main only
// wires: it reads the configuration, builds every dependency once, hands them
// to their constructors and handles signals. Stopping the agent never stops a
// tenant's container.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/docker"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/selftest"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// version and commit are set at build time with
// -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

// eventBuffer is how many events a resuming /ws client can catch up on.
const eventBuffer = 4096

func main() {
	os.Exit(command(os.Args[1:], os.Stdout, os.Stderr, run))
}

func run() int {
	cfg, err := loadConfig(os.LookupEnv, ".env")
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: configuration: %v\n", err)
		return 2
	}
	if err := network.CheckSubnet(cfg.Network.RentalSubnet, networkConfig(cfg).Bridge, dockerNetwork(cfg).Bridge); err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: configuration: %v\n", &configError{"RENTAL_SUBNET", err.Error()})
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	logger = logger.With("agent_id", cfg.AgentID)
	slog.SetDefault(logger)
	release, err := claimPorts(cfg, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "host-agent: configuration: %v\n", err)
		return 2
	}
	defer release()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, logger); err != nil {
		logger.Error("agent stopped", "error", err)
		return 1
	}
	logger.Info("agent stopped; rentals keep running")
	return 0
}

func serve(ctx context.Context, cfg config, logger *slog.Logger) error {
	hub := events.NewHub(eventBuffer, time.Now)

	lib, mock, logger, err := openNVML(cfg, logger)
	if err != nil {
		return err
	}
	inv, err := gpu.Open(lib, logger)
	if err != nil {
		// Not fatal: a restart would fail the same way, and a restart loop
		// would stop the CPU rentals too. The self-test names it as well.
		logger.Error("NVML does not work: serving CPU rentals only, GPU rentals are refused",
			"error", err, "fix", selftest.NoNVMLFix)
		lib = nil
		if inv, err = gpu.Open(nil, logger); err != nil {
			return fmt.Errorf("GPU inventory: %w", err)
		}
	}
	defer inv.Close()
	// Benched GPUs stay benched across restarts; read before anything is
	// allocated.
	if err := inv.RememberHealth(filepath.Join(cfg.StateDir, gpu.HealthFileName)); err != nil {
		return fmt.Errorf("GPU health: %w", err)
	}
	logger.Info("GPU inventory", "gpus", inv.Len(), "driver", inv.DriverVersion(), "cuda", inv.CUDADriverVersion())
	if n := selftest.NVIDIAPCIDevices("/sys"); inv.Len() == 0 && n > 0 {
		// Not fatal: restarting would not bring NVML, and CPU rentals work.
		logger.Warn("NVIDIA GPUs on the PCI bus but NVML is not visible to the agent; serving CPU rentals only, GPU rentals are refused",
			"pci_gpus", n, "missing", "libnvidia-ml.so.1 and /dev/nvidia*", "fix", selftest.NoNVMLFix)
	}
	enableMIGRentals(cfg, inv, logger)
	alloc := gpu.NewAllocator(inv)

	// The injector compares every injection with the inventory (minors,
	// driver) and regenerates a stale spec through NVML.
	cdiCfg := cdi.Config{SpecDirs: cfg.CDISpecDirs, Logger: logger, Inventory: inv, NVML: lib}
	if mock != nil {
		if cdiCfg, err = useGPUMock(cfg.StateDir, mock, inv, cdiCfg); err != nil {
			return err
		}
		lib = nil // the mock's spec is written: nothing to generate
	}
	injector, err := cdi.New(cdiCfg)
	if err != nil {
		return fmt.Errorf("CDI: %w", err)
	}
	if inv.Len() > 0 {
		// Without a fitting spec every GPU rental is refused with its own
		// error, so the agent carries on and serves CPU rentals.
		if generated, err := injector.EnsureNVIDIASpec(ctx, inv, lib, cdi.GenerateOptions{}); err != nil {
			logger.Error("no usable NVIDIA CDI spec; GPU rentals will be refused", "error", err)
		} else if generated {
			logger.Info("generated the NVIDIA CDI spec", "dir", "/var/run/cdi")
		}
	}

	// Exits carry the rental's usage once the meter exists.
	usagePub := &usageEvents{next: hub}
	pulls := server.NewPullTimer(usagePub)
	choice, err := chooseRuntime(ctx, cfg)
	if err != nil {
		return err
	}
	rtName := choice.Name
	if choice.Answers {
		logger.Info("container runtime chosen", "runtime", rtName, "why", choice.Why)
	} else {
		logger.Error("container runtime not available", "runtime", rtName, "why", choice.Why)
	}
	cfg.Runtime = rtName
	if err := checkSnapshotter(rtName, cfg.Pull.Snapshotter); err != nil {
		return err
	}
	if err := writeAgentRecord(cfg); err != nil {
		logger.Warn("host-agent selftest will not find this agent's configuration", "error", err)
	}
	claimSubnet(cfg, rtName, logger)
	// The rentals' CNI network is containerd's; on Docker, rentals get the
	// agent's Docker network (dockerNetwork), with ports published from
	// the same allocator.
	var rentalNet *network.Network
	var dockerNet *docker.NetworkOptions
	ports := hostport.NewAllocator(cfg.Network.HostPortRange, nil)
	if rtName != runtimeDocker {
		if rentalNet, err = newNetwork(ctx, cfg, logger); err != nil {
			return err
		}
	} else if err := docker.IsolationAvailable(); err != nil {
		// Without Docker's iptables there is no NAT for published ports
		// and nowhere for the isolation rules: rentals get no network and
		// a start asking for ports is refused.
		logger.Error("rentals on Docker get no network", "error", err)
	} else {
		dockerNet = dockerNetwork(cfg)
	}
	backend, err := newRuntime(cfg, rtName, pulls, injector, rentalNet, dockerNet, logger)
	if err != nil {
		return err
	}
	meter, err := newMeter(cfg, backend, logger)
	if err != nil {
		return err
	}
	usagePub.meter.Store(meter)
	logSnapshotter(ctx, backend, cfg.Pull.Snapshotter, logger)
	if choice.Answers && choice.Held == "" {
		// Before any rental can start on it.
		if err := rememberRuntime(cfg, rtName); err != nil {
			return err
		}
	}
	rules := networkRules(ctx, rentalNet, backend, logger)
	shares, err := newShares(cfg.Share, inv.Len())
	if err != nil {
		return err
	}
	numaKinds, err := numaAlignment(cfg, "/sys", inv, logger)
	if err != nil {
		return err
	}
	disks := newDiskLimits(ctx, cfg, rtName, backend, inv.Len(), logger)
	volumes, volumeKind, err := openVolumes(ctx, cfg, disks.limits, logger)
	if err != nil {
		return err
	}
	rt := runtime.NewLifecycle(holdRuntime(backend, choice.Held), runtime.LifecycleOptions{
		// GPUs first: a rental's share follows the GPUs it got.
		Kinds: append(append(reservationKinds(gpualloc.New(alloc), shares, ports, rentalNet != nil || dockerNet != nil),
			disks.limits, volumeKind), append(numaKinds, bandwidthDefaults(cfg))...),
		Events: usagePub,
		Logger: logger,
	})
	defer rt.Close()
	// Bounded: with containerd down, serving (and answering readyz) comes
	// first; the restore is retried before the first GPU rental.
	restoreCtx, cancelRestore := context.WithTimeout(ctx, 3*time.Second)
	err = rt.Restore(restoreCtx)
	cancelRestore()
	if err != nil {
		// Retried before the first GPU rental; CPU rentals go ahead.
		logger.Warn("GPU holders not read back yet", "error", err)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	// Background loops stop before the runtime and the inventory close.
	healthCtx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
	wg.Go(func() { injector.WatchDriver(healthCtx, cdi.DefaultDriverCheckInterval) })
	if !choice.Answers && choice.Held == "" {
		wg.Go(func() { rememberWhenAnswering(healthCtx, cfg, rtName, backend, logger) })
	}
	if rules != nil {
		wg.Go(func() { rules.Run(healthCtx, cfg.Network.RecheckInterval) })
	}
	wg.Go(func() { disks.watch(healthCtx, cfg, rt, backend, logger) })
	wg.Go(func() { meterRentals(healthCtx, rt, meter) })
	wg.Go(func() {
		if err := inv.WatchHealth(healthCtx, hub); err != nil {
			logger.Error("GPU health watch stopped", "error", err)
		}
	})

	ln, err := listen(cfg)
	if err != nil {
		return err
	}
	defer ln.Close()

	if cfg.APIServerURL != "" && cfg.APIServerTokenShared {
		logger.Warn("API_SERVER_TOKEN is unset: the agent presents its own API token to the central server; " +
			"set API_SERVER_TOKEN so that the server never holds the token guarding this agent")
	}
	heartbeats := server.NewHeartbeatMetrics()
	// Built even without API_SERVER_URL: it also serves GET /host, and in
	// that case Run says once that nothing is reported.
	rep, err := reporter.New(reporter.Options{
		ServerURL:   cfg.APIServerURL,
		AgentID:     cfg.AgentID,
		Token:       cfg.APIServerToken,
		Version:     version,
		PublicURL:   publicURL(cfg, ln.Addr()),
		Interval:    cfg.HeartbeatInterval,
		OrphanGrace: cfg.OrphanGrace,
		Runtime:     rt,
		GPUs:        inv,
		CDI:         injector.Available,
		Network:     networkInfo(cfg, rentalNet, ports),
		DataDir:     cfg.ContainerdRoot,
		Events:      hub,
		Logger:      logger,
		Commit:      commit,
		Drain:       backend,
		Sharing:     shares,
		DiskLimit:   disks.info,
		Volumes:     volumes,
		Usage:       meter,

		ObserveHeartbeat: heartbeats.Observe,
	})
	if err != nil {
		return fmt.Errorf("reporter: %w", err)
	}
	wg.Go(func() { _ = rep.Run(healthCtx) })
	wg.Go(func() { logSelftest(healthCtx, cfg, logger) })

	srv, err := server.New(server.Options{
		Runtime:     rt,
		RuntimeName: rtName,
		Hub:         hub,
		Token:       cfg.Token,
		AgentID:     cfg.AgentID,
		Logger:      logger,
		GPUs:        inv,
		Usage:       meter,
		Host:        rep,
		Drain:       backend,
		Pulls:       pulls,
		Network:     networkChecker(rentalNet, rules),
		Collectors:  append(agentCollectors(cfg, backend, heartbeats, rules), meter.Collector()),
		MockFaults:  mockFaults(mock),
		Volumes:     volumes,

		MetricsToken: cfg.MetricsToken,
		Version:      version,
		Commit:       commit,
	})
	if err != nil {
		return err
	}
	logger.Info("agent serving", "version", version, "commit", commit, "listen", ln.Addr().String(),
		"tls", cfg.TLSCertFile != "", "runtime", cfg.Runtime, "containerd", cfg.ContainerdAddress, "namespace", cfg.ContainerdNamespace)
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// reservationKinds lists what a start reserves, GPUs first: a rental's
// share of the host follows the GPUs it got. Host ports only where the
// agent publishes them.
func reservationKinds(gpus runtime.GPUAllocator, shares runtime.ReservationKind, ports *hostport.Allocator, publish bool) []runtime.ReservationKind {
	kinds := []runtime.ReservationKind{runtime.GPUReservations{Alloc: gpus}, shares}
	if publish {
		kinds = append(kinds, runtime.PortReservations{Alloc: ports})
	}
	return kinds
}

// agentCollectors are the metrics of GET /metrics that the server does not
// keep itself: the back end's, the heartbeats' and the runtime's disk.
func agentCollectors(cfg config, backend any, heartbeats *server.HeartbeatMetrics, rules *network.Rules) []prometheus.Collector {
	return append(append(backendCollectors(backend), heartbeats,
		server.DiskCollector(cfg.ContainerdRoot, cfg.DiskReserveGB<<30, disk.Free)), ruleCollectors(rules)...)
}

// backendCollectors are the runtime back end's metrics, where it has any
// (containerd's call durations).
func backendCollectors(backend any) []prometheus.Collector {
	if c, ok := backend.(interface{ Collector() prometheus.Collector }); ok {
		return []prometheus.Collector{c.Collector()}
	}
	return nil
}

// listen opens the API's listener, with TLS when a certificate is
// configured. The certificate is reread for each new connection when its
// file changes, so that it can be renewed without a restart.
func listen(cfg config) (net.Listener, error) {
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.ListenAddr, err)
	}
	if cfg.TLSCertFile == "" {
		return ln, nil
	}
	certs := &certReloader{certFile: cfg.TLSCertFile, keyFile: cfg.TLSKeyFile}
	if _, err := certs.get(nil); err != nil {
		ln.Close()
		return nil, err
	}
	return tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}), nil
}

// certReloader serves the certificate in its files, loading them again
// when the certificate file's modification time changes.
type certReloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
	mtime             time.Time
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.certFile)
	if err == nil && c.cert != nil && fi.ModTime().Equal(c.mtime) {
		return c.cert, nil
	}
	cert, lerr := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if lerr != nil {
		if c.cert != nil {
			// A renewal caught half-written keeps the old certificate.
			return c.cert, nil
		}
		return nil, fmt.Errorf("load TLS certificate: %w", lerr)
	}
	c.cert = &cert
	if err == nil {
		c.mtime = fi.ModTime()
	}
	return c.cert, nil
}

// publicURL is where the central server should call this agent:
// AGENT_PUBLIC_URL, or else the address it listens on, with the host's name
// when it listens on every interface.
func publicURL(cfg config, addr net.Addr) string {
	if cfg.PublicURL != "" {
		return cfg.PublicURL
	}
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if name, err := os.Hostname(); err == nil {
			host = name
		}
	}
	scheme := "http"
	if cfg.TLSCertFile != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// versionLine is what `host-agent version` prints.
func versionLine() string {
	c := commit
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("host-agent %s (commit %s)", version, c)
}
