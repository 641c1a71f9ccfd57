// Command host-agent runs on a GPU provider's machine and rents its GPUs out
// as isolated containers on the central scheduler's request. main only
// wires: it reads the configuration, builds every dependency once, hands them
// to their constructors and handles signals. Stopping the agent never stops a
// tenant's container.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/runtime/docker"
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

// restoreTimeout bounds the restore of the reservations at start: with
// containerd down, serving (and answering readyz) comes first.
const restoreTimeout = 3 * time.Second

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
	ev := agent.NewEvents(agent.DefaultEventBuffer)

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
	// The back end publishes through the pull timer, which times pulls
	// for GET /metrics on the way to the hub.
	backend, err := newRuntime(cfg, rtName, ev.Pulls, injector, rentalNet, dockerNet, logger)
	if err != nil {
		return err
	}
	meter, err := agent.NewMeter(filepath.Join(cfg.StateDir, "usage"), backend, logger)
	if err != nil {
		return err
	}
	logSnapshotter(ctx, backend, cfg.Pull.Snapshotter, logger)
	if choice.Answers && choice.Held == "" {
		// Before any rental can start on it.
		if err := rememberRuntime(cfg, rtName); err != nil {
			return err
		}
	}
	rules := networkRules(ctx, rentalNet, backend, logger)
	hostNet := rentalsNetwork(rentalNet, backend)
	disks := newDiskLimits(ctx, cfg, rtName, backend, inv.Len(), logger)
	volumes, err := openVolumes(ctx, cfg, disks.limits, logger)
	if err != nil {
		return err
	}

	// Listening first: the reporter tells the central server where the
	// agent answers.
	ln, err := listen(cfg)
	if err != nil {
		return err
	}
	defer ln.Close()
	if cfg.APIServerURL != "" && cfg.APIServerTokenShared {
		logger.Warn("API_SERVER_TOKEN is unset: the agent presents its own API token to the central server; " +
			"set API_SERVER_TOKEN so that the server never holds the token guarding this agent")
	}
	a, err := agent.New(ctx, agent.Options{
		Logger:      logger,
		Events:      ev,
		Inventory:   inv,
		Injector:    injector,
		Backend:     backend,
		HeldBecause: choice.Held,
		// GPUs first: a rental's share follows the GPUs it got.
		Reservations:   reservations(cfg, ports, rentalNet != nil || dockerNet != nil, disks.limits, volumes),
		Usage:          meter,
		RestoreTimeout: restoreTimeout,
		// Built even without API_SERVER_URL: it also serves GET /host, and
		// in that case Run says once that nothing is reported.
		Reporter: &reporter.Options{
			ServerURL:   cfg.APIServerURL,
			AgentID:     cfg.AgentID,
			Token:       cfg.APIServerToken,
			Version:     version,
			PublicURL:   publicURL(cfg, ln.Addr()),
			Interval:    cfg.HeartbeatInterval,
			OrphanGrace: cfg.OrphanGrace,
			Network:     networkInfo(cfg, hostNet, ports),
			DataDir:     cfg.ContainerdRoot,
			Commit:      commit,
			DiskLimit:   disks.info,
		},
		Server: &server.Options{
			RuntimeName: rtName,
			Token:       cfg.Token,
			AgentID:     cfg.AgentID,
			Network:     networkChecker(hostNet),
			Collectors:  ruleCollectors(rules),
			MockFaults:  mockFaults(mock),

			MetricsToken: cfg.MetricsToken,
			Version:      version,
			Commit:       commit,
		},
		Loops: agentLoops(cfg, choice, backend, rules, logger),
	})
	if err != nil {
		return shareConfigError(err)
	}
	defer a.Close()
	logger.Info("agent serving", "version", version, "commit", commit, "listen", ln.Addr().String(),
		"tls", cfg.TLSCertFile != "", "runtime", cfg.Runtime, "containerd", cfg.ContainerdAddress, "namespace", cfg.ContainerdNamespace)
	return a.Run(ctx, ln)
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
