package containerd

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/moby/sys/user"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultUnixEnv is the PATH an image without an environment gets, as in
// containerd and Docker.
var defaultUnixEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// layeredImage is what the user lookup needs of an image: its manifest's
// layers in the content store. containerd's client Image has it.
type layeredImage interface {
	oci.Image
	Target() ocispec.Descriptor
	Platform() platforms.MatchComparer
}

// withImageConfigArgs is oci.WithImageConfigArgs without its rootfs mount.
// containerd's own option resolves the image's user and supplementary groups
// by mounting the container's snapshot in the caller's mount namespace: that
// fails when the agent runs in a container of its own (the snapshot's
// directories are the host's) and would need CAP_SYS_ADMIN there. This one
// reads /etc/passwd and /etc/group from the image's layers in the content
// store instead, and only when the user is not already numeric. (An image
// a lazy snapshotter mounted has no layers there: see snapshotImage.)
func withImageConfigArgs(img oci.Image, args []string) oci.SpecOpts {
	return func(ctx context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		cfg, err := readImageConfig(ctx, img)
		if err != nil {
			return err
		}
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		defaults := cfg.Config.Env
		if len(defaults) == 0 {
			defaults = defaultUnixEnv
		}
		s.Process.Env = mergeEnv(defaults, s.Process.Env)
		cmd := cfg.Config.Cmd
		if len(args) > 0 {
			cmd = args
		}
		s.Process.Args = append(append([]string{}, cfg.Config.Entrypoint...), cmd...)
		if err := backend.ImageWorkingDirError(cfg.Config.WorkingDir); err != nil {
			return err
		}
		s.Process.Cwd = cfg.Config.WorkingDir
		if s.Process.Cwd == "" {
			s.Process.Cwd = "/"
		}
		u, err := resolveImageUser(ctx, img, cfg.Config.User)
		if err != nil {
			return err
		}
		s.Process.User = u
		return nil
	}
}

func readImageConfig(ctx context.Context, img oci.Image) (ocispec.Image, error) {
	var cfg ocispec.Image
	desc, err := img.Config(ctx)
	if err != nil {
		return cfg, err
	}
	if !images.IsConfigType(desc.MediaType) {
		return cfg, fmt.Errorf("unknown image config media type %s", desc.MediaType)
	}
	b, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		return cfg, fmt.Errorf("read image config: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("parse image config: %w", err)
	}
	return cfg, nil
}

