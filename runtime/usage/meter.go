package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// Options configure a Meter.
type Options struct {
	// Dir keeps one file per rental (STATE_DIR/usage).
	Dir string
	// Sampler reads running rentals' counters; nil: only GPU time.
	Sampler Sampler
	// Disk measures writable layers; nil: disk_used_bytes stays 0.
	Disk runtime.DiskMeter
	// SampleTimeout bounds one rental's reading; default 5s.
	SampleTimeout time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
}

// Meter keeps every rental's usage. Its methods are safe for concurrent
// use; readings of one rental are taken one at a time, so that an older
// reading is never folded in after a newer one (which would look like a
// counter starting over).
type Meter struct {
	opts Options

	mu      sync.Mutex
	records map[string]*entry
}

// entry is one rental's record, with the lock held while a reading is
// taken and folded in.
type entry struct {
	mu    sync.Mutex
	rec   record
	saved bool // rec is on disk as it is
}

// record is what the Meter keeps of one rental, in memory and on disk.
type record struct {
	// CreatedAt tells one rental from a later one under the same ID.
	CreatedAt time.Time `json:"created_at"`
	CPU       counter   `json:"cpu_nanos"`
	Rx        counter   `json:"net_rx"`
	Tx        counter   `json:"net_tx"`
	MemoryMax uint64    `json:"memory_max_bytes"`
	DiskMax   uint64    `json:"disk_max_bytes"`
	GPU       float64   `json:"gpu_seconds"`
}

// counter carries a cumulative counter over its source starting again:
// Last is the source's last reading, Base what earlier sources counted.
type counter struct {
	Base uint64 `json:"base"`
	Last uint64 `json:"last"`
}

func (c *counter) fold(raw uint64) {
	if raw < c.Last {
		// A new cgroup or veth (the runtime restarted the task, the host
		// rebooted): what the old one counted is kept.
		c.Base += c.Last
	}
	c.Last = raw
}

func (c counter) value() uint64 { return c.Base + c.Last }

func (r *record) usage() Usage {
	return Usage{
		CPUSeconds:     math.Round(float64(r.CPU.value())/1e6) / 1e3,
		MemoryMaxBytes: r.MemoryMax,
		NetRxBytes:     r.Rx.value(),
		NetTxBytes:     r.Tx.value(),
		DiskUsedBytes:  r.DiskMax,
		GPUSeconds:     r.GPU,
	}
}

// NewMeter opens the Meter's directory and reads back what it kept.
func NewMeter(opts Options) (*Meter, error) {
	if !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("usage directory %q must be an absolute path", opts.Dir)
	}
	if opts.SampleTimeout <= 0 {
		opts.SampleTimeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("usage directory: %w", err)
	}
	m := &Meter{opts: opts, records: map[string]*entry{}}
	ents, err := os.ReadDir(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("usage directory: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || runtime.ValidateInstanceID(id) != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(opts.Dir, e.Name()))
		r := &entry{}
		if err == nil {
			err = json.Unmarshal(b, &r.rec)
		}
		if err != nil {
			// Counting again from the sources beats refusing to start.
			opts.Logger.Warn("unreadable usage record; the rental's usage is counted again from its sources", "instance_id", id, "error", err)
			continue
		}
		r.saved = true
		m.records[id] = r
	}
	return m, nil
}

// Observe reads inst's counters (while it runs), folds them into what the
// Meter kept, keeps the result and returns it. A reading that fails
// leaves the figures as they were: they never go back.
func (m *Meter) Observe(ctx context.Context, inst runtime.Instance) Usage {
	e := m.entryOf(inst)
	e.mu.Lock()
	defer e.mu.Unlock()
	r := &e.rec
	before := *r
	if inst.Status == runtime.StatusRunning || inst.Status == runtime.StatusPaused {
		m.sample(ctx, inst.ID, r)
	}
	now := func() float64 { return float64(m.opts.Now().UnixNano()) / 1e9 }
	r.GPU = max(r.GPU, gpuSeconds(inst, now))
	if *r != before || !e.saved {
		e.saved = true
		if err := m.save(inst.ID, r); err != nil {
			m.opts.Logger.Warn("keep a rental's usage", "instance_id", inst.ID, "error", err)
		}
	}
	return r.usage()
}

func (m *Meter) sample(ctx context.Context, id string, r *record) {
	ctx, cancel := context.WithTimeout(ctx, m.opts.SampleTimeout)
	defer cancel()
	if m.opts.Sampler != nil {
		s, err := m.opts.Sampler.SampleUsage(ctx, id)
		if err == nil {
			r.CPU.fold(s.CPUNanos)
			r.MemoryMax = max(r.MemoryMax, s.MemoryPeakBytes, s.MemoryBytes)
			if s.Net {
				r.Rx.fold(s.NetRxBytes)
				r.Tx.fold(s.NetTxBytes)
			}
		} else if ctx.Err() == nil {
			m.opts.Logger.Debug("read a rental's usage", "instance_id", id, "error", err)
		}
	}
	if m.opts.Disk != nil {
		if n, err := m.opts.Disk.DiskUsed(ctx, id); err == nil {
			r.DiskMax = max(r.DiskMax, n)
		}
	}
}

// entryOf returns inst's entry, a new one when there is none or the one
// there belongs to an earlier rental of the same ID.
func (m *Meter) entryOf(inst runtime.Instance) *entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.records[inst.ID]
	if ok {
		e.mu.Lock()
		created := e.rec.CreatedAt
		e.mu.Unlock()
		if inst.CreatedAt.IsZero() || created.IsZero() || created.Equal(inst.CreatedAt) {
			return e
		}
	}
	e = &entry{rec: record{CreatedAt: inst.CreatedAt}}
	m.records[inst.ID] = e
	return e
}

// Last returns what the Meter kept of id, without reading anything.
func (m *Meter) Last(id string) (Usage, bool) {
	m.mu.Lock()
	e, ok := m.records[id]
	m.mu.Unlock()
	if !ok {
		return Usage{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rec.usage(), true
}

// All returns what the Meter kept of every rental.
func (m *Meter) All() map[string]Usage {
	m.mu.Lock()
	recs := maps.Clone(m.records)
	m.mu.Unlock()
	out := make(map[string]Usage, len(recs))
	for id, e := range recs {
		e.mu.Lock()
		out[id] = e.rec.usage()
		e.mu.Unlock()
	}
	return out
}

// Forget removes what the Meter kept of id: its rental is gone.
func (m *Meter) Forget(id string) {
	m.mu.Lock()
	delete(m.records, id)
	m.mu.Unlock()
	if runtime.ValidateInstanceID(id) != nil {
		return
	}
	if err := os.Remove(filepath.Join(m.opts.Dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.opts.Logger.Warn("remove a rental's usage record", "instance_id", id, "error", err)
	}
}

// Prune forgets every rental that live does not hold: those terminated
// while the agent was away.
func (m *Meter) Prune(live map[string]bool) {
	m.mu.Lock()
	var gone []string
	for id := range m.records {
		if !live[id] {
			gone = append(gone, id)
		}
	}
	m.mu.Unlock()
	for _, id := range gone {
		m.Forget(id)
	}
}

func (m *Meter) save(id string, r *record) error {
	if err := runtime.ValidateInstanceID(id); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(m.opts.Dir, "."+id+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(m.opts.Dir, id+".json"))
}
