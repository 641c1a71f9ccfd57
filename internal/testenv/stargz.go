package testenv

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/host-agent/host-agent/runtime/containerd/daemon"
)

// StargzVersion is the stargz-snapshotter deploy/build-stargz.sh builds.
const StargzVersion = "v0.18.2"

// StargzBinary returns containerd-stargz-grpc as deploy/build-stargz.sh
// (which deploy/test.sh runs first) cached it, or why it cannot be used
// here. It is not built here: packages tested in parallel would build it
// at once.
func StargzBinary() (string, error) {
	cache := os.Getenv(CacheDirEnv)
	if cache == "" {
		cache = "/var/cache/host-agent-ci"
	}
	bin := filepath.Join(cache, "stargz-"+StargzVersion, "containerd-stargz-grpc")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("containerd-stargz-grpc %s is not built (run deploy/build-stargz.sh): %w", StargzVersion, err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "", fmt.Errorf("no FUSE here, which the stargz snapshotter mounts layers with: %w", err)
	}
	return bin, nil
}

// Stargz is a private containerd-stargz-grpc with its own root, socket,
// configuration and log under one directory.
type Stargz struct {
	Dir     string
	Address string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// StargzConfig is the snapshotter's configuration in tests: nothing is
// fetched but what the rentals read (no prefetch, no background fetch), so
// that the bytes a registry served show what a lazy start needed.
const StargzConfig = "noprefetch = true\nno_background_fetch = true\n"

// StartStargz starts bin under dir with StargzConfig and waits until its
// socket is there.
func StartStargz(bin, dir string) (*Stargz, error) {
	return StartStargzWithConfig(bin, dir, StargzConfig)
}

// StartStargzWithConfig is StartStargz with the configuration given (""
// for the snapshotter's defaults, prefetch and background fetch on).
func StartStargzWithConfig(bin, dir, configTOML string) (*Stargz, error) {
	s := &Stargz{Dir: dir, Address: filepath.Join(dir, "stargz.sock"), LogPath: filepath.Join(dir, "stargz.log"), exited: make(chan struct{})}
	config := filepath.Join(dir, "config.toml")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(config, []byte(configTOML), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, "--root", filepath.Join(dir, "root"), "--address", s.Address, "--config", config, "--log-level", "info")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd-stargz-grpc: %w", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	deadline := time.After(30 * time.Second)
	for {
		if _, err := os.Stat(s.Address); err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("containerd-stargz-grpc exited at start:\n%s", s.LogTail(4000))
		case <-deadline:
			s.Stop()
			return nil, fmt.Errorf("containerd-stargz-grpc did not open %s:\n%s", s.Address, s.LogTail(4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ProxyPluginConfig is the containerd configuration that reaches s as the
// snapshotter "stargz", as deploy/setup-host.sh --lazy-pull writes it.
func (s *Stargz) ProxyPluginConfig() string {
	return fmt.Sprintf("\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n  address = %q\n", s.Address)
}

// LogTail is the last n bytes of the snapshotter's log.
func (s *Stargz) LogTail(n int) string {
	b, _ := os.ReadFile(s.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stop ends the snapshotter (SIGTERM, then SIGKILL) and detaches whatever
// it left mounted under its directory.
func (s *Stargz) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	for _, m := range mountsUnder(s.Dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append([]string{fields[4]}, out...)
		}
	}
	return out
}

// StartContainerdWith starts the containerd on PATH under dir with extra
// appended to its configuration, and waits until it answers.
func StartContainerdWith(dir, extra string) (*Containerd, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := daemon.StartWithConfig(ctx, "containerd", dir, nil, extra)
	if err != nil {
		return nil, err
	}
	return &Containerd{d}, nil
}
