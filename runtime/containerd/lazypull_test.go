package containerd

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/ssh"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// With SNAPSHOTTER=stargz an eStargz rental runs, and prints its first
// line, having fetched a small part of its image: the layer of padding it
// never reads stays in the registry. The same image on overlayfs is
// fetched whole, which shows that the count sees what a pull fetches.
func TestStargzStartsBeforeTheImageIsFetched(t *testing.T) {
	d, sn := startStargz(t)

	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	const padding = 48 << 20
	img, err := reg.PushEstargzPayload("lazy:estargz", padding)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartCountingProxy(reg.Host)
	t.Cleanup(proxy.Close)
	ref := proxy.Host + "/lazy:estargz"

	lazy := newSnapshotterRuntime(t, d.Address, "rentals-lazy", StargzSnapshotter, conformance.NewRecorder())
	if err := lazy.be.CheckSnapshotter(ctx(t)); err != nil {
		t.Fatalf("containerd does not reach the stargz snapshotter: %v\n%s", err, sn.LogTail(2000))
	}
	if _, err := lazy.Start(ctx(t), runtime.InstanceSpec{ID: "lazy", Image: ref, Command: []string{"echo", "first-line", "sleep", "inf"}}); err != nil {
		t.Fatalf("start on stargz: %v\n%s", err, sn.LogTail(4000))
	}
	waitForLog(t, lazy, "lazy", "first-line")
	served := proxy.BlobBytes()
	t.Logf("stargz: the rental printed its first line after %d of the image's %d bytes were served", served, img.Size)
	if served >= img.Size/4 {
		t.Errorf("stargz start fetched %d bytes of a %d-byte image: not lazy", served, img.Size)
	}
	// Not in containerd's content store: the snapshotter mounted it.
	c, cctx := rawClient(t, d.Address, "rentals-lazy")
	for _, p := range img.Padding {
		if _, err := c.ContentStore().Info(cctx, digest.Digest(p.String())); !errdefs.IsNotFound(err) {
			t.Errorf("the padding layer is in containerd's content store (%v): it was fetched", err)
		}
	}
	if err := lazy.Terminate(ctx(t), "lazy", 0); err != nil {
		t.Fatal(err)
	}

	before := proxy.BlobBytes()
	full := newSnapshotterRuntime(t, d.Address, "rentals-full", "", conformance.NewRecorder())
	if _, err := full.Start(ctx(t), runtime.InstanceSpec{ID: "full", Image: ref, Command: []string{"echo", "first-line", "sleep", "inf"}}); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, full, "full", "first-line")
	if fetched := proxy.BlobBytes() - before; fetched < padding {
		t.Errorf("overlayfs start fetched %d bytes, less than the %d bytes of padding: the count misses what a pull fetches", fetched, padding)
	}
	if err := full.Terminate(ctx(t), "full", 0); err != nil {
		t.Fatal(err)
	}
}

// startStargz starts a private containerd-stargz-grpc and a private
// containerd that reaches it as the snapshotter "stargz", both stopped
// with the test; it skips (or fails, in CI) the test without them.
func startStargz(t *testing.T) (*testenv.Containerd, *testenv.Stargz) {
	t.Helper()
	testenv.Require(t, integrationBinaries...)
	bin, err := testenv.StargzBinary()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}
	dir := t.TempDir()
	sn, err := testenv.StartStargz(bin, dir+"/stargz")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sn.Stop)
	d, err := testenv.StartContainerdWith(dir+"/containerd", sn.ProxyPluginConfig())
	if err != nil {
		t.Fatal(err)
	}
	// Registered after sn.Stop: runs before it, removing the rentals'
	// snapshots while the snapshotter still answers.
	t.Cleanup(func() { d.Close() })
	return d, sn
}

