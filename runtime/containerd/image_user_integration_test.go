package containerd

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/host-agent/host-agent/runtime/conformance"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/testenv"
)

// pushUserImage pushes the payload with an /etc/passwd and /etc/group of
// its own and USER set to user, in two layers as a Dockerfile would make.
func pushUserImage(t *testing.T, repoTag, user string) string {
	t.Helper()
	bin, err := testenv.BuildPayload()
	if err != nil {
		t.Fatal(err)
	}
	base := tarLayer(t, map[string]string{"payload": string(bin)})
	etc := tarLayer(t, map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup})
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH, OS: "linux",
		Config: v1.Config{Entrypoint: []string{"/payload"}, Env: []string{"PATH=/"}, User: user},
	})
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, base, etc); err != nil {
		t.Fatal(err)
	}
	ref := registry.Host + "/" + repoTag
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(parsed, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func tarLayer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestImageUserOnContainerd runs images whose USER is a name, a number and
// user:group on the real daemon, and reads the ids the process got.
func TestImageUserOnContainerd(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	for i, tc := range []struct {
		user, uid, gid, groups string
	}{
		{"app", "1000", "1001", "44 2000"},
		{"1000", "1000", "1001", "44 2000"},
		{"app:extra", "1000", "2000", ""},
		{"4242:4343", "4242", "4343", ""},
		{"", "0", "0", ""},
	} {
		id := fmt.Sprintf("user-%d", i)
		ref := pushUserImage(t, fmt.Sprintf("user-image-%d:latest", i), tc.user)
		spec := payloadSpec(id, "cat", "/proc/self/status")
		spec.Image = ref
		if _, err := r.Start(ctx(t), spec); err != nil {
			t.Fatalf("USER %q: start: %v", tc.user, err)
		}
		rec.WaitFor(t, id, events.TypeInstanceExited, 30*time.Second)
		out, _, err := r.Logs(ctx(t), id, 100)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, line := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				status[k] = strings.Join(strings.Fields(v), " ")
			}
		}
		wantUID := strings.Repeat(tc.uid+" ", 4)
		wantGID := strings.Repeat(tc.gid+" ", 4)
		if status["Uid"] != strings.TrimSpace(wantUID) || status["Gid"] != strings.TrimSpace(wantGID) || status["Groups"] != tc.groups {
			t.Errorf("USER %q: Uid %q Gid %q Groups %q; want uid %s gid %s groups %q", tc.user, status["Uid"], status["Gid"], status["Groups"], tc.uid, tc.gid, tc.groups)
		}
		if err := r.Terminate(ctx(t), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
