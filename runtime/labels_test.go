package runtime

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// An image's labels under the agent's prefix, merged by a daemon that
// copies every label the container lacks, change nothing the agent reads.
func TestSealLabelsLeavesTheImageNothingToSet(t *testing.T) {
	t.Parallel()
	spec := InstanceSpec{ID: "web-1", Image: "img", Labels: map[string]string{"team": "a"}}
	sent := SealLabels(RentalLabels(spec, "sha256:x", "agent-1", time.Unix(0, 0)), map[string]string{
		LabelScope: "x", LabelGPUs: "GPU-stolen", LabelPorts: "tcp/22:40017", LabelInstanceID: "other",
		LabelUserPrefix + "team": "b", LabelUserPrefix + "owner": "mallory", LabelPrefix + "future": "1",
		"org.opencontainers.image.title": "fine",
	})
	image := map[string]string{LabelScope: "x", LabelGPUs: "GPU-stolen", LabelPorts: "tcp/22:40017", LabelInstanceID: "other",
		LabelUserPrefix + "team": "b", LabelUserPrefix + "owner": "mallory", LabelPrefix + "future": "1", "org.opencontainers.image.title": "fine"}
	// What dockerd makes of it: the image's labels under the container's.
	merged := map[string]string{}
	for k, v := range image {
		merged[k] = v
	}
	for k, v := range sent {
		merged[k] = v
	}
	if p := LabelsProblem(sent, merged); p != "" {
		t.Fatalf("a sealed container differs: %s", p)
	}
	// containerd drops empty labels: absent is empty.
	dropped := map[string]string{}
	for k, v := range merged {
		if v != "" {
			dropped[k] = v
		}
	}
	if p := LabelsProblem(sent, dropped); p != "" {
		t.Fatalf("a container without its empty labels differs: %s", p)
	}
	for k, want := range map[string]string{LabelInstanceID: "web-1", LabelScope: "", LabelGPUs: "", LabelPorts: "", LabelUserPrefix + "team": "a", LabelUserPrefix + "owner": "", LabelPrefix + "future": ""} {
		if merged[k] != want {
			t.Errorf("%s = %q, want %q", k, merged[k], want)
		}
	}
	if g := ParseGPULabels(merged[LabelGPUs], merged[LabelGPUIndexes]); len(g) != 0 {
		t.Errorf("GPUs read back %v", g)
	}
	if u := UserLabels(merged); u["team"] != "a" {
		t.Errorf("user labels %v", u)
	}
	// Unsealed, the image wins where the agent set nothing: refused.
	open := RentalLabels(spec, "sha256:x", "agent-1", time.Unix(0, 0))
	leaked := map[string]string{}
	for k, v := range image {
		leaked[k] = v
	}
	for k, v := range open {
		leaked[k] = v
	}
	p := LabelsProblem(open, leaked)
	for _, want := range []string{LabelScope + `="x"`, LabelGPUs + `="GPU-stolen"`, LabelPorts + `="tcp/22:40017" (want "")`} {
		if !strings.Contains(p, want) {
			t.Errorf("problem %q does not name %s", p, want)
		}
	}
	if strings.Contains(p, "org.opencontainers") {
		t.Errorf("problem %q names a label outside the agent's prefix", p)
	}
	delete(leaked, LabelSpecHash)
	if p := LabelsProblem(open, leaked); !strings.Contains(p, LabelSpecHash+`="" (want "sha256:x")`) {
		t.Errorf("a missing label: %q", p)
	}
}

// TestCreationLabelsFromTheLifecycle: a back end creates a container with
// the labels the Lifecycle assembled plus its agent ID and the time, the
// same labels RentalLabels makes from the spec; a spec without assembled
// labels (a back end used on its own) gets them assembled from itself.
func TestCreationLabelsFromTheLifecycle(t *testing.T) {
	t.Parallel()
	spec := InstanceSpec{ID: "a", Image: "busybox", Labels: map[string]string{"team": "ml"},
		ReservedLabels: map[string]string{LabelGPUs: "GPU-1"}}
	now := time.Unix(1700000000, 0)
	want := RentalLabels(spec, spec.Hash(), "agent-1", now)
	if got := spec.CreationLabels("agent-1", now); !maps.Equal(got, want) {
		t.Errorf("without assembled labels: %v, want %v", got, want)
	}
	spec.ContainerLabels = RequestLabels(spec, spec.Hash())
	got := spec.CreationLabels("agent-1", now)
	if !maps.Equal(got, want) {
		t.Errorf("from the assembled labels: %v, want %v", got, want)
	}
	got[LabelIP] = "x"
	if _, ok := spec.ContainerLabels[LabelIP]; ok {
		t.Error("CreationLabels shares its map with the spec")
	}
}
