package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/joho/godotenv"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/docker"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/selftest"
)

// Self-test settings beyond the agent's own configuration.
const (
	// selftestNamespace keeps the test rental apart from the real ones (and
	// out of heartbeats).
	selftestNamespace    = "host-agent-selftest"
	selftestScope        = "selftest"
	defaultSelftestImage = "docker.io/library/busybox:latest"
	defaultPortRange     = "40000-40999"
	defaultDiskReserveGB = 20
	selftestCheckTimeout = 3 * time.Minute
)

// selftestEnv is what the self-test reads besides the agent's config.
type selftestEnv struct {
	image     string
	imageSet  bool // SELFTEST_IMAGE given explicitly
	ports     [2]int
	minFreeGB uint64
	cniDirs   []string
	sysRoot   string
	// blocked and egress are SELFTEST_BLOCKED_PROBE and
	// SELFTEST_EGRESS_PROBE; blockedSet says the former replaces the
	// host's own addresses.
	blocked    []netip.AddrPort
	blockedSet bool
	egress     []netip.AddrPort
	nvmlLoader func() nvml.Interface
	// source says where the configuration came from, for the report.
	// agentOwned says the rentals' network and GPUs are an agent's that
	// runs (its configuration was found, or the self-test runs inside it):
	// the self-test then checks the agent's rules and never writes them.
	source     string
	agentOwned bool
	// deviceMajors, when set, are the CDI injector's device majors (the
	// tests' fake GPU nodes); empty: the NVIDIA driver's.
	deviceMajors []int64
}

func loadSelftestEnv(lookup func(string) (string, bool)) (selftestEnv, error) {
	get := func(k, def string) string {
		if v, ok := lookup(k); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
		return def
	}
	e := selftestEnv{image: get("SELFTEST_IMAGE", defaultSelftestImage), sysRoot: "/sys", nvmlLoader: func() nvml.Interface { return nvml.New() }}
	e.imageSet = e.image != defaultSelftestImage
	lo, hi, ok := strings.Cut(get("HOST_PORT_RANGE", defaultPortRange), "-")
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil {
		return e, &configError{"HOST_PORT_RANGE", "want FIRST-LAST"}
	}
	e.ports = [2]int{a, b}
	gb, err := strconv.ParseUint(get("DISK_RESERVE_GB", strconv.Itoa(defaultDiskReserveGB)), 10, 32)
	if err != nil {
		return e, &configError{"DISK_RESERVE_GB", "want a whole number of GiB"}
	}
	e.minFreeGB = gb
	e.cniDirs = filepath.SplitList(get("CNI_PLUGIN_DIRS", "/usr/lib/cni:/opt/cni/bin"))
	if v := get("SELFTEST_BLOCKED_PROBE", ""); v != "" {
		if e.blocked, err = parseProbes(v); err != nil {
			return e, &configError{"SELFTEST_BLOCKED_PROBE", err.Error()}
		}
		e.blockedSet = true
	}
	e.egress = selftest.DefaultEgressProbes
	if v := get("SELFTEST_EGRESS_PROBE", ""); v == "none" {
		e.egress = nil
	} else if v != "" {
		if e.egress, err = parseProbes(v); err != nil {
			return e, &configError{"SELFTEST_EGRESS_PROBE", err.Error()}
		}
	}
	return e, nil
}

// parseProbes reads comma-separated IPv4 address:port pairs.
func parseProbes(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.Split(s, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(f))
		if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
			return nil, fmt.Errorf("want comma-separated IPv4 address:port pairs such as 1.1.1.1:443, got %q", f)
		}
		out = append(out, ap)
	}
	return out, nil
}

// selftestConfig reads the agent's configuration for the self-test, which
// needs no identity or token of its own: a provider runs it before the host
// has either.
func selftestConfig(lookup func(string) (string, bool)) (config, error) {
	// A token file named in the configuration file counts as much as one
	// in the environment: the stand-in token must not clash with it.
	tokenFileInFile := envFileSets(lookup, ".env", "AGENT_TOKEN_FILE")
	withDefaults := func(k string) (string, bool) {
		if v, ok := lookup(k); ok {
			return v, ok
		}
		_, hasFile := lookup("AGENT_TOKEN_FILE")
		hasFile = hasFile || tokenFileInFile
		switch {
		case k == "AGENT_ID":
			return "selftest", true
		case k == "AGENT_TOKEN" && !hasFile:
			return "selftest-token-unused", true
		}
		return "", false
	}
	return loadConfig(withDefaults, ".env")
}

