package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodToken = "0123456789abcdef0123"

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	os.WriteFile(emptyFile, nil, 0o600)
	base := func(extra map[string]string) map[string]string {
		m := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range extra {
			if v == "<unset>" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantVar string // the variable the error must name; "" for success
	}{
		{"defaults", base(nil), ""},
		{"missing agent id", base(map[string]string{"AGENT_ID": "<unset>"}), "AGENT_ID"},
		{"agent id with slash", base(map[string]string{"AGENT_ID": "a/b"}), "AGENT_ID"},
		{"missing token", base(map[string]string{"AGENT_TOKEN": "<unset>"}), "AGENT_TOKEN"},
		{"short token", base(map[string]string{"AGENT_TOKEN": "short"}), "AGENT_TOKEN"},
		{"token file", base(map[string]string{"AGENT_TOKEN": "<unset>", "AGENT_TOKEN_FILE": tokenFile}), ""},
		{"both tokens", base(map[string]string{"AGENT_TOKEN_FILE": tokenFile}), "AGENT_TOKEN"},
		{"unreadable token file", base(map[string]string{"AGENT_TOKEN": "<unset>", "AGENT_TOKEN_FILE": filepath.Join(dir, "nope")}), "AGENT_TOKEN_FILE"},
		{"empty token file", base(map[string]string{"AGENT_TOKEN": "<unset>", "AGENT_TOKEN_FILE": emptyFile}), "AGENT_TOKEN_FILE"},
		{"bad listen", base(map[string]string{"LISTEN_ADDR": "8080"}), "LISTEN_ADDR"},
		{"bad runtime", base(map[string]string{"RUNTIME": "podman"}), "RUNTIME"},
		{"docker", base(map[string]string{"RUNTIME": "docker"}), ""},
		{"containerd", base(map[string]string{"RUNTIME": "containerd"}), ""},
		{"docker tcp host", base(map[string]string{"RUNTIME": "docker", "DOCKER_HOST": "tcp://127.0.0.1:2375"}), ""},
		{"bad docker host", base(map[string]string{"DOCKER_HOST": "/var/run/docker.sock"}), "DOCKER_HOST"},
		{"bad namespace", base(map[string]string{"CONTAINERD_NAMESPACE": "no spaces"}), "CONTAINERD_NAMESPACE"},
		{"relative state dir", base(map[string]string{"STATE_DIR": "state"}), "STATE_DIR"},
		{"bad api url", base(map[string]string{"API_SERVER_URL": "ftp://x"}), "API_SERVER_URL"},
		{"good api url", base(map[string]string{"API_SERVER_URL": "https://central.example/api"}), ""},
		// The token must not travel in clear to another machine.
		{"http api url to another host", base(map[string]string{"API_SERVER_URL": "http://central.example/api"}), "API_SERVER_URL"},
		{"http api url allowed insecure", base(map[string]string{"API_SERVER_URL": "http://central.example/api", "ALLOW_INSECURE_API_SERVER": "true"}), ""},
		{"http api url to loopback", base(map[string]string{"API_SERVER_URL": "http://127.0.0.1:9000/api"}), ""},
		{"http api url to localhost", base(map[string]string{"API_SERVER_URL": "http://localhost:9000"}), ""},
		{"http api url to ::1", base(map[string]string{"API_SERVER_URL": "http://[::1]:9000"}), ""},
		{"bad insecure flag", base(map[string]string{"ALLOW_INSECURE_API_SERVER": "yes"}), "ALLOW_INSECURE_API_SERVER"},
		{"orphan grace", base(map[string]string{"ORPHAN_GRACE": "2m"}), ""},
		{"bad orphan grace", base(map[string]string{"ORPHAN_GRACE": "soon"}), "ORPHAN_GRACE"},
		{"bad log level", base(map[string]string{"LOG_LEVEL": "loud"}), "LOG_LEVEL"},
		{"bad public url", base(map[string]string{"AGENT_PUBLIC_URL": "host:8080"}), "AGENT_PUBLIC_URL"},
		{"bad heartbeat", base(map[string]string{"HEARTBEAT_INTERVAL": "15"}), "HEARTBEAT_INTERVAL"},
		{"too fast heartbeat", base(map[string]string{"HEARTBEAT_INTERVAL": "10ms"}), "HEARTBEAT_INTERVAL"},
		{"good heartbeat", base(map[string]string{"HEARTBEAT_INTERVAL": "2m"}), ""},
		{"relative containerd root", base(map[string]string{"CONTAINERD_ROOT": "x"}), "CONTAINERD_ROOT"},
		{"bad log cap", base(map[string]string{"INSTANCE_LOG_MAX_MB": "0"}), "INSTANCE_LOG_MAX_MB"},
		{"pull layers", base(map[string]string{"PULL_MAX_CONCURRENT_LAYERS": "8", "PULL_CHUNK_MB": "0"}), ""},
		{"no pull layers", base(map[string]string{"PULL_MAX_CONCURRENT_LAYERS": "0"}), "PULL_MAX_CONCURRENT_LAYERS"},
		{"bad pull layers", base(map[string]string{"PULL_MAX_CONCURRENT_LAYERS": "many"}), "PULL_MAX_CONCURRENT_LAYERS"},
		{"too many pull layers", base(map[string]string{"PULL_MAX_CONCURRENT_LAYERS": "33"}), "PULL_MAX_CONCURRENT_LAYERS"},
		{"negative pull chunk", base(map[string]string{"PULL_CHUNK_MB": "-1"}), "PULL_CHUNK_MB"},
		{"huge pull chunk", base(map[string]string{"PULL_CHUNK_MB": "4096"}), "PULL_CHUNK_MB"},
		{"relative cdi dir", base(map[string]string{"CDI_SPEC_DIRS": "/etc/cdi:cdi"}), "CDI_SPEC_DIRS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(envOf(tc.env), filepath.Join(dir, "no.env"))
			if tc.wantVar == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				want := tc.env["RUNTIME"]
				if want == "" {
					want = runtimeAuto
				}
				if c.Token != goodToken || c.Runtime != want {
					t.Fatalf("config = %+v", c)
				}
				return
			}
			var ce *configError
			if !errors.As(err, &ce) || ce.Var != tc.wantVar || !strings.Contains(err.Error(), tc.wantVar) {
				t.Fatalf("err = %v, want one naming %s", err, tc.wantVar)
			}
		})
	}
}

