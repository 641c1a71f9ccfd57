package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.yaml.in/yaml/v3"

	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// asyncAPIDoc is the part of the AsyncAPI document these tests read.
type asyncAPIDoc struct {
	AsyncAPI string `json:"asyncapi"`
	Info     struct {
		Description string `json:"description"`
	} `json:"info"`
	Servers map[string]struct {
		Host     string `json:"host"`
		Protocol string `json:"protocol"`
		Security []ref  `json:"security"`
	} `json:"servers"`
	Channels map[string]struct {
		Address  string         `json:"address"`
		Servers  []ref          `json:"servers"`
		Messages map[string]ref `json:"messages"`
		Bindings struct {
			WS struct {
				Method string       `json:"method"`
				Query  *asyncSchema `json:"query"`
			} `json:"ws"`
		} `json:"bindings"`
	} `json:"channels"`
	Operations map[string]struct {
		Action   string `json:"action"`
		Channel  ref    `json:"channel"`
		Messages []ref  `json:"messages"`
	} `json:"operations"`
	Components struct {
		Messages map[string]*struct {
			Name    string       `json:"name"`
			Payload *asyncSchema `json:"payload"`
		} `json:"messages"`
		Schemas         map[string]*asyncSchema `json:"schemas"`
		SecuritySchemes map[string]struct {
			Type   string `json:"type"`
			Scheme string `json:"scheme"`
		} `json:"securitySchemes"`
	} `json:"components"`
}

type ref struct {
	Ref string `json:"$ref"`
}

// asyncSchema is the part of a JSON Schema these tests read and check
// values against.
type asyncSchema struct {
	Ref        string                  `json:"$ref"`
	Type       string                  `json:"type"`
	Format     string                  `json:"format"`
	Const      any                     `json:"const"`
	Enum       []any                   `json:"enum"`
	Properties map[string]*asyncSchema `json:"properties"`
	Required   []string                `json:"required"`
	Items      *asyncSchema            `json:"items"`
	Minimum    *float64                `json:"minimum"`
	Maximum    *float64                `json:"maximum"`
}

func loadAsyncAPI(t *testing.T) *asyncAPIDoc {
	t.Helper()
	var raw any
	if err := yaml.Unmarshal(asyncAPIDocument, &raw); err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	var doc asyncAPIDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	if doc.AsyncAPI != "3.0.0" {
		t.Errorf("asyncapi version %q", doc.AsyncAPI)
	}
	return &doc
}

// schemaByRef follows a $ref to a component schema.
func (d *asyncAPIDoc) schemaByRef(t *testing.T, where string, s *asyncSchema) *asyncSchema {
	t.Helper()
	for s != nil && s.Ref != "" {
		name, ok := strings.CutPrefix(s.Ref, "#/components/schemas/")
		target := d.Components.Schemas[name]
		if !ok || target == nil {
			t.Errorf("%s: $ref %s does not resolve", where, s.Ref)
			return nil
		}
		s = target
	}
	return s
}

// payloads returns each message's payload schema by the message's name,
// which is the event type it describes.
func (d *asyncAPIDoc) payloads(t *testing.T) map[string]*asyncSchema {
	t.Helper()
	out := map[string]*asyncSchema{}
	for key, m := range d.Components.Messages {
		if m.Payload == nil {
			t.Errorf("message %s: no payload", key)
			continue
		}
		if _, dup := out[m.Name]; dup {
			t.Errorf("message %s: a second message named %q", key, m.Name)
		}
		out[m.Name] = d.schemaByRef(t, "message "+key, m.Payload)
	}
	return out
}

// eventFields are events.Event's JSON fields, by JSON name, and whether
// each is always sent (no omitempty).
func eventFields() (fields map[string]reflect.StructField, always []string) {
	fields = map[string]reflect.StructField{}
	typ := reflect.TypeFor[events.Event]()
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name := jsonName(f)
		if !f.IsExported() || name == "" {
			continue
		}
		fields[name] = f
		if tag := f.Tag.Get("json"); !strings.Contains(tag, ",omitempty") && !strings.Contains(tag, ",omitzero") {
			always = append(always, name)
		}
	}
	return fields, always
}

