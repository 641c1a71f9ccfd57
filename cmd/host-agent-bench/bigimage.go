package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/host-agent/host-agent/internal/testenv"
	ctrd "github.com/host-agent/host-agent/runtime/containerd"
)

// bigConfig is the big-image phase: an image of Layers layers of LayerMB
// MiB of random data and the payload, served by a registry on loopback
// behind a proxy that behaves like a CDN (each connection RateMBps, each
// response FirstByte late), started cold Rounds times on every side.
type bigConfig struct {
	Layers, LayerMB, Rounds int
	RateMBps                float64
	FirstByte               time.Duration
	// PrePulledRuns are the starts of the pre-pulled image and of the
	// small one, each.
	PrePulledRuns int
	// Sides are the cold-start sides measured (bigSides by default).
	Sides []string
	// PullLayers and PullChunkMB are the agent's PULL_MAX_CONCURRENT_LAYERS
	// and PULL_CHUNK_MB (0: its defaults).
	PullLayers, PullChunkMB int
}

// Sides of the cold big-image start.
const (
	bigAgent    = "agent"
	bigCtr      = "ctr"       // ctr images pull (the transfer service) + ctr run -d
	bigCtrLocal = "ctr-local" // ctr images pull --local (the client-side pull) + ctr run -d
	bigDocker   = "docker"    // docker run -d on the moby dockerd, on the same containerd
)

var bigSides = []string{bigAgent, bigCtr, bigCtrLocal, bigDocker}

// BigImage are the big-image phase's results.
type BigImage struct {
	Layers     int     `json:"layers"`
	LayerMB    int     `json:"layer_mb"`
	ImageMB    float64 `json:"image_mb"`
	RateMBps   float64 `json:"rate_mib_per_s_per_connection"`
	FirstByte  float64 `json:"first_byte_ms"`
	PullLayers int     `json:"agent_pull_max_concurrent_layers"`
	PullChunk  int     `json:"agent_pull_chunk_mb"`
	// ColdStart is the time to running of the image, cold, by side.
	ColdStart map[string]Stat `json:"cold_start"`
	// Skipped are the sides left out, with the reason (the Docker side
	// when the moby dockerd is not built).
	Skipped map[string]string `json:"skipped_sides,omitempty"`
	// PrePulledStart and SmallStart are starts through the agent of the
	// big image pre-pulled and of the small payload image.
	PrePulledStart Stat               `json:"prepulled_start"`
	SmallStart     Stat               `json:"small_start"`
	Ratios         map[string]float64 `json:"ratios"`
	// Race is what the registry served while a start raced a pre-pull of
	// the cold image: by blob, its size, the GETs from its first byte, all
	// GETs (ranges included) and the bytes sent.
	Race []BlobServed `json:"race_blobs"`
}

// BlobServed is what the registry served of one blob.
type BlobServed struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Fetches   int    `json:"fetches"`
	GETs      int    `json:"gets"`
	BytesSent int64  `json:"bytes_sent"`
}

// cdnProxy is a reverse proxy to a registry that serves each response at
// most rate bytes a second and its first byte firstByte late, as a CDN in
// front of a registry does for a client far away; it counts what it serves
// of each blob.
type cdnProxy struct {
	srv       *http.Server
	host      string
	rate      float64
	firstByte time.Duration
	mu        sync.Mutex
	served    map[string]*BlobServed
}

