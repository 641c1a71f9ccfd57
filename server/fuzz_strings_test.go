package server

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// bodyString is one string of a request body that FuzzRequestStringBytes
// replaces with arbitrary bytes: a value, or a map's key.
type bodyString struct {
	route string
	// path is the JSON path of the value, or of the map for a key.
	path string
	key  bool
	// body is a valid request with FUZZ where the string goes, quotes
	// and all.
	body string
	// reached is what the runtime (or drainer) was given for the string,
	// false when it was given nothing.
	reached func(*received) (string, bool)
	// want is what should reach it for a value the caller meant; nil:
	// the value itself.
	want func(string) string
}

// received is what a request handed to the runtime and the drainer.
type received struct {
	spec      *runtime.InstanceSpec
	terminate *string
	drain     *string
}

func (r *received) startSpec() (runtime.InstanceSpec, bool) {
	if r.spec == nil {
		return runtime.InstanceSpec{}, false
	}
	return *r.spec, true
}

func startField(get func(runtime.InstanceSpec) string) func(*received) (string, bool) {
	return func(r *received) (string, bool) {
		s, ok := r.startSpec()
		if !ok {
			return "", false
		}
		return get(s), true
	}
}

func first(list []string) string {
	if len(list) == 0 {
		return "<none>"
	}
	return list[0]
}

// firstVolume is the spec's first volume, or one named "<none>".
func firstVolume(s runtime.InstanceSpec) runtime.VolumeRequest {
	if len(s.Volumes) == 0 {
		return runtime.VolumeRequest{Name: "<none>", Owner: "<none>", MountPath: "<none>"}
	}
	return s.Volumes[0]
}

// onlyKey is the one key of m, or a marker that fails the comparison.
func onlyKey[V any](m map[string]V) string {
	if len(m) != 1 {
		return fmt.Sprintf("<%d keys>", len(m))
	}
	for k := range m {
		return k
	}
	return ""
}

const fuzzSSHKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@example"