// TestAsyncAPIChannel fails when the document does not describe GET /ws on
// the agent's address with the API's bearer authentication, or when a
// message is not listed on the channel and the operation that sends it.
func TestAsyncAPIChannel(t *testing.T) {
	t.Parallel()
	doc := loadAsyncAPI(t)
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s.Type != "http" || s.Scheme != "bearer" {
		t.Errorf("securitySchemes.bearerAuth %+v, want http bearer as in openapi.json", s)
	}
	var protocols []string
	for name, s := range doc.Servers {
		protocols = append(protocols, s.Protocol)
		if len(s.Security) != 1 || s.Security[0].Ref != "#/components/securitySchemes/bearerAuth" {
			t.Errorf("server %s: security %+v, want bearerAuth", name, s.Security)
		}
	}
	sort.Strings(protocols)
	if !slices.Equal(protocols, []string{"ws", "wss"}) {
		t.Errorf("servers' protocols %v, want ws and wss (with TLS_CERT_FILE)", protocols)
	}
	ch, ok := doc.Channels["events"]
	if !ok || ch.Address != "/ws" || ch.Bindings.WS.Method != http.MethodGet {
		t.Fatalf("channel events: address %q, ws binding method %q; want GET /ws", ch.Address, ch.Bindings.WS.Method)
	}
	if q := ch.Bindings.WS.Query; q == nil || q.Properties["since"] == nil || q.Properties["since"].Type != "integer" {
		t.Errorf("channel events: the ws binding does not describe the integer query parameter since")
	}
	var onChannel []string
	for key, m := range ch.Messages {
		if m.Ref != "#/components/messages/"+key {
			t.Errorf("channel events: message %s is $ref %s, want #/components/messages/%s", key, m.Ref, key)
		}
		onChannel = append(onChannel, key)
	}
	var components []string
	for key := range doc.Components.Messages {
		components = append(components, key)
	}
	sort.Strings(onChannel)
	sort.Strings(components)
	if !slices.Equal(onChannel, components) {
		t.Errorf("channel events lists messages %v, components define %v", onChannel, components)
	}
	// The numbers the description gives a client, and where they come from.
	for _, text := range []string{
		fmt.Sprintf("falls %d events behind", events.SubscriberBuffer),
		fmt.Sprintf("pings every %d seconds", int(DefaultPingInterval.Seconds())),
		fmt.Sprintf("closed with code %d", websocket.CloseTryAgainLater),
		fmt.Sprintf("the close code is %d", websocket.CloseGoingAway),
	} {
		if !strings.Contains(strings.Join(strings.Fields(doc.Info.Description), " "), text) {
			t.Errorf("info.description does not say %q", text)
		}
	}
	op, ok := doc.Operations["sendEvents"]
	if !ok || op.Action != "send" || op.Channel.Ref != "#/channels/events" {
		t.Fatalf("operation sendEvents %+v: want the agent sending on #/channels/events", op)
	}
	var sent []string
	for _, m := range op.Messages {
		sent = append(sent, strings.TrimPrefix(m.Ref, "#/channels/events/messages/"))
	}
	sort.Strings(sent)
	if !slices.Equal(sent, onChannel) {
		t.Errorf("operation sendEvents sends %v, the channel has %v", sent, onChannel)
	}
}