// defaultStateDir is STATE_DIR's default (loadConfig).
const defaultStateDir = "/var/lib/host-agent"

// selftestLookup is where `host-agent selftest` reads its settings: the
// running agent's configuration (agentConfigFile in STATE_DIR) first, the
// shell's environment only for what that does not hold. A shell rarely has
// the agent's environment: taking it for the agent's rewrote the agent's
// rules with the defaults for whatever the shell lacked. source says which
// was read, and which of the shell's settings were ignored.
func selftestLookup(shell func(string) (string, bool), dotenv string) (lookup func(string) (string, bool), source string, agentOwned bool, err error) {
	stateDir := defaultStateDir
	if v, ok := shell("STATE_DIR"); ok && strings.TrimSpace(v) != "" {
		stateDir = strings.TrimSpace(v)
	} else if file, err := godotenv.Read(dotenv); err == nil && strings.TrimSpace(file["STATE_DIR"]) != "" {
		stateDir = strings.TrimSpace(file["STATE_DIR"])
	}
	rec, path, ok, err := readAgentRecord(stateDir)
	if err != nil {
		return nil, "", false, &configError{"STATE_DIR", "read the running agent's configuration: " + err.Error()}
	}
	if !ok {
		return shell, fmt.Sprintf("the environment: no agent's configuration at %s (set STATE_DIR to the agent's)", path), false, nil
	}
	var ignored []string
	for k, v := range rec.Env {
		if sv, set := shell(k); set && strings.TrimSpace(sv) != v {
			ignored = append(ignored, k)
		}
	}
	sort.Strings(ignored)
	source = fmt.Sprintf("the agent's configuration %s, written %s by pid %d", path, rec.WrittenAt.Format(time.RFC3339), rec.PID)
	if len(ignored) > 0 {
		source += "; the environment's " + strings.Join(ignored, ", ") + " ignored"
	}
	return func(k string) (string, bool) {
		if v, ok := rec.Env[k]; ok {
			return v, true
		}
		return shell(k)
	}, source, true, nil
}

// selftestMain is `host-agent selftest [--json]`.
func selftestMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("selftest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: host-agent selftest [--json]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "host-agent: selftest takes no arguments, got %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	lookup, source, agentOwned, err := selftestLookup(os.LookupEnv, ".env")
	if err != nil {
		fmt.Fprintf(stderr, "host-agent: configuration: %v\n", err)
		return 2
	}
	cfg, err := selftestConfig(lookup)
	if err != nil {
		fmt.Fprintf(stderr, "host-agent: configuration: %v\n", err)
		return 2
	}
	env, err := loadSelftestEnv(lookup)
	if err != nil {
		fmt.Fprintf(stderr, "host-agent: configuration: %v\n", err)
		return 2
	}
	env.source, env.agentOwned = source, agentOwned
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	rep := runSelftest(context.Background(), cfg, env, logger, true)
	if *asJSON {
		_ = rep.WriteJSON(stdout)
	} else {
		_ = rep.WriteTable(stdout)
	}
	if !rep.Passed {
		return 1
	}
	return 0
}

