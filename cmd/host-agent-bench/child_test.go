package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
)

// publishTo hands the GPU events it is told to a channel.
type publishTo chan gpu.Event

func (p publishTo) Publish(e gpu.Event) { p <- e }

// The bench's mock DGX A100 has NVML event sets: the agent's GPU health
// watch runs on it rather than stopping at once, and an Xid injected on
// one of its GPUs takes that GPU out of service.
func TestBenchGPUsAreHealthWatched(t *testing.T) {
	t.Parallel()
	const n, bad = 200, 150
	nvmlMock, events := benchNVML(n)
	inv, err := gpu.Open(nvmlMock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inv.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := make(publishTo, 16)
	watched := make(chan error, 1)
	go func() { watched <- inv.WatchHealth(ctx, pub) }()
	if err := events.Inject(ctx, bad, 79, false); err != nil {
		t.Fatal(err)
	}
	uuid := inv.GPUs()[bad].UUID
	for health := false; !health; {
		select {
		case e := <-pub:
			if e.Type != gpu.EventHealth {
				continue
			}
			if e.GPU != uuid || e.Status != gpu.StatusUnhealthy {
				t.Fatalf("health event %+v, want GPU %d (%s) unhealthy", e, bad, uuid)
			}
			health = true
		case err := <-watched:
			t.Fatalf("the health watch stopped: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("no health event a minute after Xid 79")
		}
	}
	if g := inv.GPUs()[bad]; g.Healthy {
		t.Errorf("GPU %d is in service after Xid 79", bad)
	}
	select {
	case err := <-watched:
		t.Fatalf("the health watch stopped while the agent runs: %v", err)
	default:
	}
	cancel()
	select {
	case err := <-watched:
		if err != nil {
			t.Fatalf("the health watch ended with %v, want nil when its context ends", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the health watch did not end with its context")
	}
}