// TestAsyncAPIMessagesMatchEventTypes fails when an event type constant of
// runtime/events has no message, or a message describes a type no constant
// names.
func TestAsyncAPIMessagesMatchEventTypes(t *testing.T) {
	t.Parallel()
	doc := loadAsyncAPI(t)
	consts := stringConsts(t, "../runtime/events/event.go", "Type")
	// Spot-check that parsing found the constants the code uses.
	for name, v := range map[string]string{"TypeInstanceExited": events.TypeInstanceExited, "TypeEventsLost": events.TypeEventsLost} {
		if consts[name] != v {
			t.Errorf("parsed %s = %q, want %q", name, consts[name], v)
		}
	}
	payloads := doc.payloads(t)
	for name, v := range consts {
		if payloads[v] == nil {
			t.Errorf("event type %s (%q) has no message in asyncapi.yaml", name, v)
		}
	}
	for typ, p := range payloads {
		if !slices.Contains(slices.Collect(maps.Values(consts)), typ) {
			t.Errorf("message %q is no event type constant", typ)
		}
		if p == nil || p.Properties["type"] == nil || p.Properties["type"].Const != typ {
			t.Errorf("message %q: its payload's type is not the constant %q", typ, typ)
		}
	}
}

// TestAsyncAPIPayloadsMatchEvent fails when a payload names a field
// events.Event does not have or gives it another type, when a field that is
// always sent is not required everywhere, or when a field of events.Event is
// in no message at all.
func TestAsyncAPIPayloadsMatchEvent(t *testing.T) {
	t.Parallel()
	doc := loadAsyncAPI(t)
	fields, always := eventFields()
	used := map[string]bool{}
	for typ, p := range doc.payloads(t) {
		if p == nil {
			continue
		}
		where := "message " + typ
		if p.Type != "object" {
			t.Errorf("%s: payload type %q, want object", where, p.Type)
		}
		for name, prop := range p.Properties {
			f, ok := fields[name]
			if !ok {
				t.Errorf("%s: property %s is no field of events.Event", where, name)
				continue
			}
			used[name] = true
			checkGoType(t, doc, where+"."+name, f.Type, prop)
		}
		for _, name := range always {
			if !slices.Contains(p.Required, name) {
				t.Errorf("%s: %s is always sent but not required", where, name)
			}
		}
		for _, name := range p.Required {
			if p.Properties[name] == nil {
				t.Errorf("%s: required %s is not a property", where, name)
			}
		}
	}
	for name, f := range fields {
		if !used[name] {
			t.Errorf("events.Event.%s (%s) is in no message of asyncapi.yaml", f.Name, name)
		}
	}
}

// checkGoType fails unless s describes values of Go type typ as
// encoding/json writes them; a struct's schema must list exactly its fields
// and require those always sent.
func checkGoType(t *testing.T, doc *asyncAPIDoc, where string, typ reflect.Type, s *asyncSchema) {
	t.Helper()
	s = doc.schemaByRef(t, where, s)
	if s == nil {
		return
	}
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := map[reflect.Kind]string{
		reflect.String: "string", reflect.Bool: "boolean", reflect.Int: "integer", reflect.Int64: "integer",
		reflect.Uint16: "integer", reflect.Uint64: "integer", reflect.Float64: "number", reflect.Slice: "array", reflect.Struct: "object",
	}[typ.Kind()]
	if typ == reflect.TypeFor[time.Time]() {
		want = "string"
		if s.Format != "date-time" {
			t.Errorf("%s: a time needs format date-time", where)
		}
	}
	if want == "" {
		t.Fatalf("%s: the test does not know Go type %s", where, typ)
	}
	if s.Type != want {
		t.Errorf("%s: schema type %q, Go type %s (%s)", where, s.Type, typ, want)
	}
	switch {
	case typ.Kind() == reflect.Slice:
		if s.Items == nil {
			t.Errorf("%s: array without items", where)
			return
		}
		checkGoType(t, doc, where+"[]", typ.Elem(), s.Items)
	case want == "object":
		var names, required []string
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name := jsonName(f)
			if !f.IsExported() || name == "" {
				continue
			}
			names = append(names, name)
			if tag := f.Tag.Get("json"); !strings.Contains(tag, ",omitempty") && !strings.Contains(tag, ",omitzero") {
				required = append(required, name)
			}
			prop := s.Properties[name]
			if prop == nil {
				t.Errorf("%s: field %s (%s.%s) is not in the schema", where, name, typ.Name(), f.Name)
				continue
			}
			checkGoType(t, doc, where+"."+name, f.Type, prop)
		}
		for name := range s.Properties {
			if !slices.Contains(names, name) {
				t.Errorf("%s: property %s is not in %s", where, name, typ)
			}
		}
		got := slices.Clone(s.Required)
		sort.Strings(got)
		sort.Strings(required)
		if !slices.Equal(got, required) {
			t.Errorf("%s: required %v, want the fields always present %v", where, got, required)
		}
	}
}