// runSelftest builds what the checks need, as the agent does, and runs
// them.
func runSelftest(ctx context.Context, cfg config, env selftestEnv, logger *slog.Logger, rental bool) selftest.Report {
	lib := env.nvmlLoader()
	inv, nvmlErr := gpu.Open(lib, logger)
	if nvmlErr != nil {
		inv, _ = gpu.Open(nil, logger)
	}
	defer inv.Close()
	if !inv.Available() {
		lib = nil
	}
	injector, err := cdi.New(cdi.Config{SpecDirs: cfg.CDISpecDirs, Logger: logger, DeviceMajors: env.deviceMajors})
	var devices containerd.DeviceInjector
	if err == nil && inv.Len() > 0 {
		devices = injector
	}
	result := func(name string, r selftest.Result) selftest.Check {
		return selftest.Check{Name: name, Run: func(context.Context) selftest.Result { return r }}
	}
	// The runtime the agent would run on, without remembering it.
	choice, _ := chooseRuntime(ctx, cfg)
	rtName := choice.Name
	// The test rentals join the rentals' own network, as the agent builds
	// it, so that the network check tests what tenants get.
	backend, address, netNS, netErr, err := selftestBackend(ctx, cfg, rtName, devices, rental, env.agentOwned, logger)
	checks := []selftest.Check{result("configuration", selftest.Result{Status: selftest.OK, Detail: "read from " + env.source})}
	if err != nil {
		checks = append(checks, result("runtime", selftest.Result{Status: selftest.Fail, Detail: err.Error(), Fix: "check CONTAINERD_ADDRESS, DOCKER_HOST and STATE_DIR"}))
	} else {
		defer backend.Close()
		checks = append(checks, selftest.RuntimeCheck(backend, rtName, address))
		if sc, ok := backend.(selftest.SnapshotterChecker); ok || cfg.Pull.Snapshotter != "" {
			checks = append(checks, selftest.SnapshotterCheck(sc, cfg.Pull.Snapshotter))
		} else {
			checks = append(checks, result("snapshotter", selftest.Result{Status: selftest.Skip, Detail: "not used on Docker: images go to Docker's storage driver, pulled in full"}))
		}
	}
	cniCheck := selftest.CNICheck(env.cniDirs)
	if rtName == runtimeDocker {
		cniCheck = result(cniCheck.Name, selftest.Result{Status: selftest.Skip, Detail: "not used on Docker: rentals are on the agent's Docker network"})
	}
	checks = append(checks,
		selftest.RuncCheck(selftest.InContainer()),
		cniCheck,
		selftest.CDICheck(cfg.CDISpecDirs, inv),
		selftest.DriverCheck(inv, selftest.NVIDIAPCIDevices(env.sysRoot), nvmlErr),
		selftest.PCIeCheck(inv),
		selftest.HealthCheck(inv, lib),
		selftest.DiskCheck(cfg.ContainerdRoot, env.minFreeGB<<30),
		selftest.DiskLimitCheck(func(ctx context.Context) (disk.Enforcement, error) {
			_, e, err := diskEnforcement(ctx, cfg, rtName, backend)
			return e, err
		}),
		selftest.PortRangeCheck(env.ports[0], env.ports[1]),
	)
	switch {
	case !rental:
		const why = "not at agent start unless SELFTEST_IMAGE names an image (a pull from a public registry at every start is not wanted); run host-agent selftest"
		checks = append(checks,
			result("test-rental", selftest.Result{Status: selftest.Skip, Detail: why}),
			result("rental-network", selftest.Result{Status: selftest.Skip, Detail: why}))
	case backend != nil:
		// The test rentals reserve what a tenant's rental does (its
		// share, its disk limit, NUMA, the default bandwidth), from
		// allocators of their own; the volume store stays the agent's,
		// and the test rentals name no volumes.
		disks := newDiskLimits(ctx, cfg, rtName, backend, inv.Len(), logger)
		res := reservations(cfg, hostport.NewAllocator(cfg.Network.HostPortRange, nil), netErr == nil, disks.limits, nil)
		res.DiskWatchInterval = 0 // the agent's watch, not the self-test's
		rt, _, err := agent.NewLifecycle(backend, agent.LifecycleOptions{
			Inventory:    inv,
			Reservations: res,
			Logger:       logger,
		})
		if err != nil {
			checks = append(checks,
				result("test-rental", selftest.Result{Status: selftest.Fail, Detail: err.Error(), Fix: "the agent refuses to start with this configuration too: see HOST_RESERVED_MEMORY_MB, HOST_RESERVED_CPUS and NUMA_ALIGN"}),
				result("rental-network", selftest.Result{Status: selftest.Skip, Detail: "needs the test rental"}))
			break
		}
		// The allocator knows only the test rentals: the GPU comes from
		// the runtime's own record of what every rental holds.
		holders := selftest.ContainerdGPUHolders(cfg.ContainerdAddress)
		if rtName == runtimeDocker {
			holders = selftest.DockerGPUHolders(cfg.DockerHost)
		}
		var usable []string
		for _, g := range inv.GPUs() {
			if g.Healthy && g.MIGMode != gpu.MIGEnabled {
				usable = append(usable, g.UUID)
			}
		}
		choose := func(ctx context.Context) (string, string) {
			if inv.Len() > 0 && len(usable) == 0 {
				return "", "the GPU part was skipped: no GPU is healthy and without MIG"
			}
			return selftest.ChooseTestGPU(ctx, usable, holders)
		}
		checks = append(checks, selftest.RentalCheck(rt, env.image, choose))
		if errors.Is(netErr, errAgentsDockerNetwork) {
			checks = append(checks, result("rental-network", selftest.Result{Status: selftest.Skip, Detail: netErr.Error()}))
			break
		}
		if netErr != nil {
			fix := "see the detail: RENTAL_SUBNET must not overlap a route of the host, the agent needs iptables and (on containerd) the CNI plugins, and dockerd must manage iptables"
			if env.agentOwned {
				fix = "the agent compares and repairs its rules every NETWORK_RECHECK_INTERVAL (the self-test never writes a running agent's): run the self-test again in a few seconds; if they stay wrong, restart the agent, and find what flushes them (a firewall reload)"
			}
			checks = append(checks, result("rental-network", selftest.Result{Status: selftest.Fail, Detail: netErr.Error(), Fix: fix}))
			break
		}
		no := selftest.NetworkOptions{
			Runtime: rt,
			Image:   env.image,
			Gateway: cfg.Network.RentalSubnet.Addr().Next(),
			Blocked: env.blocked,
			Egress:  env.egress,
			NetNS:   netNS,
		}
		if !env.blockedSet {
			addrs, _ := net.InterfaceAddrs()
			no.HostAddrs = selftest.HostAddrs(addrs, cfg.Network.RentalSubnet)
		}
		checks = append(checks, selftest.NetworkCheck(no))
	}
	return selftest.Run(ctx, checks, selftestCheckTimeout)
}

