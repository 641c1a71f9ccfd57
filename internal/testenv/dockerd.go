package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// MobyDockerdVersion is the moby dockerd the tests run (API 1.5x, CDI on),
// as deploy/build-dockerd.sh builds it.
const MobyDockerdVersion = "v2.0.0-beta.24"

// CacheDirEnv names the directory, outside the clone, where slow builds are
// kept between runs (default /var/cache/host-agent-ci).
const CacheDirEnv = "HOST_AGENT_CI_CACHE"

// HookRecordName is the file, in a Dockerd's directory, where the stand-in
// nvidia-container-runtime-hook appends one line per container it is run
// for: the container ID and the NVIDIA_VISIBLE_DEVICES dockerd gave it.
const HookRecordName = "nvidia-hook.log"

// DebianDockerd is Debian's dockerd (docker.io, 20.10, API 1.41, no CDI),
// or "" when it is not installed.
func DebianDockerd() string {
	for _, p := range []string{"/usr/sbin/dockerd", "/usr/bin/dockerd"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// MobyDockerd returns the moby dockerd cached by deploy/build-dockerd.sh
// (which deploy/test.sh runs first). It is not built here: packages tested
// in parallel would build it at once.
func MobyDockerd() (string, error) {
	cache := os.Getenv(CacheDirEnv)
	if cache == "" {
		cache = "/var/cache/host-agent-ci"
	}
	bin := filepath.Join(cache, "dockerd-"+MobyDockerdVersion, "dockerd")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("moby dockerd %s is not built (run deploy/build-dockerd.sh): %w", MobyDockerdVersion, err)
	}
	return bin, nil
}

// DockerdOptions configure a private dockerd.
type DockerdOptions struct {
	// Bin is the dockerd binary.
	Bin string
	// Containerd is the socket of the (private) containerd it runs on.
	Containerd string
	// CDI gives it a CDI spec directory (moby's dockerd only), CDIDir.
	CDI bool
	// NvidiaHook puts a stand-in nvidia-container-runtime-hook on its
	// PATH, which makes dockerd offer the "nvidia" device driver and
	// records what it is run with in HookRecordName.
	NvidiaHook bool
	// LiveRestore keeps containers running while dockerd is down.
	LiveRestore bool
	// IPTables lets it manage the host's iptables rules (NAT of published
	// ports, DOCKER-USER), as a production dockerd does. It still makes no
	// default bridge.
	IPTables bool
}

// Dockerd is a private dockerd with its own data root, exec root, pidfile
// and socket under one directory, on a private containerd, in containerd
// namespaces of its own, without networking (--bridge=none, no iptables
// unless DockerdOptions.IPTables).
type Dockerd struct {
	Dir string
	// Host is its DOCKER_HOST (unix://…).
	Host    string
	LogPath string
	// CDIDir is its CDI spec directory, when it has one.
	CDIDir string
	opts   DockerdOptions
	cmd    *exec.Cmd
	exited chan struct{}
}

// Options are the options it was started with.
func (d *Dockerd) Options() DockerdOptions { return d.opts }

// StartDockerd starts a dockerd under dir (short: the socket path must fit
// in a sockaddr) and waits until it answers.
func StartDockerd(dir string, opts DockerdOptions) (*Dockerd, error) {
	d := &Dockerd{Dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock"), LogPath: filepath.Join(dir, "dockerd.log"), opts: opts}
	for _, sub := range []string{"data", "exec", "bin"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o711); err != nil {
			return nil, err
		}
	}
	features := map[string]any{}
	if opts.LiveRestore {
		features["live-restore"] = true
	}
	if opts.CDI {
		d.CDIDir = filepath.Join(dir, "cdi")
		if err := os.MkdirAll(d.CDIDir, 0o755); err != nil {
			return nil, err
		}
		// Debian's runc has no time namespaces; the moby dockerd asks for
		// them unless told not to.
		features["features"] = map[string]bool{"time-namespaces": false}
	}
	config, err := json.Marshal(features)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), config, 0o600); err != nil {
		return nil, err
	}
	if opts.NvidiaHook {
		hook := fmt.Sprintf(`#!/bin/sh
# Stand-in for the NVIDIA Container Toolkit's hook: records which GPUs
# dockerd asked for, and injects nothing.
state=$(cat)
bundle=$(printf '%%s' "$state" | sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
id=$(printf '%%s' "$state" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
devs=$(grep -o '"NVIDIA_VISIBLE_DEVICES=[^"]*"' "$bundle/config.json" | tr -d '"' | tr '\n' ' ')
echo "$id $devs" >> %q
`, filepath.Join(dir, HookRecordName))
		if err := os.WriteFile(filepath.Join(dir, "bin", "nvidia-container-runtime-hook"), []byte(hook), 0o755); err != nil {
			return nil, err
		}
	}
	if err := d.Start(); err != nil {
		return nil, err
	}
	return d, nil
}