// publishSite is one place in the agent's code that builds an events.Event.
type publishSite struct {
	pos string
	typ string
	// set are the fields the literal names (JSON names), with the constant
	// string value each has where the code gives one.
	set map[string]*string
	// later are fields assigned to the event after the literal, on some
	// paths only.
	later []string
}

// TestAsyncAPIPublishSites reads every events.Event the agent's code builds
// (outside tests) and fails when a field one sets is not in its type's
// message, when a message requires a field that some site of its type does
// not set, when a constant value set differs from the message's const or
// enum, or when a message describes a type that nothing publishes.
//
// A field the literal names counts as set even when its value may be empty
// at run time (omitempty then drops it): the document leaves such a field
// optional, as it does step on instance.failed, whose start failures name
// a step only when one failed.
func TestAsyncAPIPublishSites(t *testing.T) {
	t.Parallel()
	doc := loadAsyncAPI(t)
	sites := findPublishSites(t, "..")
	fields, always := eventFields()
	payloads := doc.payloads(t)
	byType := map[string][]publishSite{}
	for _, s := range sites {
		byType[s.typ] = append(byType[s.typ], s)
		p := payloads[s.typ]
		if p == nil {
			t.Errorf("%s: publishes %q, which has no message", s.pos, s.typ)
			continue
		}
		for name, value := range s.set {
			prop := p.Properties[name]
			if prop == nil {
				t.Errorf("%s: sets %s on a %s event, which its message does not list", s.pos, name, s.typ)
				continue
			}
			if value != nil {
				if errs := validateValue(doc, name, *value, prop); len(errs) > 0 {
					t.Errorf("%s: sets %s to %q on a %s event: %v", s.pos, name, *value, s.typ, errs)
				}
			}
		}
		for _, name := range s.later {
			if p.Properties[name] == nil {
				t.Errorf("%s: may set %s on a %s event, which its message does not list", s.pos, name, s.typ)
			}
		}
	}
	for typ, p := range payloads {
		if p == nil {
			continue
		}
		if len(byType[typ]) == 0 {
			t.Errorf("message %q: no code publishes that type", typ)
		}
		for _, name := range p.Required {
			if slices.Contains(always, name) {
				continue
			}
			if _, ok := fields[name]; !ok {
				continue // reported by TestAsyncAPIPayloadsMatchEvent
			}
			for _, s := range byType[typ] {
				if _, ok := s.set[name]; !ok {
					t.Errorf("message %q requires %s, but %s does not always set it", typ, name, s.pos)
				}
			}
		}
	}
	if len(sites) < len(payloads) {
		t.Errorf("found only %d publish sites", len(sites))
	}
}

