package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial number, and returns it.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "host-agent test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// The key first, then the certificate: the reloader notices the
	// certificate file's change.
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// TestAgentServesTLS runs the agent with a certificate: it answers over
// TLS only, even while containerd is unreachable, and picks up a renewed
// certificate without a restart.
func TestAgentServesTLS(t *testing.T) {
	testenv.Require(t) // root: the agent sets up the rentals' network
	bin := buildAgent(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCert(t, certFile, keyFile, 1)
	addr := freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "AGENT_ID=tls-host", "AGENT_TOKEN=" + e2eToken, "LISTEN_ADDR=" + addr,
		"STATE_DIR=" + t.TempDir(), "CONTAINERD_ADDRESS=" + filepath.Join(dir, "no-containerd.sock"),
		"TLS_CERT_FILE=" + certFile, "TLS_KEY_FILE=" + keyFile}
	out := &syncWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	served := func(path string) (*x509.Certificate, int) {
		t.Helper()
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
		resp, err := client.Get("https://" + addr + path)
		if err != nil {
			return nil, 0
		}
		defer resp.Body.Close()
		return resp.TLS.PeerCertificates[0], resp.StatusCode
	}
	var cert *x509.Certificate
	var status int
	for deadline := time.Now().Add(20 * time.Second); cert == nil && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cert, status = served("/healthz")
	}
	if cert == nil {
		t.Fatalf("no TLS answer; agent output:\n%s", out)
	}
	if !cert.Equal(first) || status != http.StatusOK {
		t.Fatalf("served serial %v with healthz %d; want serial 1 and 200", cert.SerialNumber, status)
	}
	if _, status := served("/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("readyz without containerd = %d, want 503", status)
	}
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP answered 200 on a TLS listener")
		}
	}

	time.Sleep(10 * time.Millisecond) // a later modification time
	writeCert(t, certFile, keyFile, 2)
	if cert, _ = served("/healthz"); cert == nil || cert.SerialNumber.Int64() != 2 {
		t.Fatalf("after renewal the agent serves %v, want serial 2", cert)
	}
}

func TestTLSConfigNeedsBothFiles(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envOf(map[string]string{"AGENT_ID": "a", "AGENT_TOKEN": goodToken, "TLS_CERT_FILE": "/x.pem"}), "/nonexistent/.env")
	if err == nil || err.(*configError).Var != "TLS_CERT_FILE" {
		t.Fatalf("err = %v", err)
	}
	_, err = loadConfig(envOf(map[string]string{"AGENT_ID": "a", "AGENT_TOKEN": goodToken, "TLS_CERT_FILE": "/x.pem", "TLS_KEY_FILE": "/y.pem"}), "/nonexistent/.env")
	if err == nil || err.(*configError).Var != "TLS_CERT_FILE" {
		t.Fatalf("unreadable certificate: err = %v", err)
	}
}

// syncWriter collects a process's output for a failure message.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
