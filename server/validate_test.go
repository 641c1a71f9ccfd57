package server

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// obj builds a start request body from the minimal valid one plus extra
// members, given as raw JSON text.
func obj(extra string) string {
	base := `"instance_id":"web-1","image":"nginx:1.27"`
	if extra == "" {
		return "{" + base + "}"
	}
	return "{" + base + "," + extra + "}"
}

func manyEntries(n int, valueLen int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:%q", fmt.Sprintf("K%d", i), strings.Repeat("v", valueLen))
	}
	b.WriteString("}")
	return b.String()
}

func manyPorts(n int) string {
	var b strings.Builder
	b.WriteString("[")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"container_port":%d}`, i+1)
	}
	b.WriteString("]")
	return b.String()
}

func TestStartInstanceValidation(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name  string
		body  string
		field string // "" with ok false: the body as a whole is rejected
		ok    bool
	}{
		{name: "minimal", body: obj(""), ok: true},
		{name: "gpu count", body: obj(`"gpu_count":8`), ok: true},
		{name: "gpus by uuid and index", body: obj(`"gpus":["GPU-6a4f1c2e-0000-1111-2222-333344445555","7"]`), ok: true},
		{name: "negative gpu count", body: obj(`"gpu_count":-1`), field: "gpu_count"},
		{name: "huge gpu count", body: obj(`"gpu_count":65`), field: "gpu_count"},
		{name: "gpu count and gpus", body: obj(`"gpu_count":1,"gpus":["0"]`), field: "gpus"},
		{name: "gpu all", body: obj(`"gpus":["all"]`), field: "gpus[0]"},
		{name: "gpu empty", body: obj(`"gpus":["0",""]`), field: "gpus[1]"},
		{name: "gpu twice", body: obj(`"gpus":["1","1"]`), field: "gpus[1]"},
		{name: "gpu bare prefix", body: obj(`"gpus":["GPU-"]`), field: "gpus[0]"},
		{name: "gpu with comma", body: obj(`"gpus":["GPU-a,GPU-b"]`), field: "gpus[0]"},
		{name: "mig profile", body: obj(`"mig_profile":"1g.10gb"`), ok: true},
		{name: "mig profile with media engines", body: obj(`"mig_profile":"1g.20gb+me"`), ok: true},
		{name: "mig device by uuid", body: obj(`"gpus":["MIG-5f2c8a0e-1b2c-4d3e-8f90-0a1b2c3d4e5f"]`), ok: true},
		{name: "mig profile unknown form", body: obj(`"mig_profile":"10gb"`), field: "mig_profile"},
		{name: "mig profile all", body: obj(`"mig_profile":"all"`), field: "mig_profile"},
		{name: "mig profile with count", body: obj(`"mig_profile":"1g.10gb","gpu_count":1`), field: "mig_profile"},
		{name: "mig profile with gpus", body: obj(`"mig_profile":"1g.10gb","gpus":["0"]`), field: "mig_profile"},
		{name: "mig uuid malformed", body: obj(`"gpus":["MIG-GPU-1/2/3"]`), field: "gpus[0]"},
		{name: "everything", ok: true, body: obj(`"command":["-c","echo hi"],"entrypoint":["/bin/sh"],` +
			`"env":{"FOO":"bar","EMPTY":""},"resources":{"cpus":1.5,"memory_mb":512,"pids":100,"shm_mb":64},` +
			`"registry_auth":{"username":"u","password":"p"},"labels":{"team":"ml","a.b/c_d-e":"x"}`)},
		{name: "id of 63", ok: true, body: `{"instance_id":"` + long(63) + `","image":"nginx"}`},
		{name: "id starting with digit", ok: true, body: `{"instance_id":"0a_b.c-d","image":"nginx"}`},
		{name: "image by digest", ok: true, body: `{"instance_id":"a","image":"registry.example.com:5000/team/app@sha256:` + strings.Repeat("a", 64) + `"}`},
		{name: "empty args allowed", ok: true, body: obj(`"entrypoint":["sh",""],"command":[""]`)},
		{name: "empty entrypoint list", ok: true, body: obj(`"entrypoint":[]`)},
		{name: "nulls", ok: true, body: obj(`"resources":null,"env":null,"registry_auth":null`)},
		{name: "zero resources are defaults", ok: true, body: obj(`"resources":{"cpus":0,"memory_mb":0,"pids":0,"shm_mb":0}`)},
		{name: "smallest limits", ok: true, body: obj(`"resources":{"cpus":0.01,"memory_mb":4,"pids":1,"shm_mb":1}`)},
		{name: "bandwidth limits", ok: true, body: obj(`"resources":{"egress_mbps":50,"ingress_mbps":400000}`)},
		{name: "largest cpus", ok: true, body: obj(`"resources":{"cpus":1024}`)},
		{name: "username alone", ok: true, body: obj(`"registry_auth":{"username":"u"}`)},
		{name: "1000 env entries", ok: true, body: obj(`"env":` + manyEntries(1000, 1))},
		{name: "64 labels", ok: true, body: obj(`"labels":` + manyEntries(64, 1))},

		{name: "empty body", body: ""},
		{name: "whitespace body", body: "  \n"},
		{name: "truncated", body: `{"instance_id":"a"`},
		{name: "not JSON", body: `instance_id=a`},
		{name: "array", body: `[]`},
		{name: "null", body: `null`},
		{name: "trailing object", body: obj("") + `{}`},
		{name: "trailing garbage", body: obj("") + `x`},
		{name: "unknown field", body: obj(`"extra":1`), field: "extra"},
		{name: "unknown nested field", body: obj(`"resources":{"gpus":1}`), field: "resources.gpus"},
		{name: "unknown auth field", body: obj(`"registry_auth":{"token":"x"}`), field: "registry_auth.token"},
		{name: "field name case", body: `{"Instance_ID":"a","image":"nginx"}`, field: "Instance_ID"},
		{name: "duplicate field", body: obj(`"image":"redis"`), field: "image"},
		{name: "duplicate env key", body: obj(`"env":{"A":"1","A":"2"}`), field: "env.A"},

		{name: "id missing", body: `{"image":"nginx"}`, field: "instance_id"},
		// Defect 7: IDs containerd refuses only after a full pull.
		{name: "id ending in a dash (defect 7)", body: `{"instance_id":"job-1-","image":"nginx"}`, field: "instance_id"},
		{name: "id with two dots in a row (defect 7)", body: `{"instance_id":"a..b","image":"nginx"}`, field: "instance_id"},
		{name: "id with dot and dash in a row (defect 7)", body: `{"instance_id":"a.-b","image":"nginx"}`, field: "instance_id"},
		{name: "id wrong type", body: `{"instance_id":5,"image":"nginx"}`, field: "instance_id"},
		{name: "id too long", body: `{"instance_id":"` + long(64) + `","image":"nginx"}`, field: "instance_id"},
		{name: "id leading dash", body: `{"instance_id":"-a","image":"nginx"}`, field: "instance_id"},
		{name: "id leading dot", body: `{"instance_id":".a","image":"nginx"}`, field: "instance_id"},
		{name: "id with slash", body: `{"instance_id":"a/b","image":"nginx"}`, field: "instance_id"},
		{name: "id with space", body: `{"instance_id":"a b","image":"nginx"}`, field: "instance_id"},
		{name: "id non-ASCII", body: `{"instance_id":"ä","image":"nginx"}`, field: "instance_id"},
		{name: "id NUL", body: `{"instance_id":"a\u0000","image":"nginx"}`, field: "instance_id"},

		{name: "image missing", body: `{"instance_id":"a"}`, field: "image"},
		{name: "image upper case", body: `{"instance_id":"a","image":"NGINX"}`, field: "image"},
		{name: "image empty tag", body: `{"instance_id":"a","image":"nginx:"}`, field: "image"},
		{name: "image NUL", body: `{"instance_id":"a","image":"ngi\u0000nx"}`, field: "image"},
		{name: "image wrong type", body: `{"instance_id":"a","image":["nginx"]}`, field: "image"},

		{name: "entrypoint empty executable", body: obj(`"entrypoint":[""]`), field: "entrypoint[0]"},
		{name: "entrypoint NUL", body: obj(`"entrypoint":["sh","a\u0000"]`), field: "entrypoint[1]"},
		{name: "entrypoint string", body: obj(`"entrypoint":"sh"`), field: "entrypoint"},
		{name: "command NUL", body: obj(`"command":["ok","\u0000"]`), field: "command[1]"},
		{name: "command element type", body: obj(`"command":["ok",1]`), field: "command[1]"},

		{name: "env empty name", body: obj(`"env":{"":"x"}`), field: "env"},
		{name: "env name with =", body: obj(`"env":{"A=B":"x"}`), field: "env.A=B"},
		{name: "env name NUL", body: obj(`"env":{"A\u0000":"x"}`), field: "env.A\x00"},
		{name: "env value NUL", body: obj(`"env":{"FOO":"x\u0000"}`), field: "env.FOO"},
		{name: "env value type", body: obj(`"env":{"FOO":1}`), field: "env.FOO"},
		{name: "env not object", body: obj(`"env":["FOO=1"]`), field: "env"},
		{name: "env too many", body: obj(`"env":` + manyEntries(1001, 1)), field: "env"},

		{name: "cpus negative", body: obj(`"resources":{"cpus":-1}`), field: "resources.cpus"},
		{name: "cpus too small", body: obj(`"resources":{"cpus":0.001}`), field: "resources.cpus"},
		{name: "cpus too many", body: obj(`"resources":{"cpus":1024.5}`), field: "resources.cpus"},
		{name: "cpus string", body: obj(`"resources":{"cpus":"2"}`), field: "resources.cpus"},
		{name: "cpus out of float range", body: obj(`"resources":{"cpus":1e999}`), field: "resources.cpus"},
		{name: "memory too small", body: obj(`"resources":{"memory_mb":3}`), field: "resources.memory_mb"},
		{name: "memory negative", body: obj(`"resources":{"memory_mb":-512}`), field: "resources.memory_mb"},
		{name: "memory too large", body: obj(`"resources":{"memory_mb":16777217}`), field: "resources.memory_mb"},
		{name: "memory fraction", body: obj(`"resources":{"memory_mb":1.5}`), field: "resources.memory_mb"},
		{name: "memory overflow", body: obj(`"resources":{"memory_mb":99999999999999999999}`), field: "resources.memory_mb"},
		{name: "pids negative", body: obj(`"resources":{"pids":-1}`), field: "resources.pids"},
		{name: "pids too many", body: obj(`"resources":{"pids":4194305}`), field: "resources.pids"},
		{name: "shm negative", body: obj(`"resources":{"shm_mb":-5}`), field: "resources.shm_mb"},
		{name: "egress negative", body: obj(`"resources":{"egress_mbps":-1}`), field: "resources.egress_mbps"},
		{name: "egress huge", body: obj(`"resources":{"egress_mbps":400001}`), field: "resources.egress_mbps"},
		{name: "ingress negative", body: obj(`"resources":{"ingress_mbps":-1}`), field: "resources.ingress_mbps"},
		{name: "ingress huge", body: obj(`"resources":{"ingress_mbps":9223372036854775807}`), field: "resources.ingress_mbps"},
		{name: "egress fractional", body: obj(`"resources":{"egress_mbps":1.5}`), field: "resources.egress_mbps"},
		{name: "resources not object", body: obj(`"resources":4`), field: "resources"},

		{name: "password without username", body: obj(`"registry_auth":{"password":"p"}`), field: "registry_auth.username"},
		{name: "password NUL", body: obj(`"registry_auth":{"username":"u","password":"p\u0000"}`), field: "registry_auth.password"},
		{name: "auth not object", body: obj(`"registry_auth":"u:p"`), field: "registry_auth"},

		{name: "labels too many", body: obj(`"labels":` + manyEntries(65, 1)), field: "labels"},
		{name: "label empty key", body: obj(`"labels":{"":"x"}`), field: "labels"},
		{name: "label key space", body: obj(`"labels":{"a b":"x"}`), field: "labels.a b"},
		{name: "label key too long", body: obj(`"labels":{"` + long(129) + `":"x"}`), field: "labels." + long(129)},
		{name: "label value too long", body: obj(`"labels":{"k":"` + long(4096) + `"}`), field: "labels.k"},
		{name: "label value NUL", body: obj(`"labels":{"k":"\u0000"}`), field: "labels.k"},
		{name: "label value type", body: obj(`"labels":{"k":true}`), field: "labels.k"},

		{name: "ports", ok: true, body: obj(`"ports":[{"container_port":22,"protocol":"tcp"},{"container_port":8888},{"container_port":8888,"protocol":"udp"}]`)},
		{name: "64 ports", ok: true, body: obj(`"ports":` + manyPorts(64))},
		{name: "65 ports", body: obj(`"ports":` + manyPorts(65)), field: "ports"},
		{name: "port twice", body: obj(`"ports":[{"container_port":22},{"container_port":22,"protocol":"tcp"}]`), field: "ports"},
		{name: "port 0", body: obj(`"ports":[{"container_port":0}]`), field: "ports[0].container_port"},
		{name: "port missing", body: obj(`"ports":[{"protocol":"udp"}]`), field: "ports[0].container_port"},
		{name: "port too large", body: obj(`"ports":[{"container_port":22},{"container_port":65536}]`), field: "ports[1].container_port"},
		{name: "port sctp", body: obj(`"ports":[{"container_port":22,"protocol":"sctp"}]`), field: "ports[0].protocol"},
		{name: "port upper case protocol", body: obj(`"ports":[{"container_port":22,"protocol":"TCP"}]`), field: "ports[0].protocol"},
		{name: "port string", body: obj(`"ports":[{"container_port":"22"}]`), field: "ports[0].container_port"},
		{name: "port host_port", body: obj(`"ports":[{"container_port":22,"host_port":40000}]`), field: "ports[0].host_port"},

		// Strings that are not text are refused, never turned into U+FFFD.
		{name: "command not UTF-8", body: obj(`"command":["ok","a` + "\xff" + `"]`), field: "command[1]"},
		{name: "env value lone surrogate", body: obj(`"env":{"FOO":"x\ud800"}`), field: "env.FOO"},
		{name: "env value reversed pair", body: obj(`"env":{"FOO":"\ude00\ud83d"}`), field: "env.FOO"},
		{name: "env value high then high", body: obj(`"env":{"FOO":"\ud83d\ud83d\ude00"}`), field: "env.FOO"},
		{name: "env name not UTF-8", body: obj(`"env":{"A` + "\xc3" + `":"x"}`), field: `env.A\xc3`},
		{name: "label key lone surrogate", body: obj(`"labels":{"k\udfff":"x"}`), field: `labels.k\udfff`},
		{name: "top-level key not UTF-8", body: obj(`"image` + "\xff" + `":"x"`), field: `image\xff`},
		{name: "id lone surrogate", body: `{"instance_id":"a\ud800","image":"nginx"}`, field: "instance_id"},
		{name: "surrogate pair", ok: true, body: obj(`"env":{"FOO":"\ud83d\ude00 caf\u00e9 \\ud800 \ufffd"},"labels":{"k":"` + "\xef\xbf\xbd" + `"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var req StartInstanceRequest
			err := decodeJSON([]byte(tt.body), &req)
			if err == nil {
				err = req.validate()
			}
			if tt.ok {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FieldError for %q", err, tt.field)
			}
			if fe.Field != tt.field {
				t.Errorf("field %q (%s), want %q", fe.Field, fe.Msg, tt.field)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("a FieldError is not InvalidArgument")
			}
		})
	}
}

func TestTerminateInstanceValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body  string
		field string
		ok    bool
	}{
		{body: `{"instance_id":"a"}`, ok: true},
		{body: `{"instance_id":"a","timeout_seconds":0}`, ok: true},
		{body: `{"instance_id":"a","timeout_seconds":3600}`, ok: true},
		{body: `{"instance_id":"a","timeout_seconds":null}`, ok: true},
		{body: `{"timeout_seconds":1}`, field: "instance_id"},
		{body: `{"instance_id":"a/../b"}`, field: "instance_id"},
		{body: `{"instance_id":"a","timeout_seconds":-1}`, field: "timeout_seconds"},
		{body: `{"instance_id":"a","timeout_seconds":3601}`, field: "timeout_seconds"},
		{body: `{"instance_id":"a","timeout_seconds":1.5}`, field: "timeout_seconds"},
		{body: `{"instance_id":"a","timeout_seconds":"10"}`, field: "timeout_seconds"},
		{body: `{"instance_id":"a","force":true}`, field: "force"},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			t.Parallel()
			var req TerminateInstanceRequest
			err := decodeJSON([]byte(tt.body), &req)
			if err == nil {
				err = req.validate()
			}
			if tt.ok {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err = %v, want a FieldError for %q", err, tt.field)
			}
		})
	}
}