func TestDotEnvRealEnvironmentWins(t *testing.T) {
	t.Parallel()
	dotenv := filepath.Join(t.TempDir(), ".env")
	content := "# agent settings\nAGENT_ID=from-file\nAGENT_TOKEN=\"" + goodToken + "\"\nexport CONTAINERD_NAMESPACE=file-ns\n"
	if err := os.WriteFile(dotenv, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(envOf(map[string]string{"AGENT_ID": "from-env"}), dotenv)
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentID != "from-env" || c.Token != goodToken || c.ContainerdNamespace != "file-ns" {
		t.Fatalf("config = %+v", c)
	}
}

func TestPublicURL(t *testing.T) {
	t.Parallel()
	hostname, _ := os.Hostname()
	for _, tc := range []struct {
		cfg  config
		addr string
		want string
	}{
		{config{PublicURL: "https://gpu-17.example:8443"}, "0.0.0.0:8080", "https://gpu-17.example:8443"},
		{config{}, "127.0.0.1:8080", "http://127.0.0.1:8080"},
		{config{}, "[::]:8080", "http://" + net.JoinHostPort(hostname, "8080")},
		{config{TLSCertFile: "/c.pem"}, "10.1.2.3:8443", "https://10.1.2.3:8443"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := publicURL(tc.cfg, addr); got != tc.want {
			t.Errorf("publicURL(%+v, %s) = %q, want %q", tc.cfg, tc.addr, got, tc.want)
		}
	}
}

// TestSecretFilesMustBePrivate: a token file or .env that group or others
// can read stops the agent with a message naming the file.
func TestSecretFilesMustBePrivate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokenFile, 0o644); err != nil {
		t.Fatal(err)
	}
	env := envOf(map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN_FILE": tokenFile})
	_, err := loadConfig(env, filepath.Join(dir, "no.env"))
	var ce *configError
	if !errors.As(err, &ce) || ce.Var != "AGENT_TOKEN_FILE" || !strings.Contains(err.Error(), tokenFile) || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("token file with mode 0644: err = %v, want one naming AGENT_TOKEN_FILE and %s", err, tokenFile)
	}
	os.Chmod(tokenFile, 0o600)
	if _, err := loadConfig(env, filepath.Join(dir, "no.env")); err != nil {
		t.Fatalf("token file with mode 0600: %v", err)
	}

	apiFile := filepath.Join(dir, "api-token")
	os.WriteFile(apiFile, []byte("central-token-0123456789"), 0o600)
	os.Chmod(apiFile, 0o640)
	_, err = loadConfig(envOf(map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken, "API_SERVER_TOKEN_FILE": apiFile}), filepath.Join(dir, "no.env"))
	if !errors.As(err, &ce) || ce.Var != "API_SERVER_TOKEN_FILE" || !strings.Contains(err.Error(), apiFile) {
		t.Fatalf("API server token file with mode 0640: err = %v", err)
	}

	dotenv := filepath.Join(dir, ".env")
	os.WriteFile(dotenv, []byte("AGENT_ID=host-1\nAGENT_TOKEN="+goodToken+"\n"), 0o600)
	os.Chmod(dotenv, 0o604)
	if _, err := loadConfig(envOf(nil), dotenv); err == nil || !strings.Contains(err.Error(), dotenv) {
		t.Fatalf(".env readable by others: err = %v, want one naming %s", err, dotenv)
	}
	os.Chmod(dotenv, 0o600)
	if _, err := loadConfig(envOf(nil), dotenv); err != nil {
		t.Fatalf(".env with mode 0600: %v", err)
	}
}

