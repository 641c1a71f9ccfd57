package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/joho/godotenv"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/docker"
)

// config is the agent's configuration, read from the environment and from a
// .env file in the working directory (the real environment wins).
type config struct {
	AgentID string
	Token   string
	// APIServerToken is what the agent presents to the central server
	// (API_SERVER_TOKEN / API_SERVER_TOKEN_FILE). When neither is set it
	// is Token, and APIServerTokenShared says so, for a warning at start.
	APIServerToken       string
	APIServerTokenShared bool
	// MetricsToken opens GET /metrics only (METRICS_TOKEN /
	// METRICS_TOKEN_FILE); empty: the agent's token alone does.
	MetricsToken string
	ListenAddr   string
	// Runtime is auto, containerd or docker (RUNTIME); auto is resolved
	// at start by chooseRuntime.
	Runtime             string
	DockerHost          string
	ContainerdAddress   string
	ContainerdNamespace string
	StateDir            string
	APIServerURL        string
	PublicURL           string
	HeartbeatInterval   time.Duration
	ContainerdRoot      string
	CDISpecDirs         []string
	// GPUMock names a mock GPU machine to run on instead of NVML
	// (GPU_MOCK; empty: the host's real GPUs).
	GPUMock string
	// NUMAAlign pins a GPU rental's CPUs and memory to its GPUs' NUMA
	// node when its share fits there (NUMA_ALIGN, default true).
	NUMAAlign bool
	// MIGRentals rents the MIG devices of GPUs in MIG mode as units
	// (MIG_RENTALS, default false).
	MIGRentals          bool
	InstanceLogMaxBytes int64
	TLSCertFile         string
	TLSKeyFile          string
	LogLevel            slog.Level
	// OrphanGrace is how long after its creation an instance is never
	// terminated as an orphan (ORPHAN_GRACE; zero: the reporter's default).
	OrphanGrace time.Duration
	// AllowInsecureAPIServer lets API_SERVER_URL use plain http to a host
	// other than loopback (ALLOW_INSECURE_API_SERVER=true).
	AllowInsecureAPIServer bool
	Network                netConfig
	Share                  shareConfig
	// Bandwidth limits a rental that names none (RENTAL_EGRESS_MBPS,
	// RENTAL_INGRESS_MBPS); zero: unlimited.
	Bandwidth runtime.Bandwidth
	// PullStallTimeout fails a pull without a byte of progress for that
	// long (PULL_STALL_TIMEOUT).
	PullStallTimeout time.Duration
	// DiskReserveGB: starts are refused while CONTAINERD_ROOT has less
	// free (DISK_RESERVE_GB).
	DiskReserveGB uint64
	Pull          pullConfig
	// ImageGCFreeGB: unused images are removed while CONTAINERD_ROOT has
	// less free (IMAGE_GC_FREE_GB, default twice DISK_RESERVE_GB).
	ImageGCFreeGB uint64
	// Disk limits rentals' writable layers (RENTAL_DISK_GB,
	// DISK_WATCH_INTERVAL).
	Disk diskConfig

	// VolumeDir holds the volumes (VOLUME_DIR, default STATE_DIR/volumes).
	VolumeDir string
}

// minTokenLength keeps guessable tokens out: the token is all that stands
// between the network and root on this host.
const minTokenLength = 16

// configError names the variable at fault.
type configError struct {
	Var string
	Msg string
}

func (e *configError) Error() string { return e.Var + ": " + e.Msg }

