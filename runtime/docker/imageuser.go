package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// maxPasswd bounds what is read of an image's /etc/passwd.
const maxPasswd = 4 << 20

// imageKeysPaths are the authorized_keys paths for image ref's USER. The
// Engine API shows an image's config but not its files: for a USER other
// than root, /etc/passwd is copied out of a container created (never
// started) from the image for that, and removed at once.
func (r *Runtime) imageKeysPaths(ctx context.Context, ref, u string) ([]string, error) {
	if u == "" || u == "root" || u == "0" {
		return backend.AuthorizedKeysPaths("", nil), nil
	}
	created, err := r.client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: ref, Entrypoint: []string{"/nonexistent"}, Cmd: []string{}, Labels: runtime.SealLabels(map[string]string{}, nil)},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		return nil, fmt.Errorf("read the image's users: %w", convertErr(err))
	}
	defer r.removeContainer(created.ID)
	res, err := r.client.CopyFromContainer(ctx, created.ID, client.CopyFromContainerOptions{SourcePath: "/etc/passwd"})
	if errdefs.IsNotFound(err) {
		return backend.AuthorizedKeysPaths(u, nil), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the image's /etc/passwd: %w", convertErr(err))
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return backend.AuthorizedKeysPaths(u, nil), nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the image's /etc/passwd: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxPasswd))
		if err != nil {
			return nil, fmt.Errorf("read the image's /etc/passwd: %w", err)
		}
		return backend.AuthorizedKeysPaths(u, bytes.NewReader(b)), nil
	}
}
