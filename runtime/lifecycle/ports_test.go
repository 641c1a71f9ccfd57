package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

func portSpec(id string, ports ...uint16) runtime.InstanceSpec {
	s := runtime.InstanceSpec{ID: id, Image: "image-a"}
	for _, p := range ports {
		s.Ports = append(s.Ports, hostport.PortRequest{ContainerPort: p, Protocol: hostport.TCP})
	}
	return s
}

// Ports are reserved before the back end creates anything, recorded in the
// container's labels, answered on a repeated start unchanged, rebuilt from
// the labels by a restarted agent (which then never hands them out again),
// and released once the container is gone.
func TestPortsReservedRecordedRestoredReleased(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	be := newFakeBackend(nil)
	gpus := dgxa100.New()
	l, _ := newLifecycle(t, be, gpus)

	a, err := l.Start(ctx, portSpec("a", 22, 8888))
	if err != nil {
		t.Fatal(err)
	}
	got := runtime.PortsFromLabels(a.AgentLabels)
	if len(got) != 2 || got[0].ContainerPort != 22 || got[1].ContainerPort != 8888 || !testPortRange.Contains(got[0].HostPort) {
		t.Fatalf("recorded ports %v", got)
	}
	again, err := l.Start(ctx, portSpec("a", 22, 8888))
	if err != nil {
		t.Fatal(err)
	}
	if hostport.Format(runtime.PortsFromLabels(again.AgentLabels)) != hostport.Format(got) {
		t.Fatalf("repeated start answers %v, first %v", again.AgentLabels[runtime.LabelPorts], hostport.Format(got))
	}
	if _, err := l.Start(ctx, portSpec("a", 22)); !errdefs.IsConflict(err) {
		t.Fatalf("other ports under the same ID: want a conflict, got %v", err)
	}

	// The agent restarts: a fresh allocator, rebuilt from labels, must not
	// hand a's ports to anyone, whatever the range has left.
	l.Close()
	l, _ = newLifecycle(t, be, gpus)
	defer func() { l.Close() }()
	held := map[uint16]string{}
	for _, m := range got {
		held[m.HostPort] = "a"
	}
	for i := 0; ; i++ {
		id := fmt.Sprintf("b%d", i)
		inst, err := l.Start(ctx, portSpec(id, 80))
		if err != nil {
			var fe interface{ ErrorField() string }
			if !errdefs.IsConflict(err) || !errors.As(err, &fe) || fe.ErrorField() != "ports" || !errors.Is(err, hostport.ErrExhausted) {
				t.Fatalf("range exhausted: want a conflict naming ports, got %v", err)
			}
			if want := testPortRange.Size() - len(got); i != want {
				t.Fatalf("%d instances got a port, want %d", i, want)
			}
			break
		}
		p := runtime.PortsFromLabels(inst.AgentLabels)[0].HostPort
		if o, ok := held[p]; ok {
			t.Fatalf("host port %d handed to %s and %s", p, o, id)
		}
		held[p] = id
	}
	if err := checkSettled(be, l); err != nil {
		t.Fatal(err)
	}
	// Terminating a frees its ports for the next start.
	if err := l.Terminate(ctx, "a", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Start(ctx, portSpec("c", 1, 2)); err != nil {
		t.Fatalf("a's ports are not free after its terminate: %v", err)
	}
	if err := checkSettled(be, l); err != nil {
		t.Fatal(err)
	}
}

// A failed start releases its ports exactly once: a start of another
// instance that took them meanwhile keeps them.
func TestFailedStartReleasesPorts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fail := true
	be := newFakeBackend(func(_ context.Context, step, id string) error {
		if id == "bad" && step == stepStart && fail {
			return errors.New("injected failure")
		}
		return nil
	})
	l, _ := newLifecycle(t, be, dgxa100.New())
	defer l.Close()
	ports := make([]uint16, testPortRange.Size())
	for i := range ports {
		ports[i] = uint16(i + 1)
	}
	if _, err := l.Start(ctx, portSpec("bad", ports...)); err == nil {
		t.Fatal("start did not fail")
	}
	// Every port of the range is free again.
	inst, err := l.Start(ctx, portSpec("good", ports...))
	if err != nil {
		t.Fatalf("ports of the failed start are still held: %v", err)
	}
	if _, err := l.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(runtime.PortsFromLabels(inst.AgentLabels)); n != testPortRange.Size() {
		t.Fatalf("%d ports recorded", n)
	}
	if err := checkSettled(be, l); err != nil {
		t.Fatal(err)
	}
}