// loadConfig reads the configuration. lookup is os.LookupEnv outside tests;
// dotenv is the path of the .env file, which may be absent. ENV_FILE in the
// environment names another file read instead (the systemd unit sets it to
// /etc/host-agent/env, so that the agent itself checks that file's mode, as
// it does .env's, rather than systemd reading it); a file named there must
// exist.
func loadConfig(lookup func(string) (string, bool), dotenv string) (config, error) {
	dotenv, fileVar := envFile(lookup, dotenv)
	if err := checkSecretFile(dotenv); err != nil && (fileVar == "ENV_FILE" || !errors.Is(err, os.ErrNotExist)) {
		return config{}, &configError{fileVar, err.Error()}
	}
	file, err := godotenv.Read(dotenv)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return config{}, fmt.Errorf("read %s: %w", dotenv, err)
	}
	get := func(name, def string) string {
		if v, ok := lookup(name); ok {
			return strings.TrimSpace(v)
		}
		if v, ok := file[name]; ok {
			return strings.TrimSpace(v)
		}
		return def
	}

	c := config{
		AgentID:             get("AGENT_ID", ""),
		ListenAddr:          get("LISTEN_ADDR", ":8080"),
		Runtime:             get("RUNTIME", "auto"),
		DockerHost:          get("DOCKER_HOST", docker.DefaultHost),
		ContainerdAddress:   get("CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"),
		ContainerdNamespace: get("CONTAINERD_NAMESPACE", "rentals"),
		StateDir:            get("STATE_DIR", "/var/lib/host-agent"),
		APIServerURL:        get("API_SERVER_URL", ""),
		PublicURL:           get("AGENT_PUBLIC_URL", ""),
		ContainerdRoot:      get("CONTAINERD_ROOT", "/var/lib/containerd"),
	}
	if c.AgentID == "" {
		return c, &configError{"AGENT_ID", "required: the name this host is known by to the central server"}
	}
	if len(c.AgentID) > 128 || strings.ContainsAny(c.AgentID, "/ \t\n") {
		return c, &configError{"AGENT_ID", "must be at most 128 characters without slashes or spaces"}
	}

	token, tokenFile := get("AGENT_TOKEN", ""), get("AGENT_TOKEN_FILE", "")
	switch {
	case token != "" && tokenFile != "":
		return c, &configError{"AGENT_TOKEN", "set either AGENT_TOKEN or AGENT_TOKEN_FILE, not both"}
	case tokenFile != "":
		if token, err = readTokenFile(tokenFile); err != nil {
			return c, &configError{"AGENT_TOKEN_FILE", err.Error()}
		}
	case token == "":
		return c, &configError{"AGENT_TOKEN", "required (or AGENT_TOKEN_FILE): the agent refuses to serve its API without authentication"}
	}
	if len(token) < minTokenLength {
		return c, &configError{"AGENT_TOKEN", fmt.Sprintf("too short: use at least %d characters", minTokenLength)}
	}
	c.Token = token

	apiToken, apiTokenFile := get("API_SERVER_TOKEN", ""), get("API_SERVER_TOKEN_FILE", "")
	switch {
	case apiToken != "" && apiTokenFile != "":
		return c, &configError{"API_SERVER_TOKEN", "set either API_SERVER_TOKEN or API_SERVER_TOKEN_FILE, not both"}
	case apiTokenFile != "":
		if apiToken, err = readTokenFile(apiTokenFile); err != nil {
			return c, &configError{"API_SERVER_TOKEN_FILE", err.Error()}
		}
	case apiToken == "":
		apiToken, c.APIServerTokenShared = token, true
	}
	c.APIServerToken = apiToken

	metricsToken, metricsTokenFile := get("METRICS_TOKEN", ""), get("METRICS_TOKEN_FILE", "")
	switch {
	case metricsToken != "" && metricsTokenFile != "":
		return c, &configError{"METRICS_TOKEN", "set either METRICS_TOKEN or METRICS_TOKEN_FILE, not both"}
	case metricsTokenFile != "":
		if metricsToken, err = readTokenFile(metricsTokenFile); err != nil {
			return c, &configError{"METRICS_TOKEN_FILE", err.Error()}
		}
	}
	switch {
	case metricsToken == "":
	case len(metricsToken) < minTokenLength:
		return c, &configError{"METRICS_TOKEN", fmt.Sprintf("too short: use at least %d characters", minTokenLength)}
	case metricsToken == token:
		return c, &configError{"METRICS_TOKEN", "must differ from AGENT_TOKEN: it is handed to Prometheus, and opens GET /metrics only"}
	}
	c.MetricsToken = metricsToken

	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return c, &configError{"LISTEN_ADDR", fmt.Sprintf("want host:port, got %q", c.ListenAddr)}
	}
	switch c.Runtime {
	case runtimeAuto, runtimeContainerd, runtimeDocker:
	default:
		return c, &configError{"RUNTIME", fmt.Sprintf("want containerd, docker or auto, got %q", c.Runtime)}
	}
	if _, err := client.ParseHostURL(c.DockerHost); err != nil {
		return c, &configError{"DOCKER_HOST", fmt.Sprintf("want unix:///path or tcp://host:port, got %q: %v", c.DockerHost, err)}
	}
	if c.ContainerdAddress == "" {
		return c, &configError{"CONTAINERD_ADDRESS", "must not be empty"}
	}
	if err := identifiers.Validate(c.ContainerdNamespace); err != nil {
		return c, &configError{"CONTAINERD_NAMESPACE", err.Error()}
	}
	if !filepath.IsAbs(c.StateDir) {
		return c, &configError{"STATE_DIR", fmt.Sprintf("must be an absolute path, got %q", c.StateDir)}
	}
	if c.VolumeDir, err = volumeDir(get, c.StateDir); err != nil {
		return c, err
	}
	for _, v := range []struct{ name, value string }{{"API_SERVER_URL", c.APIServerURL}, {"AGENT_PUBLIC_URL", c.PublicURL}} {
		if v.value == "" {
			continue
		}
		if u, err := url.Parse(v.value); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, &configError{v.name, fmt.Sprintf("want an http(s) URL, got %q", v.value)}
		}
	}
	switch v := get("ALLOW_INSECURE_API_SERVER", "false"); v {
	case "true", "false":
		c.AllowInsecureAPIServer = v == "true"
	default:
		return c, &configError{"ALLOW_INSECURE_API_SERVER", fmt.Sprintf("want true or false, got %q", v)}
	}
	if c.APIServerURL != "" && !c.AllowInsecureAPIServer {
		if u, _ := url.Parse(c.APIServerURL); u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			return c, &configError{"API_SERVER_URL", "plain http to a host other than loopback would send the agent's token in clear; use https, or set ALLOW_INSECURE_API_SERVER=true"}
		}
	}
	if v := get("ORPHAN_GRACE", ""); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 24*time.Hour {
			return c, &configError{"ORPHAN_GRACE", "want a Go duration between 1s and 24h, such as 1m"}
		}
		c.OrphanGrace = d
	}
	interval, err := time.ParseDuration(get("HEARTBEAT_INTERVAL", "15s"))
	if err != nil || interval < time.Second || interval > time.Hour {
		return c, &configError{"HEARTBEAT_INTERVAL", "want a Go duration between 1s and 1h, such as 15s"}
	}
	c.HeartbeatInterval = interval
	if !filepath.IsAbs(c.ContainerdRoot) {
		return c, &configError{"CONTAINERD_ROOT", fmt.Sprintf("must be an absolute path, got %q", c.ContainerdRoot)}
	}
	c.CDISpecDirs = filepath.SplitList(get("CDI_SPEC_DIRS", "/etc/cdi:/var/run/cdi"))
	for _, d := range c.CDISpecDirs {
		if !filepath.IsAbs(d) {
			return c, &configError{"CDI_SPEC_DIRS", fmt.Sprintf("want absolute directories separated by ':', got %q", d)}
		}
	}
	if c.GPUMock = get("GPU_MOCK", ""); c.GPUMock != "" && !slices.Contains(gpumock.Names(), c.GPUMock) {
		return c, &configError{"GPU_MOCK", fmt.Sprintf("want one of %s, got %q", strings.Join(gpumock.Names(), ", "), c.GPUMock)}
	}
	switch v := get("NUMA_ALIGN", "true"); v {
	case "true", "false":
		c.NUMAAlign = v == "true"
	default:
		return c, &configError{"NUMA_ALIGN", fmt.Sprintf("want true or false, got %q", v)}
	}
	switch v := get("MIG_RENTALS", "false"); v {
	case "true", "false":
		c.MIGRentals = v == "true"
	default:
		return c, &configError{"MIG_RENTALS", fmt.Sprintf("want true or false, got %q", v)}
	}
	logMax, err := strconv.ParseInt(get("INSTANCE_LOG_MAX_MB", "100"), 10, 64)
	if err != nil || logMax < 1 || logMax > 1<<20 {
		return c, &configError{"INSTANCE_LOG_MAX_MB", "want a whole number of MiB between 1 and 1048576"}
	}
	c.InstanceLogMaxBytes = logMax << 20
	c.TLSCertFile, c.TLSKeyFile = get("TLS_CERT_FILE", ""), get("TLS_KEY_FILE", "")
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return c, &configError{"TLS_CERT_FILE", "set TLS_CERT_FILE and TLS_KEY_FILE together"}
	}
	if c.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return c, &configError{"TLS_CERT_FILE", fmt.Sprintf("cannot load the certificate and key: %v", err)}
		}
	}
	if err := c.LogLevel.UnmarshalText([]byte(get("LOG_LEVEL", "info"))); err != nil {
		return c, &configError{"LOG_LEVEL", "want debug, info, warn or error"}
	}
	if c.Network, err = loadNetConfig(get, c.ListenAddr); err != nil {
		return c, err
	}
	if c.Share, err = loadShareConfig(get); err != nil {
		return c, err
	}
	if c.Bandwidth, err = loadBandwidthConfig(get); err != nil {
		return c, err
	}
	if c.PullStallTimeout, err = time.ParseDuration(get("PULL_STALL_TIMEOUT", "5m")); err != nil || c.PullStallTimeout < time.Second || c.PullStallTimeout > 24*time.Hour {
		return c, &configError{"PULL_STALL_TIMEOUT", "want a Go duration between 1s and 24h, such as 5m"}
	}
	if c.DiskReserveGB, err = strconv.ParseUint(get("DISK_RESERVE_GB", "20"), 10, 32); err != nil {
		return c, &configError{"DISK_RESERVE_GB", "want a whole number of GiB"}
	}
	if c.Pull, err = loadPullConfig(get); err != nil {
		return c, err
	}
	if err := checkSnapshotter(c.Runtime, c.Pull.Snapshotter); err != nil {
		return c, err
	}
	if c.ImageGCFreeGB, err = strconv.ParseUint(get("IMAGE_GC_FREE_GB", strconv.FormatUint(2*c.DiskReserveGB, 10)), 10, 32); err != nil {
		return c, &configError{"IMAGE_GC_FREE_GB", "want a whole number of GiB (0: never remove images)"}
	}
	if c.Disk, err = loadDiskConfig(get); err != nil {
		return c, err
	}
	return c, nil
}

