package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/server/reporter"
)

// openAPIDoc is the part of an OpenAPI document these tests read.
type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
	// Webhooks are the calls the agent makes to the central server; they
	// are not routes the agent serves.
	Webhooks   map[string]map[string]*operation `json:"webhooks"`
	Components struct {
		Schemas         map[string]*schema         `json:"schemas"`
		SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
	} `json:"components"`
}

type schema struct {
	Ref                  string             `json:"$ref"`
	Type                 any                `json:"type"` // a string or a list of strings
	Format               string             `json:"format"`
	Properties           map[string]*schema `json:"properties"`
	Required             []string           `json:"required"`
	Items                *schema            `json:"items"`
	AdditionalProperties any                `json:"additionalProperties"`
	Enum                 []any              `json:"enum"`
}

// operation is the part of a webhook's operation these tests read.
type operation struct {
	Description string `json:"description"`
	RequestBody struct {
		Content map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
	Responses map[string]struct {
		Content map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

func loadOpenAPI(t *testing.T) *openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	dec := json.NewDecoder(strings.NewReader(string(openAPIDocument)))
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi version %q", doc.OpenAPI)
	}
	if _, ok := doc.Components.SecuritySchemes["bearerAuth"]; !ok {
		t.Errorf("no bearerAuth security scheme")
	}
	return &doc
}

var pathParam = regexp.MustCompile(`\{([^}]+)\}`)

// TestOpenAPIRoutesMatchServer fails when a route is served but not
// documented (in openapi.json, or in asyncapi.yaml for the WebSocket), or
// documented but not served.
func TestOpenAPIRoutesMatchServer(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	methods := []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}
	var documented []string
	for path, item := range doc.Paths {
		for key := range item {
			if slices.Contains(methods, key) {
				documented = append(documented, strings.ToUpper(key)+" "+pathParam.ReplaceAllString(path, ":$1"))
			}
		}
	}
	// GET /ws is a WebSocket: asyncapi.yaml describes it, as a channel
	// whose ws binding names the handshake's method.
	for _, ch := range loadAsyncAPI(t).Channels {
		documented = append(documented, ch.Bindings.WS.Method+" "+ch.Address)
	}
	var served []string
	for _, r := range newTestServer(t, &fakeRuntime{}).Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	sort.Strings(documented)
	sort.Strings(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is served but not in openapi.json", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("route %s is in openapi.json but not served", r)
		}
	}
	if len(served) == 0 {
		t.Fatal("no routes served")
	}
}

