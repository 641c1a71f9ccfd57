package runtime

import "testing"

func TestValidateVolumeMountPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/data", true},
		{"/workspace/models", true},
		{"/root/data", true},
		{"/home/app", true},
		{"", false},
		{"data", false},
		{"/", false},
		{"/data/", false},
		{"/data/../etc", false},
		{"/a//b", false},
		{"/proc", false},
		{"/proc/x", false},
		{"/sys/kernel", false},
		{"/dev/x", false},
		{"/dev/shm", false},
		{"/root", false},
		{"/root/.ssh", false},
		{"/root/.ssh/keys", false},
		{"/etc", false},
		{"/etc/hosts", false},
		{"/run", false},
		{"/run/x", false},
		{"/data\nx", false},
	} {
		err := ValidateVolumeMountPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok %v", tc.path, err, tc.ok)
		}
	}
}

func TestValidateVolumeRequests(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		vols  []VolumeRequest
		field string
	}{
		{[]VolumeRequest{{Name: "a", MountPath: "/a"}, {Name: "b", MountPath: "/b"}}, ""},
		{[]VolumeRequest{{Name: "a", MountPath: "/a"}, {Name: "a", MountPath: "/b"}}, "volumes[1].name"},
		{[]VolumeRequest{{Name: "a", MountPath: "/a"}, {Name: "b", MountPath: "/a/b"}}, "volumes[1].mount_path"},
		{[]VolumeRequest{{Name: "a", MountPath: "/a/b"}, {Name: "b", MountPath: "/a"}}, "volumes[1].mount_path"},
		{[]VolumeRequest{{Name: "a", MountPath: "/ab"}, {Name: "b", MountPath: "/a"}}, ""},
		{[]VolumeRequest{{Name: "a", MountPath: "/proc/a"}}, "volumes[0].mount_path"},
		{make([]VolumeRequest, MaxVolumesPerRental+1), "volumes"},
	} {
		field, err := ValidateVolumeRequests(tc.vols)
		if field != tc.field {
			t.Errorf("%+v: field %q (%v), want %q", tc.vols, field, err, tc.field)
		}
	}
}

func TestVolumesLeaveOldHashesAlone(t *testing.T) {
	t.Parallel()
	s := InstanceSpec{ID: "i", Image: "img"}
	before := s.Hash()
	s.VolumeMounts = []VolumeMount{{Name: "v", HostPath: "/x", ContainerPath: "/data"}}
	if s.Hash() != before {
		t.Error("attached mounts change the hash")
	}
	s.Volumes = []VolumeRequest{{Name: "v", Owner: "o", MountPath: "/data"}}
	if s.Hash() == before {
		t.Error("volumes asked for are not part of the hash")
	}
}
