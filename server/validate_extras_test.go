package server

import (
	"errors"
	"strings"
	"testing"
)

const testSSHKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGzGkVQGQ7oGbrBzpM7H0Dw1Eo3zJkq9KbVHV9l0w7zS tenant@laptop"

func TestUlimitsAndSSHKeysValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		body  string
		field string
		ok    bool
	}{
		{name: "ulimits", ok: true, body: obj(`"ulimits":{"memlock":-1,"nofile":1048576,"core":0,"stack":8388608}`)},
		{name: "ulimit unknown", body: obj(`"ulimits":{"files":10}`), field: "ulimits.files"},
		{name: "ulimit below -1", body: obj(`"ulimits":{"stack":-2}`), field: "ulimits.stack"},
		{name: "nofile unlimited", body: obj(`"ulimits":{"nofile":-1}`), field: "ulimits.nofile"},
		{name: "nofile above nr_open", body: obj(`"ulimits":{"nofile":1048577}`), field: "ulimits.nofile"},
		{name: "ulimit fraction", body: obj(`"ulimits":{"core":1.5}`), field: "ulimits.core"},
		{name: "ulimit string", body: obj(`"ulimits":{"core":"unlimited"}`), field: "ulimits.core"},

		{name: "ssh key", ok: true, body: obj(`"ssh_authorized_keys":["` + testSSHKey + `"]`)},
		{name: "ssh key with options", ok: true, body: obj(`"ssh_authorized_keys":["from=\"10.0.0.0/8\",no-pty ` + testSSHKey + `"]`)},
		{name: "ssh garbage", body: obj(`"ssh_authorized_keys":["` + testSSHKey + `","hello"]`), field: "ssh_authorized_keys[1]"},
		{name: "ssh bad base64", body: obj(`"ssh_authorized_keys":["ssh-ed25519 AAAA!!!"]`), field: "ssh_authorized_keys[0]"},
		{name: "ssh two keys", body: obj(`"ssh_authorized_keys":["` + testSSHKey + `\n` + testSSHKey + `"]`), field: "ssh_authorized_keys[0]"},
		{name: "ssh private key", body: obj(`"ssh_authorized_keys":["-----BEGIN OPENSSH PRIVATE KEY-----"]`), field: "ssh_authorized_keys[0]"},
		{name: "ssh too many", body: obj(`"ssh_authorized_keys":[` + strings.Repeat(`"`+testSSHKey+`",`, 100) + `"` + testSSHKey + `"]`), field: "ssh_authorized_keys"},
		{name: "ssh not a list", body: obj(`"ssh_authorized_keys":"` + testSSHKey + `"`), field: "ssh_authorized_keys"},
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
				spec := req.toSpec()
				if len(req.Ulimits) != len(spec.Ulimits) || len(req.SSHAuthorizedKeys) != len(spec.SSHAuthorizedKeys) {
					t.Errorf("spec %+v", spec)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err = %v, want a *FieldError for %q", err, tt.field)
			}
		})
	}
}

// A writable-layer limit is taken, in whole GiB, and reaches the spec; a
// negative or absurd one is refused naming the field.
func TestDiskLimitValidated(t *testing.T) {
	t.Parallel()
	var req StartInstanceRequest
	if err := decodeJSON([]byte(obj(`"resources":{"disk_gb":50}`)), &req); err != nil {
		t.Fatal(err)
	}
	if err := req.validate(); err != nil {
		t.Fatalf("disk_gb 50: %v", err)
	}
	if got := req.toSpec().Resources.DiskGB; got != 50 {
		t.Fatalf("spec's DiskGB %d, want 50", got)
	}
	for _, bad := range []string{`-1`, `1048577`} {
		var req StartInstanceRequest
		if err := decodeJSON([]byte(obj(`"resources":{"disk_gb":`+bad+`}`)), &req); err != nil {
			t.Fatal(err)
		}
		var fe *FieldError
		if err := req.validate(); !errors.As(err, &fe) || fe.Field != "resources.disk_gb" {
			t.Errorf("disk_gb %s: %v, want a *FieldError for resources.disk_gb", bad, err)
		}
	}
}