func startCDN(registryHost string, rate float64, firstByte time.Duration) (*cdnProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	target, _ := url.Parse("http://" + registryHost)
	p := &cdnProxy{host: ln.Addr().String(), rate: rate, firstByte: firstByte, served: map[string]*BlobServed{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		time.Sleep(p.firstByte)
		var blob *BlobServed
		if i := strings.LastIndex(req.URL.Path, "/blobs/"); i >= 0 && req.Method == http.MethodGet {
			p.mu.Lock()
			dg := req.URL.Path[i+len("/blobs/"):]
			if blob = p.served[dg]; blob == nil {
				blob = &BlobServed{Digest: dg}
				p.served[dg] = blob
			}
			blob.GETs++
			if r := req.Header.Get("Range"); r == "" || strings.HasPrefix(r, "bytes=0-") {
				blob.Fetches++
			}
			p.mu.Unlock()
		}
		rp.ServeHTTP(&pacedWriter{ResponseWriter: w, rate: p.rate, began: time.Now(), count: func(n int) {
			if blob != nil {
				p.mu.Lock()
				blob.BytesSent += int64(n)
				p.mu.Unlock()
			}
		}}, req)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *cdnProxy) close() { _ = p.srv.Close() }

// reset forgets what was served.
func (p *cdnProxy) reset() {
	p.mu.Lock()
	p.served = map[string]*BlobServed{}
	p.mu.Unlock()
}

func (p *cdnProxy) blobs() []BlobServed {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []BlobServed
	for _, b := range p.served {
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b BlobServed) int { return strings.Compare(a.Digest, b.Digest) })
	return out
}

// pacedWriter sends at most rate bytes a second since began, in pieces.
type pacedWriter struct {
	http.ResponseWriter
	rate  float64
	began time.Time
	sent  int64
	count func(int)
}

func (w *pacedWriter) Write(b []byte) (int, error) {
	const piece = 64 << 10
	n := 0
	for len(b) > 0 {
		k := min(len(b), piece)
		m, err := w.ResponseWriter.Write(b[:k])
		n += m
		w.sent += int64(m)
		w.count(m)
		if err != nil {
			return n, err
		}
		if due := w.began.Add(time.Duration(float64(w.sent) / w.rate * float64(time.Second))); time.Until(due) > 0 {
			if f, ok := w.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			time.Sleep(time.Until(due))
		}
		b = b[k:]
	}
	return n, nil
}

func (w *pacedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Namespaces of the big-image phase.
const (
	nsBigAgent    = "bench-big"
	nsBigCtr      = "bench-big-ctr"
	nsBigCtrLocal = "bench-big-local"
)

// measureBig runs the big-image phase on the containerd at address; work
// holds the registry's blobs and the agent's files; small is a small image
// the agent can start.
func measureBig(ctx context.Context, address, work string, bin []byte, small string, cfg bigConfig) (*BigImage, error) {
	if cfg.Layers < 1 || cfg.LayerMB < 1 || cfg.Rounds < 1 || cfg.PrePulledRuns < 1 || cfg.RateMBps <= 0 {
		return nil, errors.New("-big-layers, -big-layer-mb, -big-rounds, -big-prepulled-runs and -big-rate-mb must be positive")
	}
	res := &BigImage{Layers: cfg.Layers, LayerMB: cfg.LayerMB, RateMBps: cfg.RateMBps, FirstByte: float64(cfg.FirstByte) / float64(time.Millisecond),
		PullLayers: cmp.Or(cfg.PullLayers, ctrd.DefaultPullLayers), PullChunk: max(cfg.PullChunkMB, 0),
		ColdStart: map[string]Stat{}, Ratios: map[string]float64{}}
	reg, err := testenv.StartDiskRegistry(filepath.Join(work, "registry"))
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	t0 := time.Now()
	direct, err := reg.PushBigImage("big:bench", bin, cfg.Layers, int64(cfg.LayerMB)<<20, uint64(time.Now().UnixNano()))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "big image: %d x %d MiB pushed in %s\n", cfg.Layers, cfg.LayerMB, time.Since(t0).Round(time.Second))
	cdn, err := startCDN(reg.Host, cfg.RateMBps*(1<<20), cfg.FirstByte)
	if err != nil {
		return nil, err
	}
	defer cdn.close()
	ref := cdn.host + strings.TrimPrefix(direct, reg.Host)

	var env []string
	if cfg.PullLayers > 0 {
		env = append(env, "PULL_MAX_CONCURRENT_LAYERS="+fmt.Sprint(cfg.PullLayers))
	}
	if cfg.PullChunkMB > 0 {
		env = append(env, "PULL_CHUNK_MB="+fmt.Sprint(cfg.PullChunkMB))
	}
	agent, err := startAgent(ctx, address, filepath.Join(work, "big-agent"), 1, "", "", append(env, envNamespace+"="+nsBigAgent)...)
	if err != nil {
		return nil, err
	}
	defer agent.close()
	cl, err := containerdclient.New(address)
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	// The small image is present before its starts are timed.
	if err := agent.start(ctx, "small-warm", small, 0); err != nil {
		return nil, err
	}
	if err := agent.terminate(ctx, "small-warm"); err != nil {
		return nil, err
	}

	// Cold starts, the sides' order rotating round by round.
	sides := cfg.Sides
	if len(sides) == 0 {
		sides = bigSides
	}
	var docker *dockerSide
	if slices.Contains(sides, bigDocker) {
		var why string
		if docker, why, err = startDockerSide(address, filepath.Join(work, "dk")); err != nil {
			return nil, fmt.Errorf("docker side: %w", err)
		}
		if docker == nil {
			logSkip(why)
			res.Skipped = map[string]string{bigDocker: why}
			sides = slices.DeleteFunc(slices.Clone(sides), func(s string) bool { return s == bigDocker })
		} else {
			defer docker.close()
		}
	}
	cold := &coldCheck{cl: cl, agent: agent, docker: docker, ref: ref}
	times := map[string][]time.Duration{}
	for round := range cfg.Rounds {
		for k := range sides {
			side := sides[(round+k)%len(sides)]
			if err := cold.make(ctx); err != nil {
				return nil, err
			}
			id := fmt.Sprintf("big-%d-%s", round, side)
			began := time.Now()
			if err := bigStart(ctx, side, address, agent, docker, ref, id); err != nil {
				return nil, fmt.Errorf("%s cold start: %w", side, err)
			}
			times[side] = append(times[side], time.Since(began))
			fmt.Fprintf(os.Stderr, "big image round %d %s: %s\n", round, side, time.Since(began).Round(time.Millisecond))
			if err := bigStop(ctx, side, address, agent, docker, id); err != nil {
				return nil, fmt.Errorf("%s stop: %w", side, err)
			}
		}
	}
	for _, side := range sides {
		res.ColdStart[side] = summarize(times[side])
	}
	if a, c := res.ColdStart[bigAgent], res.ColdStart[bigCtr]; a.N > 0 && c.N > 0 {
		res.Ratios["cold_start_agent_over_ctr"] = a.Median / c.Median
	}
	if a, c := res.ColdStart[bigAgent], res.ColdStart[bigCtrLocal]; a.N > 0 && c.N > 0 {
		res.Ratios["cold_start_agent_over_ctr_local"] = a.Median / c.Median
	}
	if a, d := res.ColdStart[bigAgent], res.ColdStart[bigDocker]; a.N > 0 && d.N > 0 {
		res.Ratios["cold_start_agent_over_docker"] = a.Median / d.Median
	}

	// A start racing a pre-pull of the cold image: one fetch per blob.
	if err := cold.make(ctx); err != nil {
		return nil, err
	}
	cdn.reset()
	if code, body, err := agent.send(ctx, http.MethodPost, "/images/pull", map[string]any{"image": ref}); err != nil || code != http.StatusAccepted {
		return nil, fmt.Errorf("pre-pull: %d %s %v", code, body, err)
	}
	if err := agent.start(ctx, "big-race", ref, 0); err != nil {
		return nil, fmt.Errorf("start racing the pre-pull: %w", err)
	}
	res.Race = cdn.blobs()
	res.ImageMB = 0
	for i := range res.Race {
		res.Race[i].Size = blobSize(ctx, cl, res.Race[i].Digest)
		res.ImageMB += float64(res.Race[i].Size) / (1 << 20)
	}
	if err := agent.terminate(ctx, "big-race"); err != nil {
		return nil, err
	}

	// The pre-pulled image (present since the race) against the small one.
	var pre, sm []time.Duration
	for i := range cfg.PrePulledRuns {
		for _, s := range []struct {
			image string
			into  *[]time.Duration
		}{{ref, &pre}, {small, &sm}} {
			id := fmt.Sprintf("prepulled-%d-%d", i, len(*s.into))
			if s.image == small {
				id = fmt.Sprintf("small-%d", i)
			}
			began := time.Now()
			if err := agent.start(ctx, id, s.image, 0); err != nil {
				return nil, err
			}
			*s.into = append(*s.into, time.Since(began))
			if err := agent.terminate(ctx, id); err != nil {
				return nil, err
			}
		}
	}
	res.PrePulledStart, res.SmallStart = summarize(pre), summarize(sm)
	res.Ratios["prepulled_start_over_small"] = res.PrePulledStart.Median / res.SmallStart.Median
	return res, cold.make(ctx)
}

// bigStart starts ref as id on side, timing nothing itself.
func bigStart(ctx context.Context, side, address string, agent *agentProc, docker *dockerSide, ref, id string) error {
	switch side {
	case bigAgent:
		return agent.start(ctx, id, ref, 0)
	case bigDocker:
		return docker.run(ctx, ref, id)
	case bigCtr:
		if err := ctrIn(ctx, address, nsBigCtr, "images", "pull", "--plain-http", ref); err != nil {
			return err
		}
		return ctrIn(ctx, address, nsBigCtr, "run", "-d", ref, id, "/payload", "sleep", "inf")
	case bigCtrLocal:
		if err := ctrIn(ctx, address, nsBigCtrLocal, "images", "pull", "--local", "--plain-http", ref); err != nil {
			return err
		}
		return ctrIn(ctx, address, nsBigCtrLocal, "run", "-d", ref, id, "/payload", "sleep", "inf")
	}
	return fmt.Errorf("unknown side %q", side)
}

func bigStop(ctx context.Context, side, address string, agent *agentProc, docker *dockerSide, id string) error {
	switch side {
	case bigAgent:
		return agent.terminate(ctx, id)
	case bigDocker:
		return docker.remove(ctx, id)
	}
	ns := map[string]string{bigCtr: nsBigCtr, bigCtrLocal: nsBigCtrLocal}[side]
	if err := ctrIn(ctx, address, ns, "task", "kill", "-s", "SIGKILL", id); err != nil {
		return err
	}
	if err := ctrIn(ctx, address, ns, "task", "rm", "-f", id); err != nil {
		return err
	}
	return ctrIn(ctx, address, ns, "containers", "rm", id)
}

func ctrIn(ctx context.Context, address, ns string, args ...string) error {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", address, "-n", ns}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr %v: %w: %s", args, err, out)
	}
	return nil
}

