package server

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
)

// openAPIDoc is the part of an OpenAPI document these tests read.
type openAPIDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
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
// documented, or documented but not served.
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
// response body (or of a WebSocket event) is missing from its schema, when a
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
		"Event":                     reflect.TypeFor[events.Event](),
		"GPUHeld":                   reflect.TypeFor[GPUResponse](),
		"GPU":                       reflect.TypeFor[gpu.GPU](),
		"GPUList":                   reflect.TypeFor[GPUListResponse](),
	}
	c := &schemaChecker{t: t, doc: doc, visited: map[string]bool{}}
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
		reflect.Int: "integer", reflect.Int64: "integer", reflect.Uint32: "integer", reflect.Uint64: "integer",
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
		if ap, ok := s.AdditionalProperties.(map[string]any); !ok || fmt.Sprint(ap["type"]) != "string" {
			c.t.Errorf("%s: a string map needs additionalProperties of type string", where)
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
