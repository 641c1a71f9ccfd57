package volume

import (
	"context"
	"fmt"
	"slices"
	"strconv"
)

// projectIDBase is the first XFS project ID the store hands out, far above
// the small IDs an operator's /etc/projid uses.
const projectIDBase = 0x48410000

// projectQuota enforces volume sizes with XFS project quotas on the file
// system mounted at mountPoint.
type projectQuota struct{ mountPoint string }

// detectProjectQuota finds whether dir lies on XFS mounted with project
// quotas enforced; if not, it says why.
func detectProjectQuota(dir string) (*projectQuota, string) {
	points, err := mountPoints()
	if err != nil {
		return nil, err.Error()
	}
	return projectQuotaOf(points, dir)
}

// projectQuotaOf is detectProjectQuota over a parsed mountinfo.
func projectQuotaOf(points map[string]mountEntry, dir string) (*projectQuota, string) {
	m, ok := mountOf(points, dir)
	switch {
	case !ok:
		return nil, "no mount holds " + dir
	case m.FSType != "xfs":
		return nil, fmt.Sprintf("%s is on %s, not XFS", dir, m.FSType)
	case !slices.ContainsFunc(m.Options, func(o string) bool { return o == "prjquota" || o == "pquota" }):
		return nil, fmt.Sprintf("%s is on XFS mounted at %s without prjquota", dir, m.Point)
	}
	return &projectQuota{mountPoint: m.Point}, ""
}

// apply makes dir the root of project id, limited to limit bytes.
func (q *projectQuota) apply(ctx context.Context, dir string, id uint32, limit int64) error {
	pid := strconv.FormatUint(uint64(id), 10)
	return run(ctx, "xfs_quota", "-x",
		"-c", fmt.Sprintf("project -s -p %s %s", dir, pid),
		"-c", fmt.Sprintf("limit -p bsoft=%dm bhard=%dm %s", limit>>20, limit>>20, pid),
		q.mountPoint)
}

// clear lifts project id's limit.
func (q *projectQuota) clear(ctx context.Context, id uint32) error {
	return run(ctx, "xfs_quota", "-x", "-c", fmt.Sprintf("limit -p bsoft=0 bhard=0 %d", id), q.mountPoint)
}