// coldCheck makes the cache cold between rounds.
type coldCheck struct {
	cl     *containerdclient.Client
	agent  *agentProc
	docker *dockerSide // nil without the Docker side
	ref    string
	// blobs are the image's blobs, known from the first side that held it.
	blobs []digest.Digest
}

// make removes ref from every side (through the agent's DELETE /images on
// its side, through the daemon's image removal on Docker's) and checks that
// containerd holds none of its blobs in any side's namespace: each round
// starts from a cold cache.
func (c *coldCheck) make(ctx context.Context) error {
	nss := []string{nsBigAgent, nsBigCtr, nsBigCtrLocal}
	if c.docker != nil {
		nss = append(nss, c.docker.namespace())
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		img, err := c.cl.ImageService().Get(nctx, c.ref)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if len(c.blobs) == 0 {
			if c.blobs, err = imageBlobs(nctx, c.cl, img); err != nil {
				return err
			}
		}
		switch {
		case ns == nsBigAgent:
			if code, body, err := c.agent.send(ctx, http.MethodDelete, "/images", map[string]any{"image": c.ref}); err != nil || code != http.StatusOK {
				return fmt.Errorf("DELETE /images: %d %s %v", code, body, err)
			}
		case c.docker != nil && ns == c.docker.namespace():
			// Docker's removal, not containerd's behind its back: the
			// daemon forgets the image too.
			if err := c.docker.removeImage(ctx, c.ref); err != nil {
				return fmt.Errorf("docker image remove: %w", err)
			}
		default:
			if err := c.cl.ImageService().Delete(nctx, c.ref, images.SynchronousDelete()); err != nil {
				return err
			}
		}
	}
	if c.docker != nil {
		// An image Docker holds under another name than ref in containerd
		// is found here: the daemon removes it by the reference it pulled.
		if err := c.docker.removeImage(ctx, c.ref); err != nil {
			return fmt.Errorf("docker image remove: %w", err)
		}
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		for _, d := range c.blobs {
			if _, err := c.cl.ContentStore().Info(nctx, d); err == nil {
				return fmt.Errorf("namespace %s still holds blob %s after the image's removal: the cache is not cold", ns, d)
			}
		}
	}
	return nil
}