// errAgentsDockerNetwork: on Docker, a test rental on the agent's network
// would have the Docker back end write the agent's chains.
var errAgentsDockerNetwork = errors.New("not run beside a running agent on Docker: a test rental on the agent's Docker network would rewrite the agent's rules; run host-agent selftest before the agent starts, or see GET /readyz")

// selftestBackend opens the self-test's back end on the chosen runtime,
// apart from the agent's rentals (containerd namespace host-agent-selftest;
// Docker scope selftest), on the rentals' network when rental is set. When
// agentOwned, that network is a running agent's: on containerd its rules
// are checked and never written, on Docker the test rentals get no
// network. It returns the runtime's address, how to find a test rental's
// network namespace (nil: its labels), and why the rentals' network is not
// there.
func selftestBackend(ctx context.Context, cfg config, rtName string, devices containerd.DeviceInjector, rental, agentOwned bool, logger *slog.Logger) (
	be interface {
		runtime.Runtime
		selftest.Pinger
	}, address string, netNS func(runtime.Instance) (string, error), netErr, err error,
) {
	if rtName == runtimeDocker {
		opts := docker.Options{
			Host:     cfg.DockerHost,
			AgentID:  cfg.AgentID,
			StateDir: filepath.Join(cfg.StateDir, "docker-"+selftestScope),
			Events:   discardEvents{},
			Logger:   logger,
			Scope:    selftestScope,
		}
		if p, ok := devices.(docker.DevicePlanner); ok {
			opts.Devices = p
		}
		switch {
		case rental && agentOwned:
			netErr = errAgentsDockerNetwork
		case rental:
			if netErr = docker.IsolationAvailable(); netErr == nil {
				opts.Network = dockerNetwork(cfg)
			} else {
				netErr = fmt.Errorf("rentals on Docker get no network: %w", netErr)
			}
		}
		d, err := docker.New(opts)
		if err != nil {
			return nil, cfg.DockerHost, nil, netErr, err
		}
		return d, cfg.DockerHost, dockerNetNS, netErr, nil
	}
	opts := containerd.Options{
		Address:   cfg.ContainerdAddress,
		Namespace: selftestNamespace,
		AgentID:   cfg.AgentID,
		LogDir:    filepath.Join(cfg.StateDir, "logs", selftestNamespace),
		Events:    discardEvents{},
		Logger:    logger,
		Devices:   devices,
		// The test rental's image goes where rentals' images go.
		Snapshotter: cfg.Pull.Snapshotter,
	}
	switch {
	case rental && agentOwned:
		// The agent's own network: its rules are checked, here and before
		// each test rental's setup, and never written.
		nc := networkConfig(cfg)
		nc.Logger, nc.ReadOnlyRules = logger, true
		var n *network.Network
		if n, netErr = network.New(nc); netErr == nil {
			if netErr = n.CheckRules(ctx); netErr == nil {
				opts.Network = selftestNetwork{n}
			}
		}
		if netErr != nil {
			netErr = fmt.Errorf("the running agent's network: %w", netErr)
		}
	case rental:
		if netErr = network.CheckSubnet(cfg.Network.RentalSubnet, networkConfig(cfg).Bridge, dockerNetwork(cfg).Bridge); netErr == nil {
			var n *network.Network
			if n, netErr = newNetwork(ctx, cfg, logger); netErr == nil {
				opts.Network = selftestNetwork{n}
			}
		}
	}
	c, err := containerd.New(opts)
	if err != nil {
		return nil, cfg.ContainerdAddress, nil, netErr, err
	}
	return c, cfg.ContainerdAddress, nil, netErr, nil
}