// TestOpenAPIFieldsMatchStructs fails when a JSON field of a request or
// response body is missing from its schema, when a
// schema has a property no struct has, when a type differs, or when
// "required" differs from the fields always present (those without
// omitempty or omitzero).
func TestOpenAPIFieldsMatchStructs(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	roots := map[string]reflect.Type{
		"InstanceData":              reflect.TypeFor[StartInstanceRequest](),
		"TerminateInstanceRequest":  reflect.TypeFor[TerminateInstanceRequest](),
		"StartInstanceResponse":     reflect.TypeFor[StartInstanceResponse](),
		"TerminateInstanceResponse": reflect.TypeFor[TerminateInstanceResponse](),
		"Instance":                  reflect.TypeFor[InstanceResponse](),
		"InstanceList":              reflect.TypeFor[ListInstancesResponse](),
		"Status":                    reflect.TypeFor[StatusResponse](),
		"Error":                     reflect.TypeFor[errorResponse](),
		"GPUHeld":                   reflect.TypeFor[GPUResponse](),
		"GPU":                       reflect.TypeFor[gpu.GPU](),
		"GPUList":                   reflect.TypeFor[GPUListResponse](),
		"MIGDevice":                 reflect.TypeFor[gpu.MIGDevice](),
		"MockFaultRequest":          reflect.TypeFor[MockFaultRequest](),
		"MockFaultResponse":         reflect.TypeFor[MockFaultResponse](),
		"HostReport":                reflect.TypeFor[reporter.HostReport](),
		"OSInfo":                    reflect.TypeFor[reporter.OSInfo](),
		"CPUInfo":                   reflect.TypeFor[reporter.CPUInfo](),
		"MemoryInfo":                reflect.TypeFor[reporter.MemoryInfo](),
		"DiskInfo":                  reflect.TypeFor[reporter.DiskInfo](),
		"RuntimeInfo":               reflect.TypeFor[reporter.RuntimeInfo](),
		"RegisterRequest":           reflect.TypeFor[reporter.RegisterRequest](),
		"HeartbeatRequest":          reflect.TypeFor[reporter.HeartbeatRequest](),
		"InstanceState":             reflect.TypeFor[reporter.InstanceState](),
		"GPURef":                    reflect.TypeFor[reporter.GPURef](),
		"GPUUsage":                  reflect.TypeFor[gpu.Usage](),
		"HeartbeatResponse":         reflect.TypeFor[reporter.HeartbeatResponse](),
		"DrainRequest":              reflect.TypeFor[DrainRequest](),
		"DrainStatus":               reflect.TypeFor[DrainStatus](),
		"DrainInfo":                 reflect.TypeFor[reporter.DrainInfo](),
		"ImagePullRequest":          reflect.TypeFor[ImagePullRequest](),
		"ImagePullResponse":         reflect.TypeFor[ImagePullResponse](),
		"ImageRemoveRequest":        reflect.TypeFor[ImageRemoveRequest](),
		"ImageRemoveResponse":       reflect.TypeFor[ImageRemoveResponse](),
		"ImageList":                 reflect.TypeFor[ImageList](),
		"VolumeCreateRequest":       reflect.TypeFor[VolumeCreateRequest](),
		"VolumeList":                reflect.TypeFor[VolumeList](),
		"VolumeInfo":                reflect.TypeFor[VolumeInfo](),
		"VolumeDeleteResponse":      reflect.TypeFor[VolumeDeleteResponse](),
	}
	c := &schemaChecker{t: t, doc: doc, visited: map[string]bool{}, decoded: map[reflect.Type]bool{
		// The central server writes it and the agent reads it: every field
		// is optional, and what Go decodes from null must allow null.
		reflect.TypeFor[reporter.HeartbeatResponse](): true,
	}}
	for name, typ := range roots {
		c.checkStruct("#/components/schemas/"+name, typ)
	}
	for name := range doc.Components.Schemas {
		if !c.visited[name] {
			t.Errorf("schema %s describes no Go type", name)
		}
	}
}

type schemaChecker struct {
	t       *testing.T
	doc     *openAPIDoc
	visited map[string]bool
	// decoded are the types the agent only reads (answers of the central
	// server), whose schemas describe what the agent accepts rather than
	// what it sends.
	decoded map[reflect.Type]bool
}

// resolve follows a $ref to a component schema.
func (c *schemaChecker) resolve(where string, s *schema) *schema {
	for s != nil && s.Ref != "" {
		name, ok := strings.CutPrefix(s.Ref, "#/components/schemas/")
		target := c.doc.Components.Schemas[name]
		if !ok || target == nil {
			c.t.Errorf("%s: $ref %s does not resolve", where, s.Ref)
			return nil
		}
		c.visited[name] = true
		s = target
	}
	return s
}

func (c *schemaChecker) checkStruct(where string, typ reflect.Type) {
	s := c.resolve(where, &schema{Ref: where})
	if s == nil {
		return
	}
	var fields, required []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name := jsonName(f)
		if !f.IsExported() || name == "" {
			continue
		}
		fields = append(fields, name)
		tag := f.Tag.Get("json")
		always := !strings.Contains(tag, ",omitempty") && !strings.Contains(tag, ",omitzero")
		if c.decoded[typ] {
			// Accepted when absent, and as null where Go takes null.
			always = false
			if k := f.Type.Kind(); (k == reflect.Slice || k == reflect.Pointer || k == reflect.Map) && s.Properties[name] != nil &&
				!slices.Contains(schemaTypes(c.resolve(where+"."+name, s.Properties[name])), "null") {
				c.t.Errorf("%s.%s: the agent accepts null here, but the schema's type does not allow null", where, name)
			}
		}
		if always {
			required = append(required, name)
		}
		prop, ok := s.Properties[name]
		if !ok {
			c.t.Errorf("%s: field %s (%s.%s) is not in the schema", where, name, typ.Name(), f.Name)
			continue
		}
		c.checkValue(where+"."+name, f.Type, prop)
		// A nil pointer that is always sent is sent as null.
		if always && f.Type.Kind() == reflect.Pointer && !slices.Contains(schemaTypes(prop), "null") {
			c.t.Errorf("%s.%s: always present and may be null, but the schema's type does not allow null", where, name)
		}
	}
	for name := range s.Properties {
		if !slices.Contains(fields, name) {
			c.t.Errorf("%s: property %s is in the schema but not in %s", where, name, typ)
		}
	}
	sort.Strings(required)
	gotRequired := slices.Clone(s.Required)
	sort.Strings(gotRequired)
	if !slices.Equal(required, gotRequired) {
		c.t.Errorf("%s: required %v, want the fields always present %v", where, gotRequired, required)
	}
}

