package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/internal/testenv"
)

// dockerSide is the big-image phase's Docker side: the moby dockerd the
// tests run, on the containerd the other sides use (its own data root and
// containerd namespace, no bridge, no iptables), started the way
// `docker run -d --network none IMAGE sleep inf` starts a container.
type dockerSide struct {
	d  *testenv.Dockerd
	cl *client.Client
}

// startDockerSide starts the moby dockerd under dir on the containerd at
// address. It returns a nil side and the reason when that dockerd is not
// built.
func startDockerSide(address, dir string) (*dockerSide, string, error) {
	bin, err := testenv.MobyDockerd()
	if err != nil {
		return nil, err.Error(), nil
	}
	// CDI gives the daemon the configuration that turns time namespaces
	// off, which Debian's runc does not have.
	d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: address, CDI: true})
	if err != nil {
		return nil, "", err
	}
	cl, err := client.New(client.WithHost(d.Host))
	if err != nil {
		d.Close()
		return nil, "", err
	}
	return &dockerSide{d: d, cl: cl}, "", nil
}

// namespace is the containerd namespace the daemon keeps its images and
// containers in.
func (s *dockerSide) namespace() string { return "moby-" + filepath.Base(s.d.Dir) }

func (s *dockerSide) close() {
	s.cl.Close()
	s.d.Close()
}

// run does what `docker run -d --network none ref sleep inf` does: create
// the container, and when the image is missing pull it and create again,
// then start it.
func (s *dockerSide) run(ctx context.Context, ref, name string) error {
	opts := client.ContainerCreateOptions{
		Name:       name,
		Config:     &container.Config{Image: ref, Cmd: []string{"sleep", "inf"}},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	}
	created, err := s.cl.ContainerCreate(ctx, opts)
	if cerrdefs.IsNotFound(err) {
		pull, perr := s.cl.ImagePull(ctx, ref, client.ImagePullOptions{})
		if perr != nil {
			return fmt.Errorf("pull: %w", perr)
		}
		if perr := pull.Wait(ctx); perr != nil {
			return fmt.Errorf("pull: %w", perr)
		}
		created, err = s.cl.ContainerCreate(ctx, opts)
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if _, err := s.cl.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start: %w\n%s", err, s.d.LogTail(2000))
	}
	return nil
}

// remove removes the container name, as `docker rm -f` does.
func (s *dockerSide) remove(ctx context.Context, name string) error {
	_, err := s.cl.ContainerRemove(ctx, name, client.ContainerRemoveOptions{Force: true})
	return err
}

// removeImage removes ref and what only it used, as `docker rmi -f` does;
// an image the daemon does not hold is no error.
func (s *dockerSide) removeImage(ctx context.Context, ref string) error {
	_, err := s.cl.ImageRemove(ctx, ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// logSkip says on stderr why the Docker side is left out.
func logSkip(why string) {
	fmt.Fprintf(os.Stderr, "big image: the %s side is left out: %s\n", bigDocker, why)
}