// TestToSpec checks the conversion, and that leaving a list or map out and
// sending it empty make the same spec: otherwise a repeated start would be
// taken for a different one and answered 409.
func TestToSpec(t *testing.T) {
	t.Parallel()
	var full StartInstanceRequest
	body := obj(`"command":["a"],"entrypoint":["sh"],"env":{"A":"1"},"labels":{"l":"v"},` +
		`"resources":{"cpus":2,"memory_mb":64,"pids":10,"shm_mb":8,"egress_mbps":50,"ingress_mbps":70},"registry_auth":{"username":"u","password":"p"}`)
	if err := decodeJSON([]byte(body), &full); err != nil {
		t.Fatal(err)
	}
	want := runtime.InstanceSpec{
		ID: "web-1", Image: "docker.io/library/nginx:1.27", Command: []string{"a"}, Entrypoint: []string{"sh"},
		Env: map[string]string{"A": "1"}, Labels: map[string]string{"l": "v"},
		Resources:    runtime.Resources{CPUs: 2, MemoryMB: 64, Pids: 10, ShmMB: 8, EgressMbps: 50, IngressMbps: 70},
		RegistryAuth: &runtime.RegistryAuth{Username: "u", Password: "p"},
	}
	if got := full.toSpec(); !reflect.DeepEqual(got, want) {
		t.Errorf("toSpec = %+v, want %+v", got, want)
	}

	var bare, empty StartInstanceRequest
	if err := decodeJSON([]byte(obj("")), &bare); err != nil {
		t.Fatal(err)
	}
	emptyBody := obj(`"command":[],"entrypoint":[],"env":{},"labels":{},"resources":{},"registry_auth":{}`)
	if err := decodeJSON([]byte(emptyBody), &empty); err != nil {
		t.Fatal(err)
	}
	if a, b := bare.toSpec(), empty.toSpec(); !reflect.DeepEqual(a, b) || a.Hash() != b.Hash() {
		t.Errorf("omitted and empty fields differ:\n%+v\n%+v", a, b)
	}
}

func TestDecodeJSONTypeErrorNamesField(t *testing.T) {
	t.Parallel()
	// The pointer field goes through checkValue's pointer case.
	var req TerminateInstanceRequest
	err := decodeJSON([]byte(`{"instance_id":"a","timeout_seconds":{}}`), &req)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "timeout_seconds" {
		t.Fatalf("err = %v", err)
	}
}
