package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
)

// probeTimeout bounds the memlock probe.
const probeTimeout = 30 * time.Second

// grantable refuses a limit above the agent's own where the daemon cannot
// raise limits (runtime.CheckUlimitsGrantable), asking the daemon once,
// with the rental's image, when the agent's capabilities do not tell.
func (r *Runtime) grantable(ctx context.Context, ref string, spec runtime.InstanceSpec) error {
	return runtime.CheckUlimitsGrantable(spec.Ulimits, func() (bool, bool) {
		return r.raise.Ask(r.log, "daemon", func() (bool, error) { return r.probeRaise(ctx, ref) })
	})
}

// ulimits returns the limits a spec gets: its own, and the GPU defaults
// where the daemon allows raising them.
func (r *Runtime) ulimits(ctx context.Context, ref string, spec runtime.InstanceSpec) map[string]int64 {
	if _, asked := spec.Ulimits["memlock"]; asked || len(spec.GPUs) == 0 {
		return spec.UlimitsFor(false)
	}
	return spec.UlimitsFor(r.canRaise(ctx, ref))
}

// canRaise says whether GPU rentals get the unlimited memlock default. An
// agent with CAP_SYS_RESOURCE knows it at once; one without (in a
// container of its own, its capabilities dropped) asks the daemon once, the
// first time a rental needs it, by starting a container of the rental's
// image with an unlimited memlock and a process that does not exist. Until
// an answer comes, the default is kept.
func (r *Runtime) canRaise(ctx context.Context, ref string) bool {
	return r.raise.CanRaise(r.log, "daemon", func() (bool, error) { return r.probeRaise(ctx, ref) })
}

func (r *Runtime) probeRaise(ctx context.Context, ref string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeTimeout)
	defer cancel()
	// The process does not exist: runc sets the limits once its init is
	// ready, before it looks for the process, so a start failing on the
	// process proves the limits were set. Its name is random, so that no
	// image can hold it, and the container is confined like a rental.
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	process := "/host-agent-probe-" + hex.EncodeToString(b)
	pids := int64(1)
	created, err := r.client.ContainerCreate(ctx, client.ContainerCreateOptions{
		// Sealed labels: an image labelled as a rental does not make the
		// probe one.
		Config: &container.Config{Image: ref, Entrypoint: []string{process}, Cmd: []string{}, Labels: runtime.SealLabels(map[string]string{}, nil)},
		HostConfig: &container.HostConfig{NetworkMode: "none", SecurityOpt: []string{"no-new-privileges"}, Runtime: "runc",
			Resources: container.Resources{
				PidsLimit: &pids, Memory: 16 << 20,
				Ulimits: []*container.Ulimit{{Name: "memlock", Soft: runtime.UlimitUnlimited, Hard: runtime.UlimitUnlimited}},
			}},
	})
	if err != nil {
		return false, fmt.Errorf("create the probe container: %w", convertErr(err))
	}
	defer r.removeContainer(created.ID)
	_, err = r.client.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	switch {
	case err == nil, strings.Contains(err.Error(), process):
		return true, nil
	case strings.Contains(err.Error(), "setting rlimit"):
		return false, nil
	}
	return false, fmt.Errorf("probe start: %w", convertErr(err))
}