// findPublishSites parses the module's Go files (not its tests) for
// events.Event composite literals.
func findPublishSites(t *testing.T, root string) []publishSite {
	t.Helper()
	const module = "github.com/host-agent/host-agent"
	type file struct {
		dir  string
		f    *ast.File
		name string
	}
	fset := token.NewFileSet()
	var files []file
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		files = append(files, file{dir: filepath.ToSlash(rel), f: f, name: path})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// String constants by package directory and name, for values such as
	// string(runtime.StatusRunning) or gpu.StatusUnhealthy.
	consts := map[string]string{}
	for _, fl := range files {
		for _, decl := range fl.f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if v, err := strconv.Unquote(lit.Value); err == nil {
							consts[fl.dir+"."+name.Name] = v
						}
					}
				}
			}
		}
	}

	fields := reflect.TypeFor[events.Event]()
	jsonOf := func(goName string) string {
		f, ok := fields.FieldByName(goName)
		if !ok {
			t.Fatalf("events.Event has no field %s", goName)
		}
		return jsonName(f)
	}
	var sites []publishSite
	for _, fl := range files {
		imports := map[string]string{}
		for _, imp := range fl.f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			name := path[strings.LastIndex(path, "/")+1:]
			if imp.Name != nil {
				name = imp.Name.Name
			}
			imports[name] = strings.TrimPrefix(path, module+"/")
		}
		// constValue evaluates e when it is a string constant of the module.
		var constValue func(e ast.Expr) (string, bool)
		constValue = func(e ast.Expr) (string, bool) {
			switch e := e.(type) {
			case *ast.BasicLit:
				if e.Kind == token.STRING {
					v, err := strconv.Unquote(e.Value)
					return v, err == nil
				}
			case *ast.Ident:
				v, ok := consts[fl.dir+"."+e.Name]
				return v, ok
			case *ast.SelectorExpr:
				if x, ok := e.X.(*ast.Ident); ok {
					v, ok := consts[imports[x.Name]+"."+e.Sel.Name]
					return v, ok
				}
			case *ast.CallExpr: // a conversion such as string(runtime.StatusRunning)
				if fn, ok := e.Fun.(*ast.Ident); ok && fn.Name == "string" && len(e.Args) == 1 {
					return constValue(e.Args[0])
				}
			}
			return "", false
		}
		isEvent := func(e ast.Expr) bool {
			switch e := e.(type) {
			case *ast.SelectorExpr:
				x, ok := e.X.(*ast.Ident)
				return ok && e.Sel.Name == "Event" && imports[x.Name] == "runtime/events"
			case *ast.Ident:
				return e.Name == "Event" && fl.dir == "runtime/events"
			}
			return false
		}
		for _, decl := range fl.f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			// Variables bound to an event literal, and the fields later
			// assigned on them.
			bound := map[*ast.CompositeLit]string{}
			assigned := map[string][]string{}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				as, ok := n.(*ast.AssignStmt)
				if !ok {
					return true
				}
				for i, lhs := range as.Lhs {
					if sel, ok := lhs.(*ast.SelectorExpr); ok {
						if x, ok := sel.X.(*ast.Ident); ok {
							assigned[x.Name] = append(assigned[x.Name], sel.Sel.Name)
						}
					}
					if i < len(as.Rhs) {
						rhs := as.Rhs[i]
						if u, ok := rhs.(*ast.UnaryExpr); ok && u.Op == token.AND {
							rhs = u.X
						}
						if lit, ok := rhs.(*ast.CompositeLit); ok {
							if id, ok := lhs.(*ast.Ident); ok {
								bound[lit] = id.Name
							}
						}
					}
				}
				return true
			})
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				lit, ok := n.(*ast.CompositeLit)
				if !ok || !isEvent(lit.Type) {
					return true
				}
				site := publishSite{pos: fset.Position(lit.Pos()).String(), set: map[string]*string{}}
				for _, elt := range lit.Elts {
					kv, ok := elt.(*ast.KeyValueExpr)
					key, _ := kv.Key.(*ast.Ident)
					if !ok || key == nil {
						t.Errorf("%s: an events.Event literal without field names", site.pos)
						continue
					}
					if key.Name == "Type" {
						v, ok := constValue(kv.Value)
						if !ok {
							t.Errorf("%s: the event's Type is not a constant", site.pos)
						}
						site.typ = v
						continue
					}
					var value *string
					if v, ok := constValue(kv.Value); ok {
						value = &v
					}
					site.set[jsonOf(key.Name)] = value
				}
				if site.typ == "" {
					t.Errorf("%s: an events.Event without a Type", site.pos)
					return true
				}
				if name, ok := bound[lit]; ok {
					for _, goName := range assigned[name] {
						if goName == "Type" {
							t.Errorf("%s: the event's Type is assigned after the literal", site.pos)
							continue
						}
						if _, ok := fields.FieldByName(goName); ok {
							site.later = append(site.later, jsonOf(goName))
						}
					}
				}
				sites = append(sites, site)
				return true
			})
		}
	}
	return sites
}

