package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// probeImage is the image the container stage runs, imported into the
// private containerd rather than pulled: the GPU machine has no network.
const probeImage = "localhost/host-agent-gpu-check:probe"

// libDir is where Debian-like images keep the C library; the loader's
// default search path, so no ld.so.cache is needed for it.
const libDir = "lib/x86_64-linux-gnu"

// buildImage writes a one-layer image (docker archive) to path: the probe
// program, and the minimal C library from the bundle's lib directory so
// that the driver's nvidia-smi, which CDI mounts in, can run.
func buildImage(path, probe, libs string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "etc", "etc/ld.so.conf.d", "lib", libDir, "lib64", "bin", "usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/lib64"} {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			return err
		}
	}
	add := func(name string, mode int64, content []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(content)
		return err
	}
	b, err := os.ReadFile(probe)
	if err != nil {
		return err
	}
	if err := add("gpu-check-probe", 0o755, b); err != nil {
		return err
	}
	// The update-ldcache hook adds the driver's library directories here.
	if err := add("etc/ld.so.conf", 0o644, []byte("include /etc/ld.so.conf.d/*.conf\n")); err != nil {
		return err
	}
	entries, err := os.ReadDir(libs)
	if err != nil {
		return fmt.Errorf("C library for the image: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(libs, e.Name()))
		if err != nil {
			return err
		}
		if err := add(libDir+"/"+e.Name(), 0o755, b); err != nil {
			return err
		}
	}
	// Programs ask for the loader at its ABI path.
	if err := tw.WriteHeader(&tar.Header{Name: "lib64/ld-linux-x86-64.so.2", Typeflag: tar.TypeSymlink,
		Linkname: "/" + libDir + "/ld-linux-x86-64.so.2"}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{"/gpu-check-probe"},
			// A careless or hostile image asking for every GPU gains
			// nothing: the agent injects only the reserved one.
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NVIDIA_VISIBLE_DEVICES=all"},
		},
	})
	if err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return err
	}
	ref, err := name.ParseReference(probeImage)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := tarball.Write(ref, img, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// importImage loads the archive at path into namespace ns of the daemon.
func importImage(ctx context.Context, address, ns, path string) error {
	cl, err := containerd.New(address)
	if err != nil {
		return err
	}
	defer cl.Close()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	imgs, err := cl.Import(namespaces.WithNamespace(ctx, ns), f)
	if err != nil {
		return fmt.Errorf("import the probe image: %w", err)
	}
	for _, i := range imgs {
		if i.Name == probeImage {
			return nil
		}
	}
	return fmt.Errorf("import the probe image: %s not among the imported %v", probeImage, imgs)
}

// snapshotter picks overlayfs where the daemon could load it, else native
// (sandboxes such as gVisor may refuse overlay mounts).
func snapshotter(ctx context.Context, address string) (string, error) {
	cl, err := containerd.New(address)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	resp, err := cl.IntrospectionService().Plugins(ctx, `type=="io.containerd.snapshotter.v1"`)
	if err != nil {
		return "", err
	}
	ok := map[string]bool{}
	for _, p := range resp.Plugins {
		ok[p.ID] = p.InitErr == nil
	}
	switch {
	case ok["overlayfs"]:
		return "overlayfs", nil
	case ok["native"]:
		return "native", nil
	}
	return "", fmt.Errorf("containerd has neither the overlayfs nor the native snapshotter working")
}