// dockerNetNS is a Docker rental's network namespace, through its process,
// when this process sees the host's processes (the agent on the host, not
// in a container of its own): the process must be in the container's
// cgroup, so that a process of the same number elsewhere is never taken
// for it.
func dockerNetNS(inst runtime.Instance) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", inst.Pid))
	if inst.Pid == 0 || err != nil || !strings.Contains(string(b), inst.ContainerID) {
		return "", fmt.Errorf("%w: run host-agent selftest on the host (the agent's container does not see the rentals' processes)", selftest.ErrNamespaceHidden)
	}
	return fmt.Sprintf("/proc/%d/ns/net", inst.Pid), nil
}

// selftestNetwork is the rentals' network for the self-test's back end,
// which sees only its own containerd namespace: its sweep would take every
// tenant's network for a leftover and tear it down, so it sweeps nothing.
type selftestNetwork struct{ *network.Network }

func (selftestNetwork) Sweep(context.Context, func(string) bool) (network.SweepResult, error) {
	return network.SweepResult{}, nil
}

type discardEvents struct{}

func (discardEvents) Publish(events.Event) {}

// logSelftest runs the self-test once at start and logs its result; a
// failure is logged, not fatal: the agent serves what it can.
func logSelftest(ctx context.Context, cfg config, logger *slog.Logger) {
	env, err := loadSelftestEnv(os.LookupEnv)
	if err != nil {
		logger.Error("self-test not run", "error", err)
		return
	}
	// The agent's network is written already, by the agent itself.
	env.source, env.agentOwned = "the agent's own configuration", true
	rep := runSelftest(ctx, cfg, env, logger.With("component", "selftest"), env.imageSet)
	attrs := []any{"passed", rep.Passed}
	for _, r := range rep.Results {
		v := string(r.Status)
		if r.Status != selftest.OK {
			v += ": " + r.Detail
			if r.Fix != "" {
				v += " (fix: " + r.Fix + ")"
			}
		}
		attrs = append(attrs, "check_"+strings.ReplaceAll(r.Name, "-", "_"), v)
	}
	if rep.Passed {
		logger.Info("self-test", attrs...)
	} else {
		logger.Warn("self-test failed", append(attrs, "failed", rep.Failures())...)
	}
}