func (c *schemaChecker) checkValue(where string, typ reflect.Type, s *schema) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() == reflect.Struct && typ != reflect.TypeFor[time.Time]() {
		if s.Ref == "" {
			c.t.Errorf("%s: an object property must $ref a component schema", where)
			return
		}
		c.checkStruct(s.Ref, typ)
		return
	}
	s = c.resolve(where, s)
	if s == nil {
		return
	}
	want := map[reflect.Kind]string{
		reflect.String: "string", reflect.Bool: "boolean",
		reflect.Int: "integer", reflect.Int64: "integer", reflect.Uint16: "integer", reflect.Uint32: "integer", reflect.Uint64: "integer",
		reflect.Float64: "number", reflect.Slice: "array", reflect.Map: "object",
	}[typ.Kind()]
	if typ == reflect.TypeFor[time.Time]() {
		want = "string"
		if s.Format != "date-time" {
			c.t.Errorf("%s: a time needs format date-time", where)
		}
	}
	if want == "" {
		c.t.Fatalf("%s: the test does not know Go type %s", where, typ)
	}
	if types := schemaTypes(s); !slices.Contains(types, want) {
		c.t.Errorf("%s: schema type %v, Go type %s (%s)", where, types, typ, want)
	}
	switch typ.Kind() {
	case reflect.Slice:
		if s.Items == nil {
			c.t.Errorf("%s: array without items", where)
		} else {
			c.checkValue(where+"[]", typ.Elem(), s.Items)
		}
	case reflect.Map:
		want := "string"
		if k := typ.Elem().Kind(); k == reflect.Int64 || k == reflect.Int {
			want = "integer"
		}
		if ap, ok := s.AdditionalProperties.(map[string]any); !ok || fmt.Sprint(ap["type"]) != want {
			c.t.Errorf("%s: a map of %s needs additionalProperties of type %s", where, typ.Elem(), want)
		}
	}
}

func schemaTypes(s *schema) []string {
	switch v := s.Type.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, fmt.Sprint(x))
		}
		return out
	}
	return nil
}

// stringConsts parses the Go file at path and returns the values of its
// string constants whose names start with prefix, by name.
func stringConsts(t *testing.T, path, prefix string) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, prefix) || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: constant %s is not a string literal", path, name.Name)
					continue
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out[name.Name] = v
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no %s* constants found", path, prefix)
	}
	return out
}

// checkEnum fails unless the schema's enum holds exactly the constants'
// values.
func checkEnum(t *testing.T, where string, s *schema, consts map[string]string) {
	t.Helper()
	if s == nil {
		t.Fatalf("%s: no such schema", where)
	}
	var enum []string
	for _, v := range s.Enum {
		enum = append(enum, fmt.Sprint(v))
	}
	for name, v := range consts {
		if !slices.Contains(enum, v) {
			t.Errorf("%s: %s (%q) is missing from the enum", where, name, v)
		}
	}
	for _, v := range enum {
		found := false
		for _, c := range consts {
			found = found || c == v
		}
		if !found {
			t.Errorf("%s: enum value %q is no constant", where, v)
		}
	}
}

