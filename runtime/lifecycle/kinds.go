package lifecycle

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// GPUReservations is the ReservationKind of GPUs: it reserves
// spec.GPURequest, hands the GPUs to the back end in spec.GPUs (which it
// injects) and records them in runtime.LabelGPUs and runtime.LabelGPUIndexes.
type GPUReservations struct{ Alloc runtime.GPUAllocator }

var _ runtime.ReservationKind = GPUReservations{}

// Name implements ReservationKind.
func (GPUReservations) Name() string { return "gpus" }

// Reserve implements ReservationKind.
func (g GPUReservations) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	spec.GPUs = nil
	if spec.GPURequest.IsZero() {
		return nil, nil
	}
	gpus, err := g.Alloc.Reserve(spec.ID, spec.GPURequest)
	if err != nil {
		return nil, err
	}
	spec.GPUs = gpus
	return gpuLabels(gpus), nil
}

// Release implements ReservationKind.
func (g GPUReservations) Release(id string) { g.Alloc.Release(id) }

// Restore implements ReservationKind.
func (g GPUReservations) Restore(id string, labels map[string]string) error {
	gpus := runtime.ParseGPULabels(labels[runtime.LabelGPUs], labels[runtime.LabelGPUIndexes])
	if len(gpus) == 0 {
		return nil
	}
	uuids := make([]string, len(gpus))
	for i, d := range gpus {
		uuids[i] = d.UUID
	}
	return g.Alloc.Restore(id, uuids)
}

// Holdings implements ReservationKind.
func (g GPUReservations) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, gpus := range g.Alloc.Holders() {
		if len(gpus) > 0 {
			out[id] = gpuLabels(gpus)
		}
	}
	return out
}

// Records implements ReservationKind.
func (GPUReservations) Records(key string) bool {
	return key == runtime.LabelGPUs || key == runtime.LabelGPUIndexes
}

func gpuLabels(gpus []runtime.GPU) map[string]string {
	u, ix := runtime.FormatGPULabels(gpus)
	return map[string]string{runtime.LabelGPUs: u, runtime.LabelGPUIndexes: ix}
}

// RecordedByKind returns the labels among all that record a reservation of
// kind k. Every kind's labels share the prefix runtime.LabelPrefix + k.Name() + ".",
// except the GPUs', whose labels predate that rule.
func RecordedByKind(k runtime.ReservationKind, all map[string]string) map[string]string {
	out := map[string]string{}
	for key, v := range all {
		if k.Records(key) {
			out[key] = v
		}
	}
	return out
}

// mergeLabels adds src to dst.
func mergeLabels(dst, src map[string]string) { maps.Copy(dst, src) }

// PortReservations is the ReservationKind of published ports: it reserves a
// host port for each of spec.Ports from the allocator's range, hands the
// mappings to the back end in spec.PublishedPorts (which it publishes) and
// records them in runtime.LabelPorts, before anything of the instance is created,
// so that a host port is never handed out twice, across restarts too.
type PortReservations struct{ Alloc *hostport.Allocator }

var _ runtime.ReservationKind = PortReservations{}

// Name implements ReservationKind.
func (PortReservations) Name() string { return "ports" }

// Reserve implements ReservationKind. An exhausted range is a Conflict
// naming the ports field.
func (p PortReservations) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	spec.PublishedPorts = nil
	if len(spec.Ports) == 0 {
		return nil, nil
	}
	m, err := p.Alloc.Reserve(spec.ID, spec.Ports)
	if err != nil {
		return nil, err
	}
	spec.PublishedPorts = m
	return map[string]string{runtime.LabelPorts: hostport.Format(m)}, nil
}

// Release implements ReservationKind.
func (p PortReservations) Release(id string) { p.Alloc.Release(id) }

// Restore implements ReservationKind.
func (p PortReservations) Restore(id string, labels map[string]string) error {
	m, err := hostport.Parse(labels[runtime.LabelPorts])
	if err != nil {
		return fmt.Errorf("label %s: %w", runtime.LabelPorts, err)
	}
	if len(m) == 0 {
		return nil
	}
	return p.Alloc.Restore(id, m)
}

// Holdings implements ReservationKind.
func (p PortReservations) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, m := range p.Alloc.Holders() {
		if len(m) > 0 {
			out[id] = map[string]string{runtime.LabelPorts: hostport.Format(m)}
		}
	}
	return out
}

// Records implements ReservationKind.
func (PortReservations) Records(key string) bool { return key == runtime.LabelPorts }

// VolumeReservations is the ReservationKind of volumes: it attaches
// spec.Volumes, hands the mounts to the back end in spec.VolumeMounts
// (which it bind-mounts read-write) and records the names in runtime.LabelVolumes.
type VolumeReservations struct{ Store runtime.VolumeAttacher }

var _ runtime.ReservationKind = VolumeReservations{}

// Name implements ReservationKind.
func (VolumeReservations) Name() string { return "volumes" }

// Reserve implements ReservationKind. Errors name the field of the
// offending volume.
func (v VolumeReservations) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	spec.VolumeMounts = nil
	if len(spec.Volumes) == 0 {
		return nil, nil
	}
	if field, err := runtime.ValidateVolumeRequests(spec.Volumes); err != nil {
		return nil, runtime.FieldError(field, err.Error())
	}
	m, err := v.Store.Attach(spec.ID, spec.Volumes)
	if err != nil {
		return nil, err
	}
	spec.VolumeMounts = m
	return volumeLabels(namesOf(m)), nil
}

// Release implements ReservationKind.
func (v VolumeReservations) Release(id string) { v.Store.Detach(id) }

// Restore implements ReservationKind.
func (v VolumeReservations) Restore(id string, labels map[string]string) error {
	names := runtime.ParseVolumeLabel(labels[runtime.LabelVolumes])
	if len(names) == 0 {
		return nil
	}
	return v.Store.RestoreAttachment(id, names)
}

// Holdings implements ReservationKind.
func (v VolumeReservations) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, names := range v.Store.Attachments() {
		if len(names) > 0 {
			out[id] = volumeLabels(names)
		}
	}
	return out
}

// Records implements ReservationKind.
func (VolumeReservations) Records(key string) bool { return key == runtime.LabelVolumes }

func volumeLabels(names []string) map[string]string {
	names = slices.Clone(names)
	slices.Sort(names)
	return map[string]string{runtime.LabelVolumes: strings.Join(names, ",")}
}

func namesOf(m []runtime.VolumeMount) []string {
	out := make([]string, len(m))
	for i, v := range m {
		out[i] = v.Name
	}
	return out
}

// BandwidthDefaults is the admission step that gives a rental naming no
// bandwidth limit the host's default (RENTAL_EGRESS_MBPS,
// RENTAL_INGRESS_MBPS). It reserves nothing; list it after the kinds that
// fill spec.Limits, which it completes.
type BandwidthDefaults struct{ runtime.Bandwidth }

var _ runtime.Admission = BandwidthDefaults{}

// Name implements runtime.Admission.
func (BandwidthDefaults) Name() string { return "bandwidth" }

// Reserve implements runtime.Admission.
func (d BandwidthDefaults) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	if spec.Limits == (runtime.Resources{}) {
		spec.Limits = spec.Resources
	}
	if spec.Limits.EgressMbps <= 0 {
		spec.Limits.EgressMbps = max(d.EgressMbps, 0)
	}
	if spec.Limits.IngressMbps <= 0 {
		spec.Limits.IngressMbps = max(d.IngressMbps, 0)
	}
	return nil, nil
}