// bodyStrings lists every string field of every route that takes a JSON
// body; TestBodyStringsCoverRequests keeps it complete.
var bodyStrings = []bodyString{
	{route: "/start_instance", path: "instance_id", body: `{"instance_id":FUZZ,"image":"nginx"}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.ID })},
	{route: "/start_instance", path: "image", body: `{"instance_id":"a","image":FUZZ}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.Image }), want: normalizeImage},
	{route: "/start_instance", path: "command[0]", body: `{"instance_id":"a","image":"nginx","command":[FUZZ]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return first(s.Command) })},
	{route: "/start_instance", path: "entrypoint[0]", body: `{"instance_id":"a","image":"nginx","entrypoint":[FUZZ]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return first(s.Entrypoint) })},
	{route: "/start_instance", path: "env.FOO", body: `{"instance_id":"a","image":"nginx","env":{"FOO":FUZZ}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.Env["FOO"] })},
	{route: "/start_instance", path: "env", key: true, body: `{"instance_id":"a","image":"nginx","env":{FUZZ:"bar"}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return onlyKey(s.Env) })},
	{route: "/start_instance", path: "registry_auth.username", body: `{"instance_id":"a","image":"nginx","registry_auth":{"username":FUZZ,"password":"p"}}`,
		reached: startField(func(s runtime.InstanceSpec) string {
			if s.RegistryAuth == nil {
				return ""
			}
			return s.RegistryAuth.Username
		})},
	{route: "/start_instance", path: "registry_auth.password", body: `{"instance_id":"a","image":"nginx","registry_auth":{"username":"u","password":FUZZ}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.RegistryAuth.Password })},
	{route: "/start_instance", path: "labels.team", body: `{"instance_id":"a","image":"nginx","labels":{"team":FUZZ}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.Labels["team"] })},
	{route: "/start_instance", path: "labels", key: true, body: `{"instance_id":"a","image":"nginx","labels":{FUZZ:"ml"}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return onlyKey(s.Labels) })},
	{route: "/start_instance", path: "gpus[0]", body: `{"instance_id":"a","image":"nginx","gpus":[FUZZ]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return first(s.GPURequest.IDs) })},
	{route: "/start_instance", path: "mig_profile", body: `{"instance_id":"a","image":"nginx","mig_profile":FUZZ}`,
		reached: startField(func(s runtime.InstanceSpec) string { return s.GPURequest.MIGProfile })},
	{route: "/start_instance", path: "ports[0].protocol", body: `{"instance_id":"a","image":"nginx","ports":[{"container_port":22,"protocol":FUZZ}]}`,
		reached: startField(func(s runtime.InstanceSpec) string {
			if len(s.Ports) != 1 {
				return "<none>"
			}
			return s.Ports[0].Protocol
		}),
		want: func(p string) string {
			if p == "" {
				return hostport.TCP
			}
			return p
		}},
	{route: "/start_instance", path: "ulimits", key: true, body: `{"instance_id":"a","image":"nginx","ulimits":{FUZZ:1024}}`,
		reached: startField(func(s runtime.InstanceSpec) string { return onlyKey(s.Ulimits) })},
	{route: "/start_instance", path: "ssh_authorized_keys[0]", body: `{"instance_id":"a","image":"nginx","ssh_authorized_keys":[FUZZ]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return first(s.SSHAuthorizedKeys) })},
	{route: "/start_instance", path: "volumes[0].name", body: `{"instance_id":"a","image":"nginx","volumes":[{"name":FUZZ,"owner":"o","mount_path":"/data"}]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return firstVolume(s).Name })},
	{route: "/start_instance", path: "volumes[0].owner", body: `{"instance_id":"a","image":"nginx","volumes":[{"name":"ds","owner":FUZZ,"mount_path":"/data"}]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return firstVolume(s).Owner })},
	{route: "/start_instance", path: "volumes[0].mount_path", body: `{"instance_id":"a","image":"nginx","volumes":[{"name":"ds","owner":"o","mount_path":FUZZ}]}`,
		reached: startField(func(s runtime.InstanceSpec) string { return firstVolume(s).MountPath })},
	{route: "/terminate_instance", path: "instance_id", body: `{"instance_id":FUZZ}`,
		reached: func(r *received) (string, bool) {
			if r.terminate == nil {
				return "", false
			}
			return *r.terminate, true
		}},
	{route: "/drain", path: "reason", body: `{"reason":FUZZ}`,
		reached: func(r *received) (string, bool) {
			if r.drain == nil {
				return "", false
			}
			return *r.drain, true
		}},
}

// seedOf is a value bodyStrings' field takes as it is.
func seedOf(f bodyString) string {
	switch f.path {
	case "image":
		return "nginx:1.27"
	case "gpus[0]":
		return "GPU-0123abcd"
	case "ports[0].protocol":
		return "udp"
	case "ulimits":
		return "nofile"
	case "ssh_authorized_keys[0]":
		return fuzzSSHKey
	case "env", "labels":
		return "team"
	case "volumes[0].mount_path":
		return "/data"
	}
	return "web-1"
}

// recordingDrainer keeps the reason it was given, never drained.
type recordingDrainer struct {
	mu     sync.Mutex
	reason *string
}

func (d *recordingDrainer) SetDrain(_ context.Context, reason string, _ time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reason = &reason
	return nil
}

func (d *recordingDrainer) ClearDrain(context.Context) error { return nil }

func (d *recordingDrainer) Drained(context.Context) (string, time.Time, bool, error) {
	return "", time.Time{}, false, nil
}

// FuzzRequestStringBytes puts arbitrary bytes between the quotes of each
// string of each route's JSON body. A string that is not one well-formed
// JSON string changes the body's shape and is left to the other targets.
// One the caller cannot have meant (bytes that are not UTF-8, a UTF-16
// surrogate escape without its pair) must be refused with 400 naming its
// field and reach nothing; any other is either refused so, or reaches the
// runtime exactly as the caller wrote it: never rewritten on the way.
func FuzzRequestStringBytes(f *testing.F) {
	for i, field := range bodyStrings {
		f.Add(uint8(i), []byte(seedOf(field)))
		f.Add(uint8(i), []byte(""))
		f.Add(uint8(i), []byte(`caf\u00e9 \ud83d\ude00\n`))
	}
	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		field := bodyStrings[int(which)%len(bodyStrings)]
		literal := `"` + string(raw) + `"`
		intent, form := decodeStrictJSONString(literal)
		if form == malformedString {
			return
		}
		var got received
		var mu sync.Mutex
		rt := &fakeRuntime{
			start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
				mu.Lock()
				defer mu.Unlock()
				got.spec = &spec
				return running(spec), nil
			},
			terminate: func(_ context.Context, id string, _ time.Duration) error {
				mu.Lock()
				defer mu.Unlock()
				got.terminate = &id
				return nil
			},
		}
		drainer := &recordingDrainer{}
		ts := newTestServer(t, rt, func(o *Options) { o.Drain = drainer })
		body := strings.Replace(field.body, "FUZZ", literal, 1)
		rec := ts.do(t, http.MethodPost, field.route, body)
		drainer.mu.Lock()
		got.drain = drainer.reason
		drainer.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		reached, wasReached := field.reached(&got)

		if rec.Code == http.StatusBadRequest {
			resp := errorBody(t, rec)
			if !namesField(field, resp.Field, intent, form) {
				t.Fatalf("%s %s with %s %s: 400 names field %q (%s)", field.route, body, field.path, strconv.Quote(literal), resp.Field, resp.Error)
			}
			if wasReached {
				t.Fatalf("%s %s: refused, yet %q reached the runtime", field.route, body, reached)
			}
			return
		}
		if form != strictString {
			t.Fatalf("%s %s: %s %s is not what the caller can have meant, yet the answer is %d %s (%q reached the runtime)",
				field.route, body, field.path, strconv.Quote(literal), rec.Code, rec.Body, reached)
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("%s %s: %d %s", field.route, body, rec.Code, rec.Body)
		}
		want := intent
		if field.want != nil {
			want = field.want(intent)
		}
		if !wasReached || reached != want {
			t.Fatalf("%s %s: %s sent as %s reached the runtime as %s (want %s)", field.route, body, field.path,
				strconv.Quote(literal), strconv.Quote(reached), strconv.Quote(want))
		}
	})
}

// namesField says whether a 400's field names the fuzzed string: its own
// path for a value; for a key the map, or the map and the key as the
// caller wrote it.
func namesField(f bodyString, got, intent string, form stringForm) bool {
	if !f.key {
		return got == f.path
	}
	if got == f.path {
		return true
	}
	if form == strictString {
		return got == f.path+"."+intent
	}
	return strings.HasPrefix(got, f.path+".")
}

type stringForm int

const (
	// strictString is a JSON string (RFC 8259) of UTF-8 text whose
	// escapes all stand for Unicode scalar values.
	strictString stringForm = iota
	// unmeantForm is well-formed, but holds bytes that are not UTF-8
	// or a surrogate escape without its pair: no text a caller can have
	// meant.
	unmeantForm
	// malformedString is not one JSON string.
	malformedString
)

// decodeStrictJSONString decodes literal, written independently of
// encoding/json so that it can tell what encoding/json smooths over.
func decodeStrictJSONString(literal string) (string, stringForm) {
	if len(literal) < 2 || literal[0] != '"' || literal[len(literal)-1] != '"' {
		return "", malformedString
	}
	s := literal[1 : len(literal)-1]
	var out strings.Builder
	form := strictString
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c < 0x20:
			return "", malformedString
		case c == '\\':
			if i+1 >= len(s) {
				return "", malformedString
			}
			esc := s[i+1]
			i += 2
			if simple, ok := map[byte]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}[esc]; ok {
				out.WriteByte(simple)
				continue
			}
			if esc != 'u' {
				return "", malformedString
			}
			r, ok := hex4(s[i:])
			if !ok {
				return "", malformedString
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if r < 0xdc00 && i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if lo, ok := hex4(s[i+2:]); ok && lo >= 0xdc00 && lo <= 0xdfff {
						out.WriteRune(utf16.DecodeRune(r, lo))
						i += 6
						continue
					}
				}
				form = unmeantForm
				continue
			}
			out.WriteRune(r)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				form = unmeantForm
			}
			out.WriteString(s[i : i+size])
			i += size
		}
	}
	if form != strictString {
		return "", form
	}
	return out.String(), form
}

func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[:4]) {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// TestBodyStringsCoverRequests fails when a request body gains a string
// (a field, a list of them, a map's keys or values) that bodyStrings does
// not fuzz.
func TestBodyStringsCoverRequests(t *testing.T) {
	t.Parallel()
	var want []string
	for route, body := range map[string]any{
		"/start_instance":     StartInstanceRequest{},
		"/terminate_instance": TerminateInstanceRequest{},
		"/drain":              DrainRequest{},
	} {
		for _, p := range stringPaths(reflect.TypeOf(body), "") {
			want = append(want, route+" "+p)
		}
	}
	var have []string
	for _, f := range bodyStrings {
		p := f.path
		switch {
		case f.key:
			p += ".<key>"
		case strings.HasSuffix(p, "[0]"):
			p = strings.TrimSuffix(p, "[0]") + "[]"
		case strings.HasPrefix(p, "env.") || strings.HasPrefix(p, "labels."):
			p = p[:strings.Index(p, ".")] + ".<value>"
		}
		p = strings.ReplaceAll(p, "[0].", "[].")
		have = append(have, f.route+" "+p)
	}
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(want, have) {
		t.Fatalf("fuzzed strings differ from the requests' strings:\nrequests: %q\nfuzzed:   %q", want, have)
	}
}

// stringPaths lists the strings a value of type t holds, as JSON paths with
// [] for any list index, <key> for a map's keys and <value> for its values.
func stringPaths(t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return []string{path}
	case reflect.Slice:
		return stringPaths(t.Elem(), path+"[]")
	case reflect.Map:
		out := []string{joinPath(path, "<key>")}
		if t.Elem().Kind() == reflect.String {
			out = append(out, joinPath(path, "<value>"))
		}
		return out
	case reflect.Struct:
		var out []string
		for i := 0; i < t.NumField(); i++ {
			if name := jsonName(t.Field(i)); name != "" && t.Field(i).IsExported() {
				out = append(out, stringPaths(t.Field(i).Type, joinPath(path, name))...)
			}
		}
		return out
	}
	return nil
}