// With SNAPSHOTTER=stargz, what the snapshotter cannot mount is pulled in
// full by containerd, as on overlayfs: an image not in eStargz, and an
// eStargz image whose registry wants the credentials only the start
// carries.
func TestStargzPullsOtherImagesInFull(t *testing.T) {
	d, sn := startStargz(t)
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	plain, err := reg.PushPayload("plain:1")
	if err != nil {
		t.Fatal(err)
	}
	private, err := reg.PushEstargzPayload("private:estargz", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	reg.RequireBasicAuth("tenant", "s3cret-pass")
	r := newSnapshotterRuntime(t, d.Address, testNamespace(t), StargzSnapshotter, conformance.NewRecorder())
	for _, spec := range []runtime.InstanceSpec{
		{ID: "plain", Image: plain, Command: []string{"echo", "plain-runs", "sleep", "inf"},
			RegistryAuth: &runtime.RegistryAuth{Username: "tenant", Password: "s3cret-pass"}},
		{ID: "private", Image: private.Ref, Command: []string{"echo", "private-runs", "sleep", "inf"},
			RegistryAuth: &runtime.RegistryAuth{Username: "tenant", Password: "s3cret-pass"}},
	} {
		if _, err := r.Start(ctx(t), spec); err != nil {
			t.Fatalf("%s: %v\n%s", spec.ID, err, sn.LogTail(4000))
		}
		waitForLog(t, r, spec.ID, spec.ID+"-runs")
		if err := r.Terminate(ctx(t), spec.ID, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Fetched by containerd, so in its content store.
	c, cctx := rawClient(t, d.Address, testNamespace(t))
	for _, p := range private.Padding {
		if _, err := c.ContentStore().Info(cctx, digest.Digest(p.String())); err != nil {
			t.Errorf("the private image's padding layer is not in containerd's content store: %v", err)
		}
	}
}

// newSnapshotterRuntime is newRuntime with the rentals' images unpacked
// into snapshotter ("" is containerd's default).
func newSnapshotterRuntime(t *testing.T, addr, ns, snapshotter string, pub events.Publisher) *agent {
	t.Helper()
	r, err := New(Options{
		Address:     addr,
		Namespace:   ns,
		AgentID:     "test-agent",
		LogDir:      t.TempDir(),
		Events:      pub,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Snapshotter: snapshotter,
	})
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, pub)
}

// SNAPSHOTTER naming a snapshotter containerd does not have: the check
// says so with the fix, and Ping (GET /readyz) fails, before any start.
func TestMissingSnapshotterIsReported(t *testing.T) {
	needDaemon(t)
	r := newSnapshotterRuntime(t, daemon.Address, testNamespace(t), StargzSnapshotter, conformance.NewRecorder())
	err := r.be.CheckSnapshotter(ctx(t))
	if !errors.Is(err, ErrSnapshotterMissing) || !strings.Contains(err.Error(), "--lazy-pull") {
		t.Fatalf("CheckSnapshotter = %v, want ErrSnapshotterMissing with the fix", err)
	}
	if err := r.Ping(ctx(t)); !errors.Is(err, ErrSnapshotterMissing) {
		t.Errorf("Ping = %v, want ErrSnapshotterMissing", err)
	}
	// containerd's default is always there.
	if err := newSnapshotterRuntime(t, daemon.Address, testNamespace(t)+"-default", "", conformance.NewRecorder()).Ping(ctx(t)); err != nil {
		t.Errorf("Ping with the default snapshotter: %v", err)
	}
}

// An eStargz image whose USER is a name, started lazily with SSH keys:
// the user is looked up in the image's /etc/passwd and /etc/group, which
// are not in containerd's content store but in the snapshotter's mount.
func TestStargzImageUserByName(t *testing.T) {
	d, sn := startStargz(t)
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushEstargzUserImage("user:estargz", "app", testPasswd, testGroup)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	rec := conformance.NewRecorder()
	r := newSnapshotterRuntime(t, d.Address, testNamespace(t), StargzSnapshotter, rec)
	spec := runtime.InstanceSpec{ID: "named-user", Image: ref, Command: []string{"cat", "/proc/self/status"},
		SSHAuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))}}
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatalf("start: %v\n%s", err, sn.LogTail(4000))
	}
	rec.WaitFor(t, spec.ID, events.TypeInstanceExited, 30*time.Second)
	out, _, err := r.Logs(ctx(t), spec.ID, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "Uid:\t1000\t1000\t1000\t1000") || !strings.Contains(string(out), "Groups:\t44 2000") {
		t.Errorf("USER app on stargz: want uid 1000 and groups 44 2000, got:\n%s", out)
	}
}
