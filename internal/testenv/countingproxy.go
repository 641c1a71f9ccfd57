package testenv

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
)

// CountingProxy serves a registry on another loopback port and counts the
// bytes of blobs it sends, whole or in ranges: what a pull through it
// fetched.
type CountingProxy struct {
	srv  *httptest.Server
	Host string // 127.0.0.1:PORT
	blob atomic.Int64
}

// StartCountingProxy proxies to the registry at host (127.0.0.1:PORT).
func StartCountingProxy(host string) *CountingProxy {
	p := &CountingProxy{}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: host})
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/") {
			resp.Body = &countingBody{ReadCloser: resp.Body, n: &p.blob}
		}
		return nil
	}
	p.srv = httptest.NewServer(proxy)
	p.Host = strings.TrimPrefix(p.srv.URL, "http://")
	return p
}

// BlobBytes is how many bytes of blobs were sent so far.
func (p *CountingProxy) BlobBytes() int64 { return p.blob.Load() }

// Close stops the proxy.
func (p *CountingProxy) Close() { p.srv.Close() }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