// mergeEnv returns the image's environment with the request's variables
// replacing those of the same name, the image's order kept.
func mergeEnv(image, request []string) []string {
	out := append([]string{}, image...)
	index := make(map[string]int, len(out))
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, kv := range request {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// resolveImageUser turns the image's USER ("", uid, name, uid:gid,
// name:group...) into ids the way Docker and runc do: a name is looked up in
// the image's /etc/passwd, a group name in /etc/group, and a user given
// without a group gets its primary group and the groups listing it.
func resolveImageUser(ctx context.Context, img oci.Image, spec string) (specs.User, error) {
	if spec == "" {
		return specs.User{UID: 0, GID: 0}, nil
	}
	if uid, gid, ok := numericUser(spec); ok {
		// Both given as numbers: nothing to look up (an explicit group
		// also means no supplementary groups).
		return specs.User{UID: uid, GID: gid}, nil
	}
	li, ok := img.(layeredImage)
	if !ok {
		return specs.User{}, fmt.Errorf("image user %q: cannot read the image's layers to look it up: %w", spec, errdefs.ErrNotImplemented)
	}
	files, err := readImageFiles(ctx, li, "etc/passwd", "etc/group")
	if err != nil {
		return specs.User{}, fmt.Errorf("image user %q: %w", spec, err)
	}
	var passwd, group io.Reader
	if b, ok := files["etc/passwd"]; ok {
		passwd = bytes.NewReader(b)
	}
	if b, ok := files["etc/group"]; ok {
		group = bytes.NewReader(b)
	}
	eu, err := user.GetExecUser(spec, &user.ExecUser{}, passwd, group)
	if err != nil {
		return specs.User{}, fmt.Errorf("image user %q: %w: %w", spec, errdefs.ErrInvalidArgument, err)
	}
	u := specs.User{UID: uint32(eu.Uid), GID: uint32(eu.Gid)}
	for _, g := range eu.Sgids {
		if g != eu.Gid {
			u.AdditionalGids = append(u.AdditionalGids, uint32(g))
		}
	}
	return u, nil
}

// numericUser parses "uid:gid" with both parts numeric.
func numericUser(spec string) (uid, gid uint32, ok bool) {
	us, gs, found := strings.Cut(spec, ":")
	if !found {
		return 0, 0, false
	}
	u, err1 := strconv.ParseUint(us, 10, 32)
	g, err2 := strconv.ParseUint(gs, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint32(u), uint32(g), true
}

// maxImageFile bounds what is read of one file, so a hostile image cannot
// make the agent hold gigabytes in memory.
const maxImageFile = 4 << 20

// readImageFiles returns the named files (paths relative to the root, no
// leading slash) as the image's merged file system shows them, read from the
// layer blobs, topmost first, stopping once every name is settled. A file
// deleted by a whiteout, or absent, is missing from the result.
func readImageFiles(ctx context.Context, img layeredImage, names ...string) (map[string][]byte, error) {
	manifest, err := images.Manifest(ctx, img.ContentStore(), img.Target(), img.Platform())
	if err != nil {
		return nil, fmt.Errorf("read image manifest: %w", err)
	}
	found := map[string][]byte{}
	settled := map[string]bool{}
	for i := len(manifest.Layers) - 1; i >= 0 && len(settled) < len(names); i-- {
		err := scanLayer(ctx, img.ContentStore(), manifest.Layers[i], names, found, settled)
		if errors.Is(err, errLayerNotLocal) {
			// Mounted from the registry by a lazy snapshotter: read
			// from its mount instead.
			if rf, ok := img.(rootFSReader); ok {
				return rf.readRootFSFiles(ctx, names...)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return found, nil
}

// scanLayer looks for the still unsettled names in one layer: a regular file
// settles a name with its content; a whiteout of it, or of a directory
// above it, or an opaque directory above it, settles it as absent.
func scanLayer(ctx context.Context, cs content.Store, desc ocispec.Descriptor, names []string, found map[string][]byte, settled map[string]bool) error {
	ra, err := cs.ReaderAt(ctx, desc)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("open layer %s: %w: %w", desc.Digest, errLayerNotLocal, err)
	}
	if err != nil {
		return fmt.Errorf("open layer %s: %w", desc.Digest, err)
	}
	defer ra.Close()
	rd, err := compression.DecompressStream(content.NewReader(ra))
	if err != nil {
		return fmt.Errorf("decompress layer %s: %w", desc.Digest, err)
	}
	defer rd.Close()
	inLayer := map[string]bool{}
	hidden := map[string]bool{}
	tr := tar.NewReader(rd)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer %s: %w", desc.Digest, err)
		}
		p := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		for _, n := range names {
			if settled[n] || inLayer[n] {
				continue
			}
			switch {
			case p == n && (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA):
				b, err := io.ReadAll(io.LimitReader(tr, maxImageFile+1))
				if err != nil {
					return fmt.Errorf("read %s from layer %s: %w", n, desc.Digest, err)
				}
				if len(b) > maxImageFile {
					return fmt.Errorf("%s in layer %s is over %d bytes", n, desc.Digest, maxImageFile)
				}
				found[n], inLayer[n] = b, true
			case p == n:
				// A link or anything else: not followed, the file counts as
				// absent rather than read from somewhere unexpected.
				inLayer[n] = true
			case strings.HasPrefix(base, ".wh.") && covers(path.Join(dir, strings.TrimPrefix(base, ".wh.")), n):
				inLayer[n] = true
			case base == ".wh..wh..opq" && covers(dir, n):
				// An opaque directory hides the lower layers' entries, but a
				// file of this layer in it still counts.
				hidden[n] = true
			}
		}
	}
	for _, n := range names {
		if inLayer[n] || hidden[n] {
			settled[n] = true
		}
	}
	return nil
}

// covers says whether removing p removes name.
func covers(p, name string) bool {
	return p == "" || p == "." || name == p || strings.HasPrefix(name, p+"/")
}
