package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// ensureImage makes sure the daemon has the image. An image already there
// is used as it is, unless it was pulled with a request's credentials: then
// it is pulled again with this request's, so that the registry decides
// whether this request may have it (the layers are not downloaded again).
func (r *Runtime) ensureImage(ctx context.Context, spec runtime.InstanceSpec) (string, error) {
	named, err := reference.ParseDockerRef(spec.Image)
	if err != nil {
		return "", fmt.Errorf("parse image %q: %w: %w", spec.Image, errdefs.ErrInvalidArgument, err)
	}
	ref := named.String()
	announced := false
	for {
		_, err = r.client.ImageInspect(ctx, ref)
		switch {
		case err == nil && !r.pulledWithAuth(ref):
			r.touchImage(ref)
			return ref, nil
		case err != nil && !errdefs.IsNotFound(err):
			return "", convertErr(err)
		}
		if !announced {
			r.pub.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: spec.ID, Status: "pulling", Message: ref})
			announced = true
		}
		decide, err := r.sharedPull(ctx, ref, reference.Domain(named), spec.RegistryAuth, func(p events.PullProgress) {
			r.pub.Publish(events.Event{Type: events.TypeInstancePullProgress, InstanceID: spec.ID, Status: "pulling", Progress: &p})
		})
		if err != nil {
			return "", err
		}
		if !decide {
			r.touchImage(ref)
			return ref, nil
		}
	}
}

// sharedPull pulls ref, or shares the pull of ref in flight
// (backend.PullGroup): the daemon's own pulls share layers, but each asks
// the registry for the image's configuration. A pull with credentials
// records so before it ends, so that no request waiting on it takes the
// image without asking the registry.
func (r *Runtime) sharedPull(ctx context.Context, ref, host string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) (decide bool, err error) {
	return r.pulls.Do(ctx, ref, auth, progress, func(progress func(events.PullProgress)) error {
		if err := r.pull(ctx, ref, host, auth, progress); err != nil {
			return err
		}
		if auth != nil {
			if err := os.WriteFile(r.authPullMarker(ref), []byte(ref+"\n"), 0o600); err != nil {
				return fmt.Errorf("record a pull with credentials: %w", err)
			}
		}
		return nil
	})
}

func (r *Runtime) authPullMarker(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(r.opts.StateDir, authPullsDir, hex.EncodeToString(sum[:]))
}

func (r *Runtime) pulledWithAuth(ref string) bool {
	_, err := os.Stat(r.authPullMarker(ref))
	return err == nil
}

// pull pulls ref, reporting its progress (bytes of all layers) to progress
// at most every ProgressInterval.
func (r *Runtime) pull(ctx context.Context, ref, host string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.PullTimeout)
	defer cancel()
	opts := client.ImagePullOptions{}
	if auth != nil {
		enc, err := authconfig.Encode(registry.AuthConfig{Username: auth.Username, Password: auth.Password, ServerAddress: host})
		if err != nil {
			return fmt.Errorf("encode registry credentials: %w", err)
		}
		opts.RegistryAuth = enc
	}
	resp, err := r.client.ImagePull(ctx, ref, opts)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, classifyPullErr(convertErr(err)))
	}
	prog := &pullProgress{layers: map[string][2]int64{}}
	stop := backend.ReportProgress(ctx, r.opts.ProgressInterval, func(context.Context) events.PullProgress { return prog.sum() }, progress)
	defer stop()
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return fmt.Errorf("pull %s: %w", ref, convertErr(err))
		}
		if msg.Error != nil {
			return fmt.Errorf("pull %s: %w", ref, classifyPullMessage(msg.Error.Code, msg.Error.Message))
		}
		if msg.ID != "" && msg.Progress != nil && msg.Progress.Total > 0 && msg.Status == "Downloading" {
			prog.set(msg.ID, msg.Progress.Current, msg.Progress.Total)
		}
		if msg.ID != "" && (msg.Status == "Download complete" || msg.Status == "Pull complete" || msg.Status == "Already exists") {
			prog.done(msg.ID)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// classifyPullErr gives a registry's refusal of the credentials a kind of
// its own, as the containerd back end does: it is about the request, not
// the agent or the registry's health.
func classifyPullErr(err error) error {
	switch {
	case errdefs.IsUnauthorized(err):
		return fmt.Errorf("registry refused the credentials: %w: %w", errdefs.ErrUnauthenticated, err)
	case errdefs.IsPermissionDenied(err):
		return fmt.Errorf("registry denied access: %w: %w", errdefs.ErrPermissionDenied, err)
	case errdefs.IsUnavailable(err) || errdefs.IsNotFound(err):
		return err
	}
	// Docker 20.10 answers a registry's refusal with a 500 whose message
	// says it.
	if containsAny(err.Error(), "unauthorized", "authentication required", "no basic auth credentials", "denied") {
		return classifyPullMessage(0, err.Error())
	}
	return err
}

// classifyPullMessage classifies an error the daemon reports inside the
// pull's stream, after answering 200. Docker 20.10 reports a registry's
// 401 there, with or without a code.
func classifyPullMessage(code int, msg string) error {
	err := fmt.Errorf("%s", msg)
	switch {
	case code == 401 || containsAny(msg, "unauthorized", "authentication required", "no basic auth credentials"):
		return fmt.Errorf("registry refused the credentials: %w: %w", errdefs.ErrUnauthenticated, err)
	case code == 403 || containsAny(msg, "denied"):
		return fmt.Errorf("registry denied access: %w: %w", errdefs.ErrPermissionDenied, err)
	case code == 404 || containsAny(msg, "not found", "manifest unknown"):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
}

type pullProgress struct {
	mu     sync.Mutex
	layers map[string][2]int64 // done, total
}

func (p *pullProgress) set(id string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layers[id] = [2]int64{done, total}
}

func (p *pullProgress) done(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.layers[id]; ok {
		p.layers[id] = [2]int64{l[1], l[1]}
	}
}

func (p *pullProgress) sum() events.PullProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out events.PullProgress
	for _, l := range p.layers {
		out.DoneBytes += l[0]
		out.TotalBytes += l[1]
	}
	return out
}
