package volume

import (
	"strings"
	"testing"
)

func TestSpecValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		spec  Spec
		field string
	}{
		{Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1}, ""},
		{Spec{Name: "a.b_c-9", Owner: "user@example.com", SizeGB: MaxSizeGB}, ""},
		{Spec{Name: "", Owner: "o", SizeGB: 1}, "name"},
		{Spec{Name: "..", Owner: "o", SizeGB: 1}, "name"},
		{Spec{Name: "a/b", Owner: "o", SizeGB: 1}, "name"},
		{Spec{Name: ".hidden", Owner: "o", SizeGB: 1}, "name"},
		{Spec{Name: string(make([]byte, 64)), Owner: "o", SizeGB: 1}, "name"},
		{Spec{Name: "ds", Owner: "", SizeGB: 1}, "owner"},
		{Spec{Name: "ds", Owner: "a b", SizeGB: 1}, "owner"},
		{Spec{Name: "ds", Owner: "o", SizeGB: 0}, "size_gb"},
		{Spec{Name: "ds", Owner: "o", SizeGB: MaxSizeGB + 1}, "size_gb"},
	} {
		err := tc.spec.Validate()
		if got := fieldOf(err); got != tc.field {
			t.Errorf("%+v: field %q (%v), want %q", tc.spec, got, err, tc.field)
		}
	}
}

func TestProjectQuotaDetection(t *testing.T) {
	t.Parallel()
	info := []byte(`22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 7:0 / /srv/xfs rw,relatime shared:2 - xfs /dev/loop0 rw,attr2,inode64,prjquota
41 22 7:1 / /srv/plain rw,relatime shared:3 - xfs /dev/loop1 rw,attr2,inode64,noquota
42 22 7:2 / /srv/with\040space rw shared:4 - xfs /dev/loop2 rw,pquota
`)
	points := parseMountInfo(info)
	for _, tc := range []struct {
		dir, mount, why string
	}{
		{"/var/lib/host-agent/volumes", "", "on ext4, not XFS"},
		{"/srv/xfs/volumes", "/srv/xfs", ""},
		{"/srv/xfs", "/srv/xfs", ""},
		{"/srv/xfsother", "", "on ext4"},
		{"/srv/plain/v", "", "without prjquota"},
		{"/srv/with space/v", "/srv/with space", ""},
	} {
		q, why := projectQuotaOf(points, tc.dir)
		switch {
		case tc.mount != "" && (q == nil || q.mountPoint != tc.mount):
			t.Errorf("%s: %+v (%s), want project quotas at %s", tc.dir, q, why, tc.mount)
		case tc.mount == "" && (q != nil || !strings.Contains(why, tc.why)):
			t.Errorf("%s: %+v (%q), want none because %q", tc.dir, q, why, tc.why)
		}
	}
}
