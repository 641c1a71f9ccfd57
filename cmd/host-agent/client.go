package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/joho/godotenv"
)

// defaultTokenFile is where the README's install lines keep the token; the
// CLI reads it when neither AGENT_TOKEN nor AGENT_TOKEN_FILE says otherwise.
const defaultTokenFile = "/var/lib/host-agent/token"

// clientTimeout bounds a client command's request (not a followed stream).
const clientTimeout = 30 * time.Second

// apiClient is the local agent's API as the CLI's commands call it.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
	// tls is the client's TLS configuration, for the /ws dialer.
	tls *tls.Config
}

// clientSettings reads what the CLI needs from the environment and the
// agent's env file (ENV_FILE, else .env in the working directory), the
// environment first, as the agent reads its own configuration.
func clientSettings(lookup func(string) (string, bool)) func(string, string) string {
	envFile := ".env"
	if v, ok := lookup("ENV_FILE"); ok && v != "" {
		envFile = v
	}
	file, _ := godotenv.Read(envFile)
	return func(name, def string) string {
		if v, ok := lookup(name); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
		if v, ok := file[name]; ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
		return def
	}
}

// newAPIClient finds the local agent: HOST_AGENT_URL, else LISTEN_ADDR's
// port on 127.0.0.1 (https when TLS_CERT_FILE is set, trusting exactly that
// certificate), with the token of AGENT_TOKEN or AGENT_TOKEN_FILE (default
// /var/lib/host-agent/token).
func newAPIClient(lookup func(string) (string, bool)) (*apiClient, error) {
	get := clientSettings(lookup)
	certFile := get("TLS_CERT_FILE", "")
	raw := get("HOST_AGENT_URL", "")
	if raw == "" {
		host, port, err := net.SplitHostPort(get("LISTEN_ADDR", ":8080"))
		if err != nil {
			return nil, fmt.Errorf("LISTEN_ADDR: %w (or set HOST_AGENT_URL)", err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		scheme := "http"
		if certFile != "" {
			scheme = "https"
		}
		raw = scheme + "://" + net.JoinHostPort(host, port)
	}
	base, err := url.Parse(raw)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("HOST_AGENT_URL: want http(s)://host:port, got %q", raw)
	}
	token := get("AGENT_TOKEN", "")
	if token == "" {
		path := get("AGENT_TOKEN_FILE", defaultTokenFile)
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("no token: %w (the CLI reads AGENT_TOKEN, or AGENT_TOKEN_FILE, default %s; run it as the agent's user)", err, defaultTokenFile)
		}
		token = strings.TrimSpace(string(b))
	}
	c := &apiClient{base: base, token: token}
	if base.Scheme == "https" {
		if c.tls, err = clientTLS(certFile); err != nil {
			return nil, err
		}
	}
	c.http = &http.Client{Transport: &http.Transport{TLSClientConfig: c.tls, Proxy: nil}}
	return c, nil
}

// clientTLS trusts exactly the agent's own certificate when the CLI can
// read it (the agent's address is 127.0.0.1, which its certificate need not
// name), else the system's roots.
func clientTLS(certFile string) (*tls.Config, error) {
	if certFile == "" {
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("TLS_CERT_FILE %s: no PEM certificate", certFile)
	}
	want := block.Bytes
	if _, err := x509.ParseCertificate(want); err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE %s: %w", certFile, err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Pinned instead of verified by name: checked below.
		InsecureSkipVerify: true, //nolint:gosec
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return errors.New("the agent's certificate is not TLS_CERT_FILE's")
			}
			return nil
		},
	}, nil
}

// apiError is an answer of the agent other than 2xx.
type apiError struct {
	Status int
	Msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("the agent answered %d: %s", e.Status, e.Msg) }

// do sends a request with the token and returns the answer's body, or an
// apiError with the agent's own message.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the agent at %s does not answer: %w", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error string `json:"error"`
			Field string `json:"field"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
			if e.Field != "" {
				msg += " (field " + e.Field + ")"
			}
		}
		return nil, &apiError{Status: resp.StatusCode, Msg: msg}
	}
	return resp, nil
}

// getJSON decodes a GET's answer into out.
func (c *apiClient) getJSON(ctx context.Context, path string, query url.Values, out any) error {
	return c.sendJSON(ctx, http.MethodGet, path, query, nil, out)
}

// sendJSON sends body and decodes the answer into out (nil: discarded).
func (c *apiClient) sendJSON(ctx context.Context, method, path string, query url.Values, body, out any) error {
	resp, err := c.do(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// wsURL is the /ws address with query.
func (c *apiClient) wsURL(query url.Values) string {
	u := *c.base
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
	u.RawQuery = query.Encode()
	return u.String()
}
