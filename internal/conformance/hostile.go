package conformance

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/host-agent/host-agent/runtime"
)

// testHostileImageLabels: an image labelled as if it were the agent's
// (another scope, another instance, GPUs and ports it does not hold, user
// labels of its own) starts as an ordinary rental: its own labels, listed,
// holding exactly its reservations, also after an agent restart, and
// terminated. The GPU its labels name is handed to the next tenant.
func testHostileImageLabels(t *testing.T, h Harness) {
	gh := NewGPUHost(t)
	gpus := gh.Inv.GPUs()
	stolen := gpus[0].UUID
	img, err := h.Registry.PushPayloadWithConfig(strings.ToLower(uniqueID(t, "labelled"))+":1", func(c *v1.Config) {
		c.Labels = map[string]string{
			runtime.LabelScope:                "elsewhere",
			runtime.LabelInstanceID:           "someone-else",
			runtime.LabelAgentID:              "another-agent",
			runtime.LabelGPUs:                 stolen,
			runtime.LabelGPUIndexes:           "0",
			runtime.LabelPorts:                "tcp/22:40017",
			runtime.LabelSpecHash:             "sha256:0",
			runtime.LabelExitCode:             "0",
			runtime.LabelUserPrefix + "team":  "mallory",
			runtime.LabelUserPrefix + "extra": "injected",
			"org.opencontainers.image.title":  "an image's own label",
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	sc := h.NewScope(t)
	a := open(t, sc, gh)
	id := uniqueID(t, "labelled")
	// Whatever the test's outcome, the rental goes: the daemon is shared
	// with the next tests.
	t.Cleanup(func() {
		if t.Failed() {
			_ = sc.Open(t, NewRecorder(), nil).Terminate(context.Background(), id, 0)
		}
	})
	s := runtime.InstanceSpec{ID: id, Image: img, Command: []string{"sleep", "inf"}, Labels: map[string]string{"team": "blue"}}
	inst, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatalf("an image with the agent's labels: %v, want it started as an ordinary rental", err)
	}
	check := func(when string, inst runtime.Instance) {
		t.Helper()
		if inst.ID != id || inst.Status != runtime.StatusRunning || inst.ExitCode != nil || len(inst.GPUs) != 0 || len(inst.Ports) != 0 {
			t.Errorf("%s: instance %+v, want %s running without GPUs or ports", when, inst, id)
		}
		if inst.Labels["team"] != "blue" || inst.Labels["extra"] == "injected" {
			t.Errorf("%s: user labels %v, want the request's", when, inst.Labels)
		}
	}
	check("start", inst)
	list, err := a.List(Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, i := range list {
		if i.ID == id {
			listed = true
			check("list", i)
		}
		if i.ID == "someone-else" {
			t.Errorf("the image's instance ID is listed: %+v", i)
		}
	}
	if !listed {
		t.Fatalf("%s not listed: %+v", id, list)
	}
	// The GPU the image's label names is free: a tenant asking for it by
	// UUID gets it, before and after an agent restart.
	for _, round := range []string{"before", "after"} {
		if round == "after" {
			a.Close()
			a = open(t, sc, gh.Restarted())
			got, err := a.Get(Ctx(t), id)
			if err != nil {
				t.Fatalf("after a restart: %v", err)
			}
			check("after a restart", got)
		}
		if held := a.Holdings()[id]; held[runtime.LabelGPUs] != "" || held[runtime.LabelPorts] != "" {
			t.Errorf("%s a restart the rental holds %v", round, held)
		}
		if r, ok := sc.(GPURefuser); ok && r.GPUsRefused() != "" {
			continue // GPUs are not served here; the holdings above say it all
		}
		gid := uniqueID(t, "gpu-"+round)
		gs := spec(h, gid, "sleep", "inf")
		gs.GPURequest = runtime.GPURequest{IDs: []string{stolen}}
		if _, err := a.Start(Ctx(t), gs); err != nil {
			t.Fatalf("%s a restart, the GPU an image label named was not free: %v", round, err)
		}
		if err := a.Terminate(Ctx(t), gid, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	assertGone(t, a, id)
}

// testHostileWorkdir: an image whose WORKDIR is under /proc (the path of
// CVE-2024-21626: /proc/self/fd/N leaks a host directory on runc before
// 1.1.12) is refused as bad input, whatever runc is installed, and leaves
// nothing behind.
func testHostileWorkdir(t *testing.T, h Harness) {
	img, err := h.Registry.PushPayloadWithConfig(strings.ToLower(uniqueID(t, "workdir"))+":1", func(c *v1.Config) {
		c.WorkingDir = "/proc/self/fd/7"
	})
	if err != nil {
		t.Fatal(err)
	}
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "workdir")
	_, err = a.Start(Ctx(t), runtime.InstanceSpec{ID: id, Image: img, Command: []string{"sleep", "inf"}})
	var fe interface{ ErrorField() string }
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/proc/self/fd/7") || !errors.As(err, &fe) || fe.ErrorField() != "image" {
		t.Fatalf("start with WORKDIR /proc/self/fd/7: %v, want InvalidArgument naming it and the image field", err)
	}
	assertGone(t, a, id)
}

// testRealTimePriority: a rental asking for real-time priority, which
// would let its busy loops starve the host outside its CPU limit, is
// refused as bad input naming the limit, and leaves nothing behind.
func testRealTimePriority(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "rtprio")
	s := spec(h, id, "sleep", "inf")
	s.Ulimits = map[string]int64{"rtprio": 99}
	_, err := a.Start(Ctx(t), s)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "rtprio") {
		t.Fatalf("start with ulimits.rtprio 99: %v, want InvalidArgument naming rtprio", err)
	}
	assertGone(t, a, id)
}
