#!/usr/bin/env bash
# Checks CI runs besides the tests (called by deploy/test.sh):
#
#   deploy/ci-checks.sh actionlint    lint .github/workflows with actionlint
#   deploy/ci-checks.sh cross-arm64   the agent compiles for linux/arm64 (cgo,
#                                     Debian's aarch64 cross gcc)
#   deploy/ci-checks.sh openapi       server/openapi.json passes redocly's
#                                     recommended rules and spectral:oas with
#                                     no error and no warning
#   deploy/ci-checks.sh asyncapi      server/asyncapi.yaml is a valid AsyncAPI
#                                     document, without warnings
#
# Tools built from the Go module proxy, and npm packages, are cached outside
# the clone, keyed by version, under HOST_AGENT_CI_CACHE (default
# /var/cache/host-agent-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
REDOCLY_VERSION="${REDOCLY_VERSION:-2.77.0}"
SPECTRAL_VERSION="${SPECTRAL_VERSION:-6.16.3}"
ASYNCAPI_VERSION="${ASYNCAPI_VERSION:-6.2.0}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
export PATH="/usr/local/go/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

# npm_tool PACKAGE VERSION BIN prints the path of BIN from the npm package
# PACKAGE@VERSION, installed once under $CACHE (into a temporary folder
# first, so that an interrupted install is not taken for a finished one).
npm_tool() {
  local name dir
  name=$(printf '%s' "$1" | tr -d '@' | tr '/' '-')
  dir="$CACHE/npm-$name-$2"
  if [ ! -x "$dir/node_modules/.bin/$3" ]; then
    command -v npm >/dev/null ||
      { echo "npm missing: install Node.js 20 or later with npm (apt-get install nodejs npm)" >&2; exit 1; }
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-audit --no-fund --loglevel=error "$1@$2" >&2
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir/node_modules/.bin/$3"
}

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
openapi)
  redocly=$(npm_tool @redocly/cli "$REDOCLY_VERSION" redocly)
  spectral=$(npm_tool @stoplight/spectral-cli "$SPECTRAL_VERSION" spectral)
  export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
  # redocly exits non-zero on errors only: its JSON report counts the
  # warnings too.
  report=$("$redocly" lint --extends recommended --format json server/openapi.json 2>/dev/null) || true
  problems=$(printf '%s' "$report" | node -e '
    let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
      try { const t = JSON.parse(s).totals; console.log(t.errors + t.warnings); } catch (e) { console.log("unreadable"); }
    });')
  if [ "$problems" != 0 ]; then
    "$redocly" lint --extends recommended --format stylish server/openapi.json >&2 || true
    echo "redocly $REDOCLY_VERSION: server/openapi.json has problems ($problems errors and warnings)" >&2
    exit 1
  fi
  echo "redocly $REDOCLY_VERSION (recommended): clean"
  "$spectral" lint --ruleset deploy/spectral.yaml --fail-severity warn server/openapi.json
  echo "spectral $SPECTRAL_VERSION (spectral:oas): clean"
  ;;
asyncapi)
  asyncapi=$(npm_tool @asyncapi/cli "$ASYNCAPI_VERSION" asyncapi)
  # No usage metrics: the check must neither reach the network nor write
  # to the home directory. The CLI reads node-config settings from the
  # working directory; an empty set for its environment keeps that quiet.
  settings="$CACHE/npm-asyncapi-cli-$ASYNCAPI_VERSION.settings"
  if [ ! -f "$settings/production.json" ]; then
    mkdir -p "$settings"
    echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"ci"}' >"$settings/analytics.json"
    echo '{}' >"$settings/production.json"
  fi
  CI=true ASYNCAPI_METRICS_CONFIG_PATH="$settings/analytics.json" NODE_CONFIG_DIR="$settings" SUPPRESS_NO_CONFIG_WARNING=1 \
    "$asyncapi" validate --fail-severity warn server/asyncapi.yaml
  echo "asyncapi $ASYNCAPI_VERSION validate: clean"
  ;;
*)
  echo "usage: $0 actionlint|cross-arm64|openapi|asyncapi" >&2
  exit 2
  ;;
esac