// TestAPIServerTokenIsSeparate: the token presented to the central server
// is API_SERVER_TOKEN when set; otherwise the agent's own, flagged so that
// the agent warns.
func TestAPIServerTokenIsSeparate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c, err := loadConfig(envOf(map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken, "API_SERVER_TOKEN": "central-token-0123456789"}), filepath.Join(dir, "no.env"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != goodToken || c.APIServerToken != "central-token-0123456789" || c.APIServerTokenShared {
		t.Fatalf("config = %+v", c)
	}
	c, err = loadConfig(envOf(map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}), filepath.Join(dir, "no.env"))
	if err != nil {
		t.Fatal(err)
	}
	if c.APIServerToken != goodToken || !c.APIServerTokenShared {
		t.Fatalf("config without API_SERVER_TOKEN = %+v", c)
	}
}

// TestEnvFile: ENV_FILE names the file read instead of ./.env (the systemd
// unit points it at /etc/host-agent/env). It is held to the same mode check
// as .env, and a file named explicitly must exist.
func TestEnvFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dotenv := filepath.Join(dir, ".env")
	if err := os.WriteFile(dotenv, []byte("AGENT_ID=from-dotenv\nAGENT_TOKEN="+goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte("AGENT_ID=from-env-file\nAGENT_TOKEN="+goodToken+"\nCONTAINERD_NAMESPACE=file-ns\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	c, err := loadConfig(envOf(map[string]string{"ENV_FILE": envFile}), dotenv)
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentID != "from-env-file" || c.ContainerdNamespace != "file-ns" {
		t.Fatalf("ENV_FILE=%s: AGENT_ID %q, namespace %q; want the named file's values, not .env's", envFile, c.AgentID, c.ContainerdNamespace)
	}
	c, err = loadConfig(envOf(map[string]string{"ENV_FILE": envFile, "AGENT_ID": "from-environment"}), dotenv)
	if err != nil || c.AgentID != "from-environment" {
		t.Fatalf("the real environment must win over ENV_FILE: AGENT_ID %q, err %v", c.AgentID, err)
	}

	if err := os.Chmod(envFile, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = loadConfig(envOf(map[string]string{"ENV_FILE": envFile}), dotenv)
	var ce *configError
	if !errors.As(err, &ce) || ce.Var != "ENV_FILE" || !strings.Contains(err.Error(), envFile) || !strings.Contains(err.Error(), "0640") {
		t.Fatalf("ENV_FILE readable by group: err = %v, want a configError on ENV_FILE naming %s and its mode", err, envFile)
	}

	missing := filepath.Join(dir, "missing")
	_, err = loadConfig(envOf(map[string]string{"ENV_FILE": missing}), dotenv)
	if !errors.As(err, &ce) || ce.Var != "ENV_FILE" || !strings.Contains(err.Error(), missing) {
		t.Fatalf("ENV_FILE naming a missing file: err = %v, want a configError on ENV_FILE naming it", err)
	}
}

// TestSelftestConfigWithEnvFile: `host-agent selftest` reads the same file
// the service does; its stand-in token does not clash with an
// AGENT_TOKEN_FILE set there (the packages' /etc/host-agent/env sets one).
func TestSelftestConfigWithEnvFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte("AGENT_TOKEN_FILE="+tokenFile+"\nCONTAINERD_NAMESPACE=file-ns\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := selftestConfig(envOf(map[string]string{"ENV_FILE": envFile}))
	if err != nil {
		t.Fatalf("selftest with ENV_FILE=%s: %v", envFile, err)
	}
	if c.Token != goodToken || c.ContainerdNamespace != "file-ns" || c.AgentID != "selftest" {
		t.Fatalf("selftest config: token %q, namespace %q, agent %q; want the file's token and namespace", c.Token, c.ContainerdNamespace, c.AgentID)
	}
	// Without any token setting the stand-in still serves.
	if _, err := selftestConfig(envOf(map[string]string{"ENV_FILE": filepath.Join(dir, "none")})); err == nil {
		t.Fatal("selftest with ENV_FILE naming a missing file: no error")
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := selftestConfig(envOf(map[string]string{"ENV_FILE": empty})); err != nil {
		t.Fatalf("selftest with an empty env file: %v", err)
	}
}

// TestMetricsToken: METRICS_TOKEN or METRICS_TOKEN_FILE (private, like the
// agent's token file), never both, never short, never the agent's token.
func TestMetricsToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const metricsToken = "metrics-token-0123456789"
	file := filepath.Join(dir, "metrics-token")
	if err := os.WriteFile(file, []byte(metricsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(extra map[string]string) (config, error) {
		env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range extra {
			env[k] = v
		}
		return loadConfig(envOf(env), filepath.Join(dir, "no.env"))
	}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		want  string // the token, when accepted
		error string // the variable named, when refused
	}{
		{"unset", nil, "", ""},
		{"in the environment", map[string]string{"METRICS_TOKEN": metricsToken}, metricsToken, ""},
		{"in a file", map[string]string{"METRICS_TOKEN_FILE": file}, metricsToken, ""},
		{"both", map[string]string{"METRICS_TOKEN": metricsToken, "METRICS_TOKEN_FILE": file}, "", "METRICS_TOKEN"},
		{"too short", map[string]string{"METRICS_TOKEN": "short"}, "", "METRICS_TOKEN"},
		{"the agent's token", map[string]string{"METRICS_TOKEN": goodToken}, "", "METRICS_TOKEN"},
		{"missing file", map[string]string{"METRICS_TOKEN_FILE": filepath.Join(dir, "none")}, "", "METRICS_TOKEN_FILE"},
	} {
		c, err := load(tc.env)
		var ce *configError
		switch {
		case tc.error == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.error == "" && c.MetricsToken != tc.want:
			t.Errorf("%s: metrics token %q, want %q", tc.name, c.MetricsToken, tc.want)
		case tc.error != "" && (!errors.As(err, &ce) || ce.Var != tc.error):
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.error)
		}
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := load(map[string]string{"METRICS_TOKEN_FILE": file})
	var ce *configError
	if !errors.As(err, &ce) || ce.Var != "METRICS_TOKEN_FILE" || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("metrics token file with mode 0644: err = %v", err)
	}
}
