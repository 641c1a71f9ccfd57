package numa

import (
	"reflect"
	"testing"
)

func TestOverlay(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		host []Node
		n    int
		want []Node
	}{
		{"one node, two CPUs", []Node{{ID: 0, CPUList: "0-1", CPUs: 2, MemoryMB: 4096}}, 2, []Node{
			{ID: 0, CPUList: "0", CPUs: 1, MemoryMB: 2048, Mems: "0"},
			{ID: 1, CPUList: "1", CPUs: 1, MemoryMB: 2048, Mems: "0"},
		}},
		{"two nodes, interleaved", []Node{{ID: 0, CPUList: "0-3,8-11", MemoryMB: 1000}, {ID: 1, CPUList: "4-7,12-15", MemoryMB: 1000}}, 2, []Node{
			{ID: 0, CPUList: "0-7", CPUs: 8, MemoryMB: 1000, Mems: "0-1"},
			{ID: 1, CPUList: "8-15", CPUs: 8, MemoryMB: 1000, Mems: "0-1"},
		}},
		{"two nodes, in order", []Node{{ID: 0, CPUList: "0-7", MemoryMB: 1000}, {ID: 1, CPUList: "8-15", MemoryMB: 3000}}, 2, []Node{
			{ID: 0, CPUList: "0-7", CPUs: 8, MemoryMB: 2000, Mems: "0"},
			{ID: 1, CPUList: "8-15", CPUs: 8, MemoryMB: 2000, Mems: "1"},
		}},
		{"three CPUs", []Node{{ID: 0, CPUList: "0-2", MemoryMB: 300}}, 2, []Node{
			{ID: 0, CPUList: "0", CPUs: 1, MemoryMB: 150, Mems: "0"},
			{ID: 1, CPUList: "1-2", CPUs: 2, MemoryMB: 150, Mems: "0"},
		}},
	} {
		got, err := Overlay(tt.host, tt.n)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: Overlay = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	if _, err := Overlay([]Node{{ID: 0, CPUList: "0"}}, 2); err == nil {
		t.Error("two nodes over one CPU: no error")
	}
}
