#!/usr/bin/env bash
# Checks CI runs besides the tests (called by deploy/test.sh):
#
#   deploy/ci-checks.sh actionlint    lint .github/workflows with actionlint
#   deploy/ci-checks.sh cross-arm64   the agent compiles for linux/arm64 (cgo,
#                                     Debian's aarch64 cross gcc)
#   deploy/ci-checks.sh promtool      the alert rules pass promtool check rules
#                                     and their tests (promtool test rules);
#                                     installs promtool (Debian's prometheus),
#                                     which the Go tests then use on the
#                                     agent's /metrics and the dashboard
#
# Tools built from the Go module proxy are cached outside the clone, keyed
# by version, under HOST_AGENT_CI_CACHE (default /var/cache/host-agent-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
export PATH="/usr/local/go/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

case "${1:-}" in
actionlint)
  bin="$CACHE/actionlint-$ACTIONLINT_VERSION/actionlint"
  if [ ! -x "$bin" ]; then
    mkdir -p "$(dirname "$bin")"
    GOBIN="$(dirname "$bin")" CGO_ENABLED=0 go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  fi
  "$bin" -color=false .github/workflows/*.yml
  echo "actionlint $ACTIONLINT_VERSION: clean"
  ;;
cross-arm64)
  command -v aarch64-linux-gnu-gcc >/dev/null ||
    { echo "aarch64-linux-gnu-gcc missing: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2; exit 1; }
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=aarch64-linux-gnu-gcc CGO_CFLAGS="-Wno-deprecated-declarations" \
    go build -trimpath -o "$out/" ./cmd/...
  file "$out/host-agent" 2>/dev/null || true
  echo "linux/arm64 build: ok"
  ;;
promtool)
  if ! command -v promtool >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends prometheus >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
  fi
  promtool --version 2>&1 | head -1
  promtool check rules deploy/prometheus/alerts.yml
  (cd deploy/prometheus && promtool test rules alerts_test.yml)
  ;;
*)
  echo "usage: $0 actionlint|cross-arm64|promtool" >&2
  exit 2
  ;;
esac