// isLoopbackHost reports whether host (a name or an address) is this
// machine's loopback.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// envFile returns the configuration file loadConfig reads, and the name
// its errors are reported under: ENV_FILE's when the environment sets it,
// else dotenv (.env).
func envFile(lookup func(string) (string, bool), dotenv string) (path, name string) {
	if f, ok := lookup("ENV_FILE"); ok && strings.TrimSpace(f) != "" {
		return strings.TrimSpace(f), "ENV_FILE"
	}
	return dotenv, ".env"
}

// envFileSets says whether the configuration file loadConfig would read
// sets name. A file that cannot be read sets nothing; loadConfig reports it.
func envFileSets(lookup func(string) (string, bool), dotenv, name string) bool {
	path, _ := envFile(lookup, dotenv)
	file, err := godotenv.Read(path)
	if err != nil {
		return false
	}
	_, ok := file[name]
	return ok
}

// readTokenFile reads a token from a file only the agent's user (or root)
// can read and change.
func readTokenFile(path string) (string, error) {
	if err := checkSecretFile(path); err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read: %v", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("the file %s is empty", path)
	}
	return token, nil
}

// checkSecretFile refuses a file holding secrets that others could read or
// replace: any permission for group or others, or an owner other than the
// agent's user and root. A missing file is returned as os.ErrNotExist.
func checkSecretFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return err
		}
		return fmt.Errorf("cannot read: %v", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: it holds secrets and must not be accessible by group or others (chmod 600 %s)", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, neither root nor the agent's user", path, st.Uid)
	}
	return nil
}