// Start (re)starts the daemon on the same directories.
func (d *Dockerd) Start() error {
	d.Stop()
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	ns := "moby-" + filepath.Base(d.Dir)
	args := []string{
		"--config-file", filepath.Join(d.Dir, "daemon.json"),
		"--containerd", d.opts.Containerd,
		"--containerd-namespace", ns, "--containerd-plugins-namespace", ns + "-plugins",
		"--data-root", filepath.Join(d.Dir, "data"), "--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "dockerd.pid"), "-H", d.Host,
		"--userland-proxy=false", "--iptables=" + fmt.Sprint(d.opts.IPTables), "--bridge=none",
		// Never IPv6 rules (moby's dockerd adds them by default, even with
		// --iptables=false): rentals are IPv4 only, and the chains would
		// outlive the daemon.
		"--ip6tables=false",
		// Rentals' queries that Docker's resolver forwards go to no
		// address outside the machine: without a resolver of the
		// test's, the host's would be asked.
		"--dns", "127.0.0.1",
	}
	if d.CDIDir != "" {
		args = append(args, "--cdi-spec-dir", d.CDIDir)
	}
	cmd := exec.Command(d.opts.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(d.Dir, "bin")+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	d.cmd, d.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(cmd, d.exited)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.waitReady(ctx); err != nil {
		d.Stop()
		return err
	}
	return nil
}

func (d *Dockerd) waitReady(ctx context.Context) error {
	cl, err := client.New(client.WithHost(d.Host))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("dockerd exited at start:\n%s", d.LogTail(4000))
		case <-ctx.Done():
			return fmt.Errorf("dockerd did not answer: %w\n%s", ctx.Err(), d.LogTail(4000))
		case <-time.After(100 * time.Millisecond):
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cl.Ping(pctx, client.PingOptions{})
		cancel()
		if err == nil {
			return nil
		}
	}
}

// HookRecord is what the stand-in NVIDIA hook recorded: per container ID,
// the NVIDIA_VISIBLE_DEVICES entries dockerd gave it.
func (d *Dockerd) HookRecord() map[string]string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, HookRecordName))
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		id, devs, _ := strings.Cut(line, " ")
		if id != "" {
			out[id] = strings.TrimSpace(devs)
		}
	}
	return out
}

// LogTail is the last n bytes of the daemon's log.
func (d *Dockerd) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stop ends the daemon (SIGTERM, then SIGKILL after 20 s). Containers keep
// running under containerd (live restore is not needed for that: dockerd
// on an outside containerd leaves their shims alone) until it starts again.
func (d *Dockerd) Stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// Close removes every container the daemon has, stops it and unmounts what
// it left mounted under its directory.
func (d *Dockerd) Close() {
	if d.cmd != nil {
		if cl, err := client.New(client.WithHost(d.Host)); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if list, err := cl.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
				for _, c := range list.Items {
					_, _ = cl.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
				}
			}
			cancel()
			cl.Close()
		}
	}
	d.Stop()
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		var mounts []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && strings.HasPrefix(f[1], d.Dir+"/") {
				mounts = append(mounts, f[1])
			}
		}
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
}

// DockerChainsPresent reports whether a dockerd made its chains on this
// host already.
func DockerChainsPresent() bool {
	out, _ := exec.Command("iptables-save").Output()
	out6, _ := exec.Command("ip6tables-save").Output()
	return strings.Contains(string(out)+string(out6), ":DOCKER")
}

// RemoveDockerChains removes what a dockerd managing iptables leaves once
// stopped: its (empty) chains, whichever its version made (DOCKER-USER,
// DOCKER-ISOLATION-STAGE-n in 20.10; DOCKER-FORWARD, DOCKER-CT,
// DOCKER-BRIDGE, DOCKER-INTERNAL in current ones), and the jumps to them.
func RemoveDockerChains(t testing.TB) {
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat"} {
			out, _ := exec.Command(tool, "-w", "-t", table, "-S").Output()
			var chains []string
			for _, l := range strings.Split(string(out), "\n") {
				f := strings.Fields(l)
				switch {
				case len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "DOCKER"):
					chains = append(chains, f[1])
				case len(f) >= 2 && f[0] == "-A" && !strings.HasPrefix(f[1], "DOCKER") && strings.Contains(l, "-j DOCKER"):
					_ = exec.Command(tool, append([]string{"-w", "-t", table, "-D"}, f[1:]...)...).Run()
				}
			}
			for _, c := range chains {
				_ = exec.Command(tool, "-w", "-t", table, "-F", c).Run()
			}
			for _, c := range chains {
				_ = exec.Command(tool, "-w", "-t", table, "-X", c).Run()
			}
		}
	}
	if out, _ := exec.Command("iptables-save").CombinedOutput(); strings.Contains(string(out), "DOCKER") {
		t.Errorf("Docker's chains left on the host:\n%s", out)
	}
}