// imageBlobs are the digests of img's manifest, config and layers.
func imageBlobs(ctx context.Context, cl *containerdclient.Client, img images.Image) ([]digest.Digest, error) {
	var out []digest.Digest
	err := images.Walk(ctx, images.Handlers(images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		out = append(out, desc.Digest)
		return nil, nil
	}), images.ChildrenHandler(cl.ContentStore())), img.Target)
	return out, err
}

func blobSize(ctx context.Context, cl *containerdclient.Client, dg string) int64 {
	info, err := cl.ContentStore().Info(namespaces.WithNamespace(ctx, nsBigAgent), digest.Digest(dg))
	if err != nil {
		return 0
	}
	return info.Size
}

// send sends an authenticated request with a JSON body and returns the
// answer's status and body.
func (a *agentProc) send(ctx context.Context, method, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, method, a.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+benchToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// printBig prints the big-image phase.
func (b *BigImage) print(w io.Writer) {
	fmt.Fprintf(w, "\nbig image: %d layers of %d MiB (%.0f MiB), registry behind a CDN proxy: %.0f MiB/s a connection, first byte %.0f ms; agent PULL_MAX_CONCURRENT_LAYERS=%d PULL_CHUNK_MB=%d\n",
		b.Layers, b.LayerMB, b.ImageMB, b.RateMBps, b.FirstByte, b.PullLayers, b.PullChunk)
	fmt.Fprintf(w, "%-34s %6s %10s %10s\n", "measure", "n", "median ms", "p95 ms")
	for _, side := range bigSides {
		if s, ok := b.ColdStart[side]; ok {
			fmt.Fprintf(w, "%-34s %6d %10.0f %10.0f\n", "cold start "+side, s.N, s.Median, s.P95)
		}
	}
	for _, side := range slices.Sorted(maps.Keys(b.Skipped)) {
		fmt.Fprintf(w, "%-34s left out: %s\n", "cold start "+side, b.Skipped[side])
	}
	fmt.Fprintf(w, "%-34s %6d %10.1f %10.1f\n", "start pre-pulled big image", b.PrePulledStart.N, b.PrePulledStart.Median, b.PrePulledStart.P95)
	fmt.Fprintf(w, "%-34s %6d %10.1f %10.1f\n", "start small image", b.SmallStart.N, b.SmallStart.Median, b.SmallStart.P95)
	for _, k := range slices.Sorted(maps.Keys(b.Ratios)) {
		fmt.Fprintf(w, "%-40s %6.2f\n", k, b.Ratios[k])
	}
	fmt.Fprintln(w, "blobs served while a start raced a pre-pull (fetches from byte 0, GETs, bytes sent / size):")
	for _, s := range b.Race {
		fmt.Fprintf(w, "  %s  %d  %d  %d / %d\n", s.Digest, s.Fetches, s.GETs, s.BytesSent, s.Size)
	}
}
