package main

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestVolumeDirConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		env     map[string]string
		want    string
		wantVar string
	}{
		{map[string]string{}, "/var/lib/host-agent/volumes", ""},
		{map[string]string{"STATE_DIR": "/srv/agent"}, "/srv/agent/volumes", ""},
		{map[string]string{"VOLUME_DIR": "/data/volumes/"}, "/data/volumes", ""},
		{map[string]string{"VOLUME_DIR": "volumes"}, "", "VOLUME_DIR"},
	} {
		env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range tc.env {
			env[k] = v
		}
		c, err := loadConfig(envOf(env), filepath.Join(dir, "no.env"))
		var ce *configError
		switch {
		case tc.wantVar != "":
			if !errors.As(err, &ce) || ce.Var != tc.wantVar {
				t.Errorf("%v: %v, want an error naming %s", tc.env, err, tc.wantVar)
			}
		case err != nil || c.VolumeDir != tc.want:
			t.Errorf("%v: VOLUME_DIR %q (%v), want %q", tc.env, c.VolumeDir, err, tc.want)
		}
	}
}
