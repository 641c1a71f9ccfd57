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
#
# Run as root (with or without --unit), the fast tier runs as the
# unprivileged user host-agent-unit (made here if missing) on a read-only
# copy of the tree, with its own Go caches under
# ${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}/unit, kept between runs:
# that the tier passes there is what proves it needs no root. Programs
# named like the daemons and host tools that integration tests use come
# first on its PATH and fail the tier if anything runs them, and a process
# of that user still alive afterwards fails it too.
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
# The unprivileged unit tier's guard (see unit_tier_unprivileged) comes
# before everything, /usr/local/bin included.
if [ -n "${HOST_AGENT_UNIT_GUARD:-}" ]; then PATH="${HOST_AGENT_UNIT_GUARD}:${PATH}"; fi
export CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations"
export HOST_AGENT_INTEGRATION=require

unit_user=host-agent-unit

# unit_tier_unprivileged runs deploy/test.sh --unit as $unit_user on a
# copy of the tree (a clone under a root-only home is out of its reach).
unit_tier_unprivileged() {
  local dir="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}/unit"
  id -u "$unit_user" >/dev/null 2>&1 ||
    useradd --system --user-group --no-create-home --home-dir "$dir/home" \
      --shell /usr/sbin/nologin "$unit_user"
  install -d -m 0755 "$dir" "$dir/guard"
  install -d -o "$unit_user" -g "$unit_user" -m 0700 "$dir/home" "$dir/build" "$dir/mod"
  rm -rf "$dir/src"
  install -d -m 0755 "$dir/src"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | tar -c --null --ignore-failed-read -T - | tar -x --no-same-owner -C "$dir/src"
  else
    tar -c --exclude=./.git . | tar -x --no-same-owner -C "$dir/src"
  fi
  chmod -R a+rX,go-w "$dir/src"
  local called="$dir/home/guard.log" b
  rm -f "$called"
  for b in containerd containerd-shim-runc-v2 ctr runc dockerd docker docker-proxy \
    registry docker-registry containerd-stargz-grpc iptables iptables-save iptables-restore \
    ip6tables ip6tables-save ip6tables-restore ip tc unshare nsenter mount xfs_quota mkfs.xfs; do
    printf '#!/bin/sh\necho "%s $*" >>%q\nexit 127\n' "$b" "$called" >"$dir/guard/$b"
    chmod 0755 "$dir/guard/$b"
  done
  local -a env=(HOME="$dir/home" PATH="$PATH" HOST_AGENT_UNIT_GUARD="$dir/guard"
    GOCACHE="$dir/build" GOMODCACHE="$dir/mod"
    GOTOOLCHAIN="$GOTOOLCHAIN" TMPDIR=/tmp LANG=C.UTF-8)
  local v
  for v in GOPROXY GOSUMDB GONOSUMDB GONOPROXY GOPRIVATE GOINSECURE GOFLAGS \
    SSL_CERT_FILE SSL_CERT_DIR HTTPS_PROXY HTTP_PROXY NO_PROXY https_proxy http_proxy no_proxy; do
    if [ -n "${!v:-}" ]; then env+=("$v=${!v}"); fi
  done
  local rc=0
  # shellcheck disable=SC2016 # $1 is the inner shell's
  runuser -u "$unit_user" -- env -i "${env[@]}" \
    bash -c 'cd "$1" && go mod download && exec bash deploy/test.sh --unit' _ "$dir/src" || rc=$?
  if [ -s "$called" ]; then
    echo "the unit tier ran programs it must not:"; cat "$called"; rc=1
  fi
  if pgrep -u "$unit_user" >/dev/null; then
    echo "the unit tier left processes behind:"; ps -u "$unit_user" -o pid,args; rc=1
  fi
  return "$rc"
}

if [ "$(id -u)" -eq 0 ]; then
  echo "== [${SECONDS}s] unit tier, as $unit_user: gofmt, go vet, go test -short"
  unit_tier_unprivileged
else
  echo "== [${SECONDS}s] gofmt"
  unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
  if [ -n "$unformatted" ]; then
    echo "gofmt would change:"; echo "$unformatted"; exit 1
  fi
  echo "== [${SECONDS}s] go vet"
  go vet ./...
  echo "== [${SECONDS}s] unit tier (go test -short)"
  go test -short -race -count=1 -timeout 10m ./...
fi
if $unit; then
  exit 0
fi
echo "== [${SECONDS}s] actionlint"
bash deploy/ci-checks.sh actionlint
echo "== [${SECONDS}s] arm64 cross-build"
bash deploy/ci-checks.sh cross-arm64
echo "== [${SECONDS}s] packages: .deb install test on a clean Debian root, systemd-analyze verify"
bash deploy/ci-checks.sh package
echo "== [${SECONDS}s] dockerd for the Docker back end's tests"
bash deploy/build-dockerd.sh >/dev/null
echo "== [${SECONDS}s] stargz-snapshotter for the lazy-pulling tests"
bash deploy/build-stargz.sh >/dev/null
echo "== [${SECONDS}s] OpenAPI lint (redocly, spectral)"
bash deploy/ci-checks.sh openapi
echo "== [${SECONDS}s] AsyncAPI validation"
bash deploy/ci-checks.sh asyncapi
echo "== [${SECONDS}s] alert rules (promtool)"
bash deploy/ci-checks.sh promtool
echo "== [${SECONDS}s] go test -race"
go test -race -count=1 -timeout 20m ./...
echo "== [${SECONDS}s] fuzz targets, briefly"
bash deploy/fuzz.sh
echo "== [${SECONDS}s] the image as deployed"
bash deploy/image-test.sh
echo "== [${SECONDS}s] all passed"