// validateValue checks the JSON value v against s, strictly: an object may
// carry only the properties s lists.
func validateValue(doc *asyncAPIDoc, where string, v any, s *asyncSchema) []string {
	for s != nil && s.Ref != "" {
		s = doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
	}
	if s == nil {
		return []string{where + ": unresolved schema"}
	}
	var errs []string
	fail := func(format string, a ...any) { errs = append(errs, where+": "+fmt.Sprintf(format, a...)) }
	if s.Const != nil && !jsonEqual(v, s.Const) {
		fail("%v, want the const %v", v, s.Const)
	}
	if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e any) bool { return jsonEqual(v, e) }) {
		fail("%v is not one of %v", v, s.Enum)
	}
	switch s.Type {
	case "string":
		str, ok := v.(string)
		if !ok {
			fail("%v is not a string", v)
		} else if s.Format == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				fail("%q is not an RFC 3339 date-time", str)
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			fail("%v is not a boolean", v)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			fail("%v is not a number", v)
			break
		}
		f, err := strconv.ParseFloat(n.String(), 64)
		if err != nil || f != math.Trunc(f) || strings.ContainsAny(n.String(), ".eE") {
			fail("%v is not an integer", v)
		}
		if s.Minimum != nil && f < *s.Minimum {
			fail("%v is below the minimum %v", v, *s.Minimum)
		}
		if s.Maximum != nil && f > *s.Maximum {
			fail("%v is above the maximum %v", v, *s.Maximum)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			fail("%v is not an array", v)
			break
		}
		for i, x := range a {
			errs = append(errs, validateValue(doc, fmt.Sprintf("%s[%d]", where, i), x, s.Items)...)
		}
	case "object":
		o, ok := v.(map[string]any)
		if !ok {
			fail("%v is not an object", v)
			break
		}
		for _, name := range s.Required {
			if _, ok := o[name]; !ok {
				fail("required %s is missing", name)
			}
		}
		for name, x := range o {
			prop := s.Properties[name]
			if prop == nil {
				fail("%s is not in the schema", name)
				continue
			}
			errs = append(errs, validateValue(doc, where+"."+name, x, prop)...)
		}
	default:
		fail("the test does not know schema type %q", s.Type)
	}
	return errs
}

// jsonEqual compares a decoded JSON value with a schema's const or enum
// value, numbers by value.
func jsonEqual(v, want any) bool {
	if n, ok := v.(json.Number); ok {
		return n.String() == fmt.Sprint(want)
	}
	return reflect.DeepEqual(v, want)
}

