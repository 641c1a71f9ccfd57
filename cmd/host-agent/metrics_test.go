package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

const (
	dashboardFile = "../../deploy/grafana/host-agent.json"
	alertsFile    = "../../deploy/prometheus/alerts.yml"
)

// pendingWiring are metrics the dashboard and the alerts name before the
// agent serves them: each is registered by a component not yet wired into
// cmd/host-agent. The test fails once one is served, so that it leaves
// this list.
var pendingWiring = map[string]string{}

// emptyRules is a rule set of no rules, for its repairs counter.
func emptyRules(t *testing.T) *network.Rules {
	t.Helper()
	r, err := network.NewRules(network.RulesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// PromQL words that are not metric names: aggregation operators (which may
// be followed by by/without before their parenthesis), binary and set
// operators, modifiers and literals. Functions are recognised by the
// parenthesis that follows them.
var (
	promqlAggregations = []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
		"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
	promqlKeywords = []string{"and", "or", "unless", "bool", "offset", "inf", "nan"}
	// promqlLabelLists are followed by a parenthesised list of labels.
	promqlLabelLists = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
)

// promqlMetricNames returns the metric names an expression selects, in
// order of appearance. It skips strings, label matchers ({...}), ranges
// ([...]), numbers and durations, Grafana variables ($x), functions (a name
// followed by "("), aggregation operators, keywords, and the label lists
// of by, without, on, ignoring, group_left and group_right.
func promqlMetricNames(expr string) []string {
	var names []string
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	skipString := func(i int) int { // i at the opening quote; returns the index after the closing one
		q := expr[i]
		for i++; i < len(expr); i++ {
			if expr[i] == '\\' && q != '`' {
				i++
			} else if expr[i] == q {
				return i + 1
			}
		}
		return i
	}
	skipTo := func(i int, closing byte) int { // past the closing byte, strings skipped
		for i < len(expr) && expr[i] != closing {
			if expr[i] == '"' || expr[i] == '\'' || expr[i] == '`' {
				i = skipString(i)
				continue
			}
			i++
		}
		return i + 1
	}
	nextNonSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '{':
			i = skipTo(i+1, '}')
		case c == '[':
			i = skipTo(i+1, ']')
		case c == '#':
			i = skipTo(i, '\n')
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case c == '$':
			for i++; i < len(expr) && (isIdent(expr[i]) || expr[i] == '{' || expr[i] == '}'); i++ {
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := nextNonSpace(i)
			switch {
			case slices.Contains(promqlLabelLists, word):
				if next < len(expr) && expr[next] == '(' {
					i = skipTo(next+1, ')')
				}
			case slices.Contains(promqlAggregations, word), slices.Contains(promqlKeywords, word):
			case next < len(expr) && expr[next] == '(':
				// a function
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names
}

func TestPromQLMetricNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (le, instance) (rate(a_bucket{x="b c", y=~"d{1}"}[$__rate_interval]))`, []string{"a_bucket"}},
		{`histogram_quantile(0.95, sum without(result) (rate(b_bucket[5m] offset 1h)))`, []string{"b_bucket"}},
		{"x > 0\nunless on (instance, job)\ny{a='}'} * 1e9 + inf", []string{"x", "y"}},
		{`time() - (c_seconds{instance=~"$instance"} > 0) or vector(0)`, []string{"c_seconds"}},
		{`count(d) by (job) / ignoring(state) group_left(version) e:rate5m # comment with f`, []string{"d", "e:rate5m"}},
		{`topk(3, sum_over_time(g[1h:5m]))`, []string{"g"}},
		{`max by (instance) (h) == bool 1 and min(i) < 2 * nan`, []string{"h", "i"}},
	} {
		if got := promqlMetricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// dashboardQueries returns every PromQL expression of the dashboard's
// panels (rows included) and the metric of each label_values() variable.
func dashboardQueries(t *testing.T) (exprs, variableMetrics []string) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var dash struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q has a target without an expression", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		metric, ok := strings.CutPrefix(v.Definition, "label_values(")
		metric, _, found := strings.Cut(metric, ",")
		if !ok || !found {
			t.Errorf("variable query %q: want label_values(metric, label)", v.Definition)
			continue
		}
		variableMetrics = append(variableMetrics, strings.TrimSpace(metric))
	}
	return exprs, variableMetrics
}

// alertExprs returns the expression of every rule in the alert rules.
func alertExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("alert %q has no expression", r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// namedMetrics is every metric name the dashboard and the alerts use,
// with where.
func namedMetrics(t *testing.T) map[string]string {
	t.Helper()
	exprs, vars := dashboardQueries(t)
	if len(exprs) < 15 {
		t.Fatalf("only %d expressions found in %s", len(exprs), dashboardFile)
	}
	alerts := alertExprs(t)
	if len(alerts) < 5 {
		t.Fatalf("only %d rules found in %s", len(alerts), alertsFile)
	}
	out := map[string]string{}
	for _, m := range vars {
		out[m] = dashboardFile
	}
	for _, e := range exprs {
		for _, m := range promqlMetricNames(e) {
			out[m] = dashboardFile
		}
	}
	for _, e := range alerts {
		for _, m := range promqlMetricNames(e) {
			out[m] = alertsFile
		}
	}
	return out
}

// servedNames are the sample names of a scrape: each family's name, and a
// histogram's or summary's _bucket, _sum and _count.
func servedNames(t *testing.T, scrape string) map[string]bool {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(scrape))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]bool{}
	for name, fam := range fams {
		out[name] = true
		switch fam.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// checkNamedMetricsServed fails for every metric the dashboard or the
// alerts name that scrape lacks, except those pending wiring and those
// skip says may be absent.
func checkNamedMetricsServed(t *testing.T, scrape string, skip func(name string) bool) {
	t.Helper()
	served := servedNames(t, scrape)
	named := namedMetrics(t)
	names := make([]string, 0, len(named))
	for m := range named {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		_, pending := pendingWiring[m]
		switch {
		case served[m] && pending:
			t.Errorf("%s is served now: remove it from pendingWiring", m)
		case served[m], pending, skip(m):
		default:
			t.Errorf("%s names %s, which the agent's /metrics does not have", named[m], m)
		}
	}
}

// listRuntime is a runtime with no instances; only List is called.
type listRuntime struct{ runtime.Runtime }

func (listRuntime) List(context.Context) ([]runtime.Instance, error) { return nil, nil }
func (listRuntime) Close() error                                     { return nil }

// TestDashboardAndAlertsNameServedMetrics: every metric the dashboard and
// the alert rules use is on GET /metrics of an agent built as serve builds
// it (internal/agent), on a host with GPUs (NVML's DGX A100 mock), so that the GPU series
// are there too. The running agent is checked as well, by TestAgentMetrics.
func TestDashboardAndAlertsNameServedMetrics(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv, err := gpu.Open(dgxa100.New(), logger)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{ContainerdRoot: t.TempDir(), DiskReserveGB: 1}
	a, err := agent.New(context.Background(), agent.Options{
		Logger:       logger,
		Inventory:    inv,
		Backend:      listRuntime{},
		Reservations: reservations(cfg, nil, false, nil, nil),
		Reporter:     &reporter.Options{AgentID: "metrics", Version: version},
		Server: &server.Options{
			RuntimeName:  runtimeContainerd,
			Token:        e2eToken,
			MetricsToken: "metrics-token-0123456789",
			Collectors:   ruleCollectors(emptyRules(t)),
			Version:      version,
			Commit:       commit,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	srv := a.Server
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Authorization", "Bearer metrics-token-0123456789")
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	checkNamedMetricsServed(t, rec.Body.String(), func(string) bool { return false })
}

// TestDashboardQueriesArePromQL: promtool parses every dashboard query,
// with Grafana's variables given values, as it parses the alert rules.
func TestDashboardQueriesArePromQL(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "promtool")
	exprs, _ := dashboardQueries(t)
	rules := map[string]any{}
	var list []map[string]string
	for i, e := range exprs {
		e = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*").Replace(e)
		list = append(list, map[string]string{"record": "dashboard:query:" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), "expr": e})
	}
	rules["groups"] = []map[string]any{{"name": "dashboard", "rules": list}}
	b, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}
