package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// Bounds of a volume.
const (
	// MaxSizeGB bounds a volume's size.
	MaxSizeGB = 64 << 10
	// gib is what size_gb counts in.
	gib = int64(1) << 30
)

// Files of a volume's directory.
const (
	metaFile  = "volume.json"
	imageFile = "image.ext4"
	dataDir   = "data"
)

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	ownerRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$`)
)

// ValidateName says why name is not a volume's name, or returns nil: 1 to
// 63 letters, digits, '_', '.' and '-', starting with a letter or digit.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return errors.New("must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit")
	}
	return nil
}

// ValidateOwner says why owner is not a volume's owner, or returns nil: 1
// to 128 letters, digits, '_', '.', '@', ':' and '-', starting with a
// letter or digit.
func ValidateOwner(owner string) error {
	if !ownerRE.MatchString(owner) {
		return errors.New("must be 1 to 128 letters, digits, '_', '.', '@', ':' or '-', starting with a letter or digit")
	}
	return nil
}

// Spec asks for a volume.
type Spec struct {
	Name   string
	Owner  string
	SizeGB int64
}

// Validate checks every field, naming the first one that is wrong.
func (s Spec) Validate() error {
	if err := ValidateName(s.Name); err != nil {
		return fieldErr("name", errdefs.ErrInvalidArgument, "%v", err)
	}
	if err := ValidateOwner(s.Owner); err != nil {
		return fieldErr("owner", errdefs.ErrInvalidArgument, "%v", err)
	}
	if s.SizeGB < 1 || s.SizeGB > MaxSizeGB {
		return fieldErr("size_gb", errdefs.ErrInvalidArgument, "must be between 1 and %d", MaxSizeGB)
	}
	return nil
}

// Volume is a volume as the store reports it.
type Volume struct {
	Name      string
	Owner     string
	SizeGB    int64
	CreatedAt time.Time
	// UsedBytes is what its files take; -1 when it could not be read.
	UsedBytes int64
	// AttachedTo is the instance holding it, or "".
	AttachedTo string
	// Path is the directory bind-mounted into rentals.
	Path string
}

// meta is what volume.json holds.
type meta struct {
	Name      string    `json:"name"`
	Owner     string    `json:"owner"`
	SizeGB    int64     `json:"size_gb"`
	CreatedAt time.Time `json:"created_at"`
	// Backing is how the size is enforced: "loop" or "xfs-project".
	Backing string `json:"backing"`
	// ProjectID is the XFS project of an "xfs-project" volume.
	ProjectID uint32 `json:"project_id,omitempty"`
}

// Options configure a Store.
type Options struct {
	// Dir holds the volumes; created when missing.
	Dir    string
	Logger *slog.Logger
	// Promised is what the same file system owes others and has not
	// handed out yet (rentals' disk limits not yet written, where Dir
	// shares the disk of their writable layers); a new volume must fit
	// beside it. Nil: nothing.
	Promised func() int64
}

// Store keeps the volumes of one directory and which rental holds each.
// Attachments live in memory only: the Lifecycle restores them from the
// containers' labels (lifecycle.VolumeReservations).
type Store struct {
	dir   string
	log   *slog.Logger
	quota *projectQuota // nil: loop-mounted image files
	// promised is Options.Promised.
	promised func() int64

	mu       sync.Mutex
	vols     map[string]meta
	attached map[string]string // volume name -> instance ID
}

var _ runtime.VolumeAttacher = (*Store)(nil)

// Open opens the store in opts.Dir and rebuilds it from disk: every
// volume's metadata is read back and its image file mounted again where it
// is not (after a reboot, say). A directory left without metadata by a
// create cut short is removed.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Dir == "" {
		return nil, errors.New("volume store: no directory")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("volume store: %w", err)
	}
	dir, err := filepath.EvalSymlinks(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("volume store: %w", err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("volume store: %w", err)
	}
	s := &Store{dir: dir, log: opts.Logger.With("component", "volumes"), vols: map[string]meta{}, attached: map[string]string{},
		promised: opts.Promised}
	q, why := detectProjectQuota(dir)
	if q != nil {
		s.quota = q
		s.log.Info("volume sizes enforced by XFS project quotas", "dir", dir, "mount", q.mountPoint)
	} else {
		s.log.Info("volume sizes enforced by loop-mounted ext4 image files", "dir", dir, "why_not_xfs_quota", why)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("volume store: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		if err := s.load(ctx, e.Name()); err != nil {
			s.log.Error("volume not restored", "volume", e.Name(), "error", err)
		}
	}
	return s, nil
}

// Backing says how volume sizes are enforced: "xfs-project" or "loop".
func (s *Store) Backing() string {
	if s.quota != nil {
		return backingXFS
	}
	return backingLoop
}

const (
	backingLoop = "loop"
	backingXFS  = "xfs-project"
)

func (s *Store) volDir(name string) string { return filepath.Join(s.dir, name) }

// Path is the directory of volume name that rentals mount.
func (s *Store) Path(name string) string { return filepath.Join(s.dir, name, dataDir) }

// load reads one volume back and makes it usable.
func (s *Store) load(ctx context.Context, name string) error {
	b, err := os.ReadFile(filepath.Join(s.volDir(name), metaFile))
	if errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing a volume whose creation did not finish", "volume", name)
		return s.remove(ctx, meta{Name: name, Backing: s.Backing()})
	}
	if err != nil {
		return err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%s: %w", metaFile, err)
	}
	if m.Name != name {
		return fmt.Errorf("%s names %q", metaFile, m.Name)
	}
	switch m.Backing {
	case backingLoop:
	case backingXFS:
		if s.quota == nil {
			return errors.New("an XFS project-quota volume, but the store's file system has no project quotas")
		}
		if err := s.quota.apply(ctx, s.Path(name), m.ProjectID, m.SizeGB*gib); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown backing %q", m.Backing)
	}
	if err := s.ensureMounted(ctx, m); err != nil {
		return err
	}
	s.vols[name] = m
	return nil
}

// Create makes a volume. Asking again for a volume exactly as it is
// answers it with created false; a volume of that name with another owner
// or size is a Conflict.
func (s *Store) Create(ctx context.Context, spec Spec) (v Volume, created bool, err error) {
	if err := spec.Validate(); err != nil {
		return Volume{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.vols[spec.Name]; ok {
		if m.Owner != spec.Owner || m.SizeGB != spec.SizeGB {
			return Volume{}, false, fieldErr("name", errdefs.ErrConflict, "volume %q already exists with another owner or size", spec.Name)
		}
		return s.volume(m), false, nil
	}
	if _, err := os.Lstat(s.volDir(spec.Name)); !errors.Is(err, os.ErrNotExist) {
		// A volume the store could not read back at start (see the
		// log): its data is not the store's to remove.
		return Volume{}, false, fieldErr("name", errdefs.ErrConflict,
			"%s exists in the volume directory but is not a volume the agent could read back; see its log", spec.Name)
	}
	if err := s.admit(spec.SizeGB * gib); err != nil {
		return Volume{}, false, err
	}
	m := meta{Name: spec.Name, Owner: spec.Owner, SizeGB: spec.SizeGB, CreatedAt: time.Now().UTC(), Backing: s.Backing()}
	if err := s.make(ctx, &m); err != nil {
		if rerr := s.remove(context.WithoutCancel(ctx), m); rerr != nil {
			s.log.Error("remove a volume whose creation failed", "volume", m.Name, "error", rerr)
		}
		return Volume{}, false, fmt.Errorf("create volume %q: %w", spec.Name, err)
	}
	s.vols[m.Name] = m
	s.log.Info("volume created", "volume", m.Name, "owner", m.Owner, "size_gb", m.SizeGB, "backing", m.Backing)
	return s.volume(m), true, nil
}

// make lays volume m out on disk, its metadata last: a directory without
// it is a creation cut short.
func (s *Store) make(ctx context.Context, m *meta) error {
	dir := s.volDir(m.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(s.Path(m.Name), 0o755); err != nil {
		return err
	}
	switch m.Backing {
	case backingLoop:
		if err := makeImage(ctx, filepath.Join(dir, imageFile), m.SizeGB*gib); err != nil {
			return err
		}
	case backingXFS:
		m.ProjectID = s.nextProjectID()
		if err := s.quota.apply(ctx, s.Path(m.Name), m.ProjectID, m.SizeGB*gib); err != nil {
			return err
		}
	}
	if err := s.ensureMounted(ctx, *m); err != nil {
		return err
	}
	// Any user of the tenant's image may write it: only its owner's
	// rentals ever see it, and the store's directory is root's alone.
	if err := os.Chmod(s.Path(m.Name), 0o777); err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, metaFile), append(b, '\n'))
}

// admit refuses a volume of size bytes that the store's file system could
// not hold once every volume is full (image files are sparse) and every
// rental sharing the disk has written up to its limit.
func (s *Store) admit(size int64) error {
	free, err := freeBytes(s.dir)
	if err != nil {
		return fmt.Errorf("read free space of %s: %w", s.dir, err)
	}
	promised := s.promisedLocked()
	var rentals int64
	if s.promised != nil {
		rentals = s.promised()
	}
	if free-promised-rentals < size {
		return fieldErr("size_gb", errdefs.ErrResourceExhausted,
			"%d GiB do not fit: %d GiB free on the volumes' file system, %d GiB of it promised to existing volumes and %d GiB to rentals' disk limits",
			size/gib, free/gib, promised/gib, rentals/gib)
	}
	return nil
}

// Promised is what the volumes may still write: their sizes less what
// they already take of the file system. Rentals' disk limits on the same
// file system keep it free (runtime/disk's Limits.Promised).
func (s *Store) Promised() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.promisedLocked()
}

func (s *Store) promisedLocked() int64 {
	var promised int64
	for name, m := range s.vols {
		promised += max(0, m.SizeGB*gib-s.allocated(name))
	}
	return promised
}

// allocated is what volume name already takes of the file system.
func (s *Store) allocated(name string) int64 {
	if s.quota != nil {
		return max(0, usedBytes(s.Path(name), true))
	}
	return allocatedBytes(filepath.Join(s.volDir(name), imageFile))
}

func (s *Store) nextProjectID() uint32 {
	id := uint32(projectIDBase)
	for _, m := range s.vols {
		if m.ProjectID >= id {
			id = m.ProjectID + 1
		}
	}
	return id
}

// Delete removes a volume and its data. A volume attached to an instance
// is a Conflict; an unknown one NotFound.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return fieldErr("name", errdefs.ErrInvalidArgument, "%v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.vols[name]
	if !ok {
		return fmt.Errorf("volume %q: %w", name, errdefs.ErrNotFound)
	}
	if id := s.attached[name]; id != "" {
		return fieldErr("name", errdefs.ErrConflict, "volume %q is attached to instance %q", name, id)
	}
	if err := s.remove(ctx, m); err != nil {
		return fmt.Errorf("delete volume %q: %w", name, err)
	}
	delete(s.vols, name)
	s.log.Info("volume deleted", "volume", name, "owner", m.Owner)
	return nil
}

// remove unmounts volume m and removes its directory, data and all.
func (s *Store) remove(ctx context.Context, m meta) error {
	data := s.Path(m.Name)
	if m.Backing == backingXFS && s.quota != nil && m.ProjectID != 0 {
		if err := s.quota.clear(ctx, m.ProjectID); err != nil {
			s.log.Warn("clear the project quota of a removed volume", "volume", m.Name, "error", err)
		}
	}
	mounted, err := isMountPoint(data)
	if err != nil {
		return err
	}
	if mounted {
		if err := unmount(ctx, data); err != nil {
			return err
		}
	}
	return os.RemoveAll(s.volDir(m.Name))
}

// List reports every volume, by name.
func (s *Store) List(ctx context.Context) []Volume {
	s.mu.Lock()
	out := make([]Volume, 0, len(s.vols))
	for _, name := range slices.Sorted(maps.Keys(s.vols)) {
		out = append(out, s.volume(s.vols[name]))
	}
	s.mu.Unlock()
	// Read outside the lock: a large volume's walk takes a while.
	for i := range out {
		if ctx.Err() != nil {
			out[i].UsedBytes = -1
			continue
		}
		out[i].UsedBytes = usedBytes(out[i].Path, s.quota != nil)
	}
	return out
}

// volume reports m without its usage; s.mu is held.
func (s *Store) volume(m meta) Volume {
	return Volume{Name: m.Name, Owner: m.Owner, SizeGB: m.SizeGB, CreatedAt: m.CreatedAt,
		AttachedTo: s.attached[m.Name], Path: s.Path(m.Name), UsedBytes: -1}
}

// Attach implements runtime.VolumeAttacher: every volume of reqs is
// attached to instanceID, or none. Errors name the offending request's
// field (volumes[i].name or volumes[i].owner).
func (s *Store) Attach(instanceID string, reqs []runtime.VolumeRequest) ([]runtime.VolumeMount, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]runtime.VolumeMount, 0, len(reqs))
	for i, r := range reqs {
		m, ok := s.vols[r.Name]
		switch {
		case !ok:
			return nil, fieldErr(fmt.Sprintf("volumes[%d].name", i), errdefs.ErrNotFound, "volume %q does not exist", r.Name)
		case m.Owner != r.Owner:
			return nil, fieldErr(fmt.Sprintf("volumes[%d].owner", i), errdefs.ErrPermissionDenied, "volume %q belongs to another owner", r.Name)
		case s.attached[r.Name] != "" && s.attached[r.Name] != instanceID:
			return nil, fieldErr(fmt.Sprintf("volumes[%d].name", i), errdefs.ErrConflict, "volume %q is attached to instance %q", r.Name, s.attached[r.Name])
		}
		// Unmounted behind the agent's back: mounted again, or the
		// rental would write into the directory beneath, without a
		// limit.
		if err := s.ensureMounted(context.Background(), m); err != nil {
			return nil, fmt.Errorf("volume %q: %w: %w", r.Name, errdefs.ErrUnavailable, err)
		}
		out = append(out, runtime.VolumeMount{Name: r.Name, HostPath: s.Path(r.Name), ContainerPath: r.MountPath})
	}
	for _, r := range reqs {
		s.attached[r.Name] = instanceID
	}
	return out, nil
}

// Detach implements runtime.VolumeAttacher.
func (s *Store) Detach(instanceID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.DeleteFunc(s.attached, func(_, id string) bool { return id == instanceID })
}

// RestoreAttachment implements runtime.VolumeAttacher. A name the store
// does not know is recorded all the same, so that a volume that reappears
// is not handed to a second rental, and reported.
func (s *Store) RestoreAttachment(instanceID string, names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, name := range names {
		if id := s.attached[name]; id != "" && id != instanceID {
			errs = append(errs, fmt.Errorf("volume %q is recorded by instances %q and %q", name, id, instanceID))
			continue
		}
		s.attached[name] = instanceID
		if _, ok := s.vols[name]; !ok {
			errs = append(errs, fmt.Errorf("instance %q records volume %q, which does not exist", instanceID, name))
		}
	}
	return errors.Join(errs...)
}

// Attachments implements runtime.VolumeAttacher.
func (s *Store) Attachments() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for name, id := range s.attached {
		out[id] = append(out[id], name)
	}
	for _, names := range out {
		slices.Sort(names)
	}
	return out
}

// ensureMounted mounts volume m on its data directory, nosuid and nodev,
// unless it is mounted already: its image file, or, under a project quota,
// the directory itself (so that the rentals' bind mounts, which keep the
// flags of their source, are nosuid and nodev on Docker too).
func (s *Store) ensureMounted(ctx context.Context, m meta) error {
	data := s.Path(m.Name)
	mounted, err := isMountPoint(data)
	if err != nil || mounted {
		return err
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	if m.Backing == backingXFS {
		return bindSelf(ctx, data)
	}
	return mountImage(ctx, filepath.Join(s.volDir(m.Name), imageFile), data)
}

// Error is a refusal about one field of a request.
type Error struct {
	Field string
	Msg   string
	kind  error
}

func (e *Error) Error() string { return e.Msg }

// ErrorField names the field.
func (e *Error) ErrorField() string { return e.Field }

// Unwrap gives the errdefs kind.
func (e *Error) Unwrap() error { return e.kind }

func fieldErr(field string, kind error, format string, args ...any) *Error {
	return &Error{Field: field, Msg: fmt.Sprintf(format, args...), kind: kind}
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
