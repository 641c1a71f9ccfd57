package server

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// FuzzStartInstanceDecode: decoding and validating any body must not panic,
// and whatever is accepted must convert to a spec that, sent again as a
// request, is accepted and converts to the same spec.
func FuzzStartInstanceDecode(f *testing.F) {
	for _, seed := range []string{
		`{"instance_id":"web-1","image":"nginx:1.27"}`,
		`{"instance_id":"a","image":"registry.example.com:5000/team/app@sha256:` +
			`0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`,
		`{"instance_id":"web-1","image":"nginx","command":["-c","echo hi",""],"entrypoint":["/bin/sh"],` +
			`"env":{"FOO":"bar","EMPTY":""},"resources":{"cpus":1.5,"memory_mb":512,"pids":100,"shm_mb":64},` +
			`"registry_auth":{"username":"u","password":"p"},"labels":{"team":"ml"}}`,
		`{"instance_id":"a","image":"nginx","env":{},"labels":{},"command":[],"resources":{},"registry_auth":{}}`,
		`{"instance_id":"a","image":"nginx","resources":{"cpus":1e999}}`,
		`{"instance_id":"a","image":"nginx","env":{"A":"1","A":"2"}}`,
		`{"instance_id":"a","image":"nginx"} trailing`,
		`{"instance_id":"a\u0000","image":"nginx"}`,
		`[{"instance_id":"a"}]`,
		`{"resources":{"memory_mb":99999999999999999999}}`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req StartInstanceRequest
		if err := decodeJSON(data, &req); err != nil {
			return
		}
		if err := req.validate(); err != nil {
			return
		}
		spec := req.toSpec()

		again, err := json.Marshal(requestFromSpec(spec))
		if err != nil {
			t.Fatalf("encoding %+v: %v", spec, err)
		}
		var req2 StartInstanceRequest
		if err := decodeJSON(again, &req2); err != nil {
			t.Fatalf("re-encoded request %s does not decode: %v", again, err)
		}
		if err := req2.validate(); err != nil {
			t.Fatalf("re-encoded request %s does not validate: %v", again, err)
		}
		if spec2 := req2.toSpec(); !reflect.DeepEqual(spec, spec2) || spec.Hash() != spec2.Hash() {
			t.Fatalf("spec changed on the way round:\n%+v\n%+v", spec, spec2)
		}
	})
}

// requestFromSpec is the request a client would send for spec.
func requestFromSpec(spec runtime.InstanceSpec) StartInstanceRequest {
	req := StartInstanceRequest{
		InstanceID: spec.ID,
		Image:      spec.Image,
		Command:    spec.Command,
		Entrypoint: spec.Entrypoint,
		Env:        spec.Env,
		Labels:     spec.Labels,
		Resources: &ResourcesRequest{
			CPUs: spec.Resources.CPUs, MemoryMB: spec.Resources.MemoryMB,
			Pids: spec.Resources.Pids, ShmMB: spec.Resources.ShmMB,
		},
	}
	if a := spec.RegistryAuth; a != nil {
		req.RegistryAuth = &RegistryAuthRequest{Username: a.Username, Password: a.Password}
	}
	return req
}