// TestAsyncAPIEventsOnTheWire runs the code that publishes events where it
// can run without a container runtime (the runtime watch, pull progress, a
// resume past the buffer, and events carrying every field) and fails
// unless every message GET /ws sends for them is valid under its type's
// payload schema, with no field the schema does not list.
func TestAsyncAPIEventsOnTheWire(t *testing.T) {
	t.Parallel()
	doc := loadAsyncAPI(t)
	payloads := doc.payloads(t)
	ts := newTestServer(t, &fakeRuntime{})
	srv := wsServer(t, ts)
	conn := mustDialWS(t, srv, "")
	first := waitSubscribed(t, ts.hub, conn)

	seen := map[string]bool{}
	read := func() map[string]any {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("reading /ws: %v", err)
		}
		return checkFrame(t, doc, payloads, msg, seen)
	}

	// The runtime watch: connected, then disconnected when the stream
	// breaks; the second connection attempt ends the watch.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	attempts := 0
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		backend.Watch(ctx, backend.Watcher{
			Name: "containerd", Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Pub: ts.hub,
			Connect: func(context.Context, context.Context) (func() error, error) {
				if attempts++; attempts > 1 {
					cancel()
					return nil, context.Canceled
				}
				return func() error { return errors.New("connection reset") }, nil
			},
		})
	}()
	for _, want := range []string{events.TypeRuntimeConnected, events.TypeRuntimeDisconnected} {
		if got := read()["type"]; got != want {
			t.Fatalf("got a %v event, want %s", got, want)
		}
	}
	<-watchDone

	// Pull progress, as a back end's pull reports it.
	stop := backend.ReportPullProgress(context.Background(), ts.hub, "inst-1", time.Millisecond,
		func(context.Context) events.PullProgress {
			return events.PullProgress{DoneBytes: 512, TotalBytes: 2048}
		})
	if got := read()["type"]; got != events.TypeInstancePullProgress {
		t.Fatalf("got a %v event, want %s", got, events.TypeInstancePullProgress)
	}
	stop()

	// Every field the envelope has, as the back ends set them on the
	// events whose messages list them.
	code := 137
	ts.hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: "inst-1", Status: "running",
		Ports: []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 40017}}})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: "inst-1", Status: "exited", ExitCode: &code, OOMKilled: true})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: "inst-1", Status: "failed", Step: "pull", Error: "pull: not found"})
	for range 3 {
		read()
	}

	// A client resuming from before what the buffer holds gets
	// events.lost first, then the buffer.
	resumed := mustDialWS(t, srv, "?since=1")
	_ = resumed.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := resumed.ReadMessage()
	if err != nil {
		t.Fatalf("reading the resumed /ws: %v", err)
	}
	if got := checkFrame(t, doc, payloads, msg, seen)["type"]; got != events.TypeEventsLost {
		t.Fatalf("a resume from seq 1 began with a %v event, want %s", got, events.TypeEventsLost)
	}
	_, msg, err = resumed.ReadMessage()
	if err != nil {
		t.Fatalf("reading the resumed /ws: %v", err)
	}
	if got := checkFrame(t, doc, payloads, msg, seen)["seq"]; fmt.Sprint(got) != fmt.Sprint(first) {
		t.Errorf("after events.lost came seq %v, want the buffer's first, %d", got, first)
	}

	for _, typ := range []string{events.TypeRuntimeConnected, events.TypeRuntimeDisconnected, events.TypeInstancePullProgress,
		events.TypeInstanceRunning, events.TypeInstanceExited, events.TypeInstanceFailed, events.TypeEventsLost} {
		if !seen[typ] {
			t.Errorf("no %s event was checked", typ)
		}
	}
}

// checkFrame decodes one /ws message and validates it against the payload
// of the message its type names.
func checkFrame(t *testing.T, doc *asyncAPIDoc, payloads map[string]*asyncSchema, msg []byte, seen map[string]bool) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(msg)))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("a /ws message is not a JSON object: %v: %s", err, msg)
	}
	typ, _ := v["type"].(string)
	p := payloads[typ]
	if p == nil {
		t.Fatalf("a /ws message of type %q, which has no message in asyncapi.yaml: %s", typ, msg)
	}
	for _, e := range validateValue(doc, typ, v, p) {
		t.Errorf("%s (%s)", e, msg)
	}
	seen[typ] = true
	return v
}

func TestAsyncAPIServed(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	rec := ts.do(t, http.MethodGet, "/asyncapi.yaml", "")
	if rec.Code != http.StatusOK || rec.Body.String() != string(asyncAPIDocument) {
		t.Fatalf("GET /asyncapi.yaml: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/yaml") {
		t.Errorf("Content-Type %q, want application/yaml", ct)
	}
	want, err := os.ReadFile("asyncapi.yaml")
	if err != nil || string(want) != string(asyncAPIDocument) {
		t.Errorf("the served document differs from server/asyncapi.yaml (%v)", err)
	}
}
