// Package volume keeps a host's volumes: directories of a bounded size,
// each owned by one tenant, that outlive the rentals they are attached to.
// A Store lives under one directory (VOLUME_DIR, by default
// STATE_DIR/volumes), where every volume keeps its metadata next to its
// data, so that the store is rebuilt from disk when the agent starts.
//
// A volume's size is enforced by the file system: an XFS project quota
// where the store's directory lies on XFS mounted with prjquota, else an
// ext4 file system in a sparse image file, loop-mounted under the volume's
// directory.
//
// cmd/host-agent opens the Store; the server's /volumes routes create,
// list and delete volumes through it, and lifecycle.VolumeReservations
// (a reservation kind internal/agent builds) attaches them to rentals. It imports runtime for the attachment types
// and nothing above it.
package volume