// TestOpenAPIWebhooksMatchReporter fails when the outbound protocol the
// document describes under webhooks differs from what server/reporter does:
// its paths, bodies, registration reasons and timings.
func TestOpenAPIWebhooksMatchReporter(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	ref := func(name string) string { return "#/components/schemas/" + name }
	for _, w := range []struct {
		name, path, request, response string
	}{
		{"agentRegister", reporter.RegisterPath, "RegisterRequest", ""},
		{"agentHeartbeat", reporter.HeartbeatPath, "HeartbeatRequest", "HeartbeatResponse"},
	} {
		op := doc.Webhooks[w.name]["post"]
		if op == nil {
			t.Errorf("webhook %s: no post operation", w.name)
			continue
		}
		url := "POST {API_SERVER_URL}" + fmt.Sprintf(w.path, "{agent_id}")
		if !strings.Contains(op.Description, url) {
			t.Errorf("webhook %s: the description does not name %s", w.name, url)
		}
		for _, h := range []string{"Authorization: Bearer <agent token>", "Content-Type: application/json", "User-Agent: host-agent/<version>"} {
			if !strings.Contains(op.Description, h) {
				t.Errorf("webhook %s: the description does not name the header %s", w.name, h)
			}
		}
		if body := op.RequestBody.Content["application/json"].Schema; body == nil || body.Ref != ref(w.request) {
			t.Errorf("webhook %s: request body %+v, want $ref %s", w.name, body, ref(w.request))
		}
		if w.response != "" {
			if body := op.Responses["200"].Content["application/json"].Schema; body == nil || body.Ref != ref(w.response) {
				t.Errorf("webhook %s: 200 body %+v, want $ref %s", w.name, body, ref(w.response))
			}
		}
		for _, status := range []string{"401", "403", "408", "429", "5XX", "default"} {
			if _, ok := op.Responses[status]; !ok {
				t.Errorf("webhook %s: no %s response", w.name, status)
			}
		}
	}
	if _, ok := doc.Webhooks["agentHeartbeat"]["post"].Responses["404"]; !ok {
		t.Error("webhook agentHeartbeat: no 404 response (the agent registers again)")
	}

	reasons := stringConsts(t, "reporter/protocol.go", "Reason")
	if reasons["ReasonStart"] != reporter.ReasonStart {
		t.Errorf("parsed ReasonStart = %q", reasons["ReasonStart"])
	}
	if rr := doc.Components.Schemas["RegisterRequest"]; rr == nil {
		t.Error("no RegisterRequest schema")
	} else {
		checkEnum(t, "RegisterRequest.reason", rr.Properties["reason"], reasons)
	}

	// The timings the descriptions state, and the defaults they come from.
	heartbeat := doc.Webhooks["agentHeartbeat"]["post"]
	if heartbeat == nil {
		return
	}
	for _, d := range []struct {
		got, want time.Duration
		text      string
	}{
		{reporter.DefaultInterval, 15 * time.Second, "HEARTBEAT_INTERVAL (default 15s)"},
		{reporter.DefaultBackoffBase, time.Second, "base 1s"},
		{reporter.DefaultBackoffMax, time.Minute, "capped at 60s"},
		{reporter.DefaultSlowRetry, 5 * time.Minute, "every 5 minutes"},
		{reporter.DefaultRequestTimeout, 10 * time.Second, "10-second timeout"},
		{reporter.DefaultTerminateTimeout, 10 * time.Second, "SIGKILL after 10 seconds"},
	} {
		if d.got != d.want {
			t.Errorf("the reporter's default is %v, the document says %q", d.got, d.text)
		}
		if !strings.Contains(heartbeat.Description, d.text) {
			t.Errorf("webhook agentHeartbeat: the description does not say %q", d.text)
		}
	}
}

// TestMalformedRequestsAnswerPlainText holds the Malformed response of
// openapi.json, the only 4xx of the health probes, to the server: the HTTP
// server answers a request it cannot parse with 400, and headers over 1 MiB
// with 431, in plain text, before any route runs.
func TestMalformedRequestsAnswerPlainText(t *testing.T) {
	t.Parallel()
	addr := serveOn(t, newTestServer(t, &fakeRuntime{}))
	for _, c := range []struct {
		name, request string
		status        int
	}{
		{"headers over 1 MiB", "GET /healthz HTTP/1.1\r\nHost: agent\r\nX-Big: " + strings.Repeat("a", 1<<20+8192) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"a malformed request line", "GET /readyz HTTP/1.1 and more\r\nHost: agent\r\n\r\n", http.StatusBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			// The server may answer before it has read everything.
			go func() { _, _ = io.WriteString(conn, c.request) }()
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != c.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Errorf("answered %d %q, want %d in text/plain", resp.StatusCode, resp.Header.Get("Content-Type"), c.status)
			}
		})
	}
	doc := loadOpenAPI(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		var get struct {
			Responses map[string]struct {
				Ref string `json:"$ref"`
			} `json:"responses"`
		}
		if err := json.Unmarshal(doc.Paths[path]["get"], &get); err != nil {
			t.Fatal(err)
		}
		if r := get.Responses["4XX"]; r.Ref != "#/components/responses/Malformed" {
			t.Errorf("GET %s: 4XX is %q, want the Malformed response", path, r.Ref)
		}
	}
}
