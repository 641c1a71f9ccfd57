package reporter

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestHostReportCarriesVersionAndCommit(t *testing.T) {
	t.Parallel()
	r, err := New(Options{Runtime: newFakeRuntime(), DataDir: t.TempDir(), AgentID: "h", Version: "1.2.3", Commit: "abc123"})
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := r.Collect(context.Background())
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"agent_version":"1.2.3"`, `"agent_commit":"abc123"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("host report lacks %s: %s", want, b)
		}
	}
}
