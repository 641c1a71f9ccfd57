package backend

import (
	"slices"
	"strings"
	"testing"
)

func TestAuthorizedKeysPaths(t *testing.T) {
	t.Parallel()
	const passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"jovyan:x:1000:100::/home/jovyan:/bin/bash\n" +
		"svc:x:999:999::/:/usr/sbin/nologin\n" +
		"odd:x:998:998::/proc/self:/bin/sh\n" +
		"rel:x:997:997::home/rel:/bin/sh\n"
	root := []string{AuthorizedKeysPath}
	for _, tc := range []struct {
		user string
		want []string
	}{
		{"", root},
		{"root", root},
		{"0", root},
		{"jovyan", append(root, "/home/jovyan/.ssh/authorized_keys")},
		{"1000", append(root, "/home/jovyan/.ssh/authorized_keys")},
		{"jovyan:100", append(root, "/home/jovyan/.ssh/authorized_keys")},
		{"svc", root},
		{"odd", root},
		{"rel", root},
		{"nobody-here", root},
		{"4242", root},
	} {
		if got := AuthorizedKeysPaths(tc.user, strings.NewReader(passwd)); !slices.Equal(got, tc.want) {
			t.Errorf("USER %q: %v, want %v", tc.user, got, tc.want)
		}
	}
}
