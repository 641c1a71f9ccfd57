package containerd

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestTailLines(t *testing.T) {
	t.Parallel()
	var long strings.Builder
	for i := 1; i <= 20000; i++ {
		fmt.Fprintf(&long, "line %d\n", i)
	}
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"empty", "", 5, ""},
		{"fewer lines than asked", "a\nb\n", 5, "a\nb\n"},
		{"last two", "a\nb\nc\n", 2, "b\nc\n"},
		{"no trailing newline", "a\nb\nc", 2, "b\nc"},
		{"one", "a\nb\nc\n", 1, "c\n"},
		{"across chunks", long.String(), 3, "line 19998\nline 19999\nline 20000\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := tailLines(bytes.NewReader([]byte(tc.in)), tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("tail %d of %q = %q, want %q", tc.n, tc.in, got, tc.want)
			}
		})
	}
	if _, err := tailLines(bytes.NewReader(nil), 0); err == nil {
		t.Fatal("tail 0 accepted")
	}
}
