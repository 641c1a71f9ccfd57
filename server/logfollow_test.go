package server

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// followRuntime follows a log the test feeds line by line.
type followRuntime struct {
	*fakeRuntime
	lines chan string
	from  chan int64
}

func (f *followRuntime) FollowLogs(ctx context.Context, id string, from int64, tail int, maxBytes int64, w io.Writer, flush func()) (int64, bool, error) {
	f.from <- from
	var n int64
	for line := range f.lines {
		k, _ := io.WriteString(w, line)
		n += int64(k)
		flush()
	}
	return from + n, false, nil
}

func (f *followRuntime) LogOffset(context.Context, string) (int64, error) { return 7, nil }

func TestFollowLogsStreamsChunked(t *testing.T) {
	t.Parallel()
	rt := &followRuntime{
		fakeRuntime: &fakeRuntime{get: func(_ context.Context, id string) (runtime.Instance, error) {
			return runtime.Instance{ID: id, Status: runtime.StatusRunning}, nil
		}},
		lines: make(chan string), from: make(chan int64, 1),
	}
	ts := newTestServer(t, rt)
	srv := httptest.NewServer(ts.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/instances/a/logs?follow=true&since=100", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("status %d, transfer encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	if from := <-rt.from; from != 100 {
		t.Errorf("since=100 reached the runtime as %d", from)
	}
	br := bufio.NewReader(resp.Body)
	// Each line arrives while the request is still open.
	for _, line := range []string{"one\n", "two\n"} {
		rt.lines <- line
		got, err := br.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("read %q, %v; want %q", got, err, line)
		}
	}
	close(rt.lines)
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("after the end: %q", rest)
	}
	if off := resp.Trailer.Get(headerLogOffset); off != "108" {
		t.Errorf("trailer %s = %q, want 108", headerLogOffset, off)
	}
}

func TestLogsQueryValidation(t *testing.T) {
	t.Parallel()
	rt := &followRuntime{fakeRuntime: &fakeRuntime{
		get:  func(_ context.Context, id string) (runtime.Instance, error) { return runtime.Instance{ID: id}, nil },
		logs: func(context.Context, string, int) ([]byte, error) { return []byte("x\n"), nil },
	}}
	ts := newTestServer(t, rt)
	for query, field := range map[string]string{
		"follow=yes":                  "follow",
		"since=5":                     "since",
		"follow=true&since=-1":        "since",
		"follow=true&since=5&tail=10": "since",
	} {
		rec := ts.do(t, http.MethodGet, "/instances/a/logs?"+query, "")
		if rec.Code != http.StatusBadRequest || errorBody(t, rec).Field != field {
			t.Errorf("%s: %d %s", query, rec.Code, rec.Body)
		}
	}
	rec := ts.do(t, http.MethodGet, "/instances/a/logs?tail=5", "")
	if rec.Code != http.StatusOK || rec.Header().Get(headerLogOffset) != "7" {
		t.Errorf("plain logs: %d %v", rec.Code, rec.Header())
	}
}
