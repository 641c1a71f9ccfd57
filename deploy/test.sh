#!/usr/bin/env bash
# Runs the whole test suite as root: installs what the tests need
# (deploy/setup-ci.sh: runc, containerd, CNI plugins, Go, ...), checks formatting and vet, and
# runs every test with the race detector: first the unit tier (go test -short),
# then everything. Integration tests start their own containerd and registry
# on 127.0.0.1; here they must run, not skip.
#
# deploy/test.sh --unit runs the fast tier only: gofmt, go vet and
# go test -short -race, as any user, with no daemon, root or network; it
# installs nothing (it needs Go on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
unit=false
case "${1:-}" in
  --unit) unit=true ;;
  "") ;;
  *) echo "usage: $0 [--unit]" >&2; exit 2 ;;
esac
$unit || bash deploy/setup-ci.sh
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations"
export HOST_AGENT_INTEGRATION=require

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== unit tier (go test -short)"
go test -short -race -count=1 -timeout 10m ./...
if $unit; then
  exit 0
fi
echo "== actionlint"
bash deploy/ci-checks.sh actionlint
echo "== arm64 cross-build"
bash deploy/ci-checks.sh cross-arm64
echo "== packages: .deb install test on a clean Debian root, systemd-analyze verify"
bash deploy/ci-checks.sh package
echo "== dockerd for the Docker back end's tests"
bash deploy/build-dockerd.sh >/dev/null
echo "== stargz-snapshotter for the lazy-pulling tests"
bash deploy/build-stargz.sh >/dev/null
echo "== OpenAPI lint (redocly, spectral)"
bash deploy/ci-checks.sh openapi
echo "== AsyncAPI validation"
bash deploy/ci-checks.sh asyncapi
echo "== alert rules (promtool)"
bash deploy/ci-checks.sh promtool
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
echo "== fuzz targets, briefly"
bash deploy/fuzz.sh
echo "== the image as deployed"
bash deploy/image-test.sh
