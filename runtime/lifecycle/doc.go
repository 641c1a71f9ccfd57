// Package lifecycle is the one owner of a rental's lifecycle, above every
// runtime back end. Lifecycle implements runtime.Runtime for its callers
// (the API server, the reporter, the self-test, the benchmark) over a back
// end (runtime/containerd, runtime/docker) that it calls for one instance
// at a time.
//
// It owns, for every back end alike: per-instance locking (a start and a
// terminate of one instance never overlap; concurrent terminates share
// one); admission (the instance ID, ulimits, whether ports may be
// published, then every reservation kind in order: GPUs, the host's
// share, host ports, disk limits, volumes, NUMA, the default bandwidth);
// the spec-hash check of a repeated start; the container's labels (who,
// what was asked, the reservations: runtime.RequestLabels, handed to the
// back end in InstanceSpec.ContainerLabels); releasing what a failed start
// or a terminate held; rebuilding reservations from the containers'
// labels at start (Restore) and reconciling them (Reconcile); and the
// pre-pull API (PullImage, Images, RemoveImage). The reservation kinds of
// the contract's own resources live here too (GPUReservations,
// PortReservations, VolumeReservations, BandwidthDefaults); the others
// (runtime/share, runtime/disk, runtime/numa) implement
// runtime.ReservationKind in their own packages.
//
// Who may import it: the agent's builder (internal/agent), the programs
// that assemble an agent, and the test support. No back end imports it:
// a back end implements the contract (package runtime) and shares its
// helpers through runtime/backend.
package lifecycle
