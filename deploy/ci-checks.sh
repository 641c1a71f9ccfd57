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
#   deploy/ci-checks.sh package       the amd64 .deb and .rpm build; the .deb
#                                     installs on a clean Debian root (files,
#                                     modes, unit enabled, the binary runs),
#                                     upgrades keeping its configuration and
#                                     removes; systemd-analyze verify of the unit
#   deploy/ci-checks.sh promtool      the alert rules pass promtool check rules
#                                     and their tests (promtool test rules);
#                                     installs promtool (Debian's prometheus),
#                                     which the Go tests then use on the
#                                     agent's /metrics and the dashboard
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
package)
  [ "$(id -u)" -eq 0 ] || { echo "ci-checks.sh package must run as root (chroot)" >&2; exit 1; }
  export PATH="$PATH:/usr/sbin:/sbin"
  fail() { echo "package: $*" >&2; exit 1; }
  version="0.0.0+ci"
  built=$(bash deploy/package.sh "$version" amd64)
  deb=$(grep '\.deb$' <<<"$built")
  rpm=$(grep '\.rpm$' <<<"$built")
  work=$(mktemp -d /tmp/host-agent-package.XXXXXX)
  trap 'rm -rf "$work"' EXIT

  # systemd-analyze verify checks that ExecStart's program exists: point it
  # at the binary just built; any message (unknown keys, bad values) fails.
  command -v systemd-analyze >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  }
  mkdir "$work/unit"
  sed "s#^ExecStart=/usr/bin/host-agent#ExecStart=$(pwd)/dist/build-amd64/host-agent#" deploy/host-agent.service >"$work/unit/host-agent.service"
  grep -q "^ExecStart=$(pwd)/dist/build-amd64/host-agent\$" "$work/unit/host-agent.service" || fail "the unit's ExecStart is not /usr/bin/host-agent"
  if ! msgs=$(systemd-analyze verify "$work/unit/host-agent.service" 2>&1) || [ -n "$msgs" ]; then
    fail "systemd-analyze verify deploy/host-agent.service: ${msgs:-failed}"
  fi
  echo "systemd-analyze verify deploy/host-agent.service: clean"

  # A clean Debian root: the image test's debootstrapped one, cached (as a
  # directory, or inside its base image tarball); made the same way if neither.
  rootfs="$CACHE/rootfs-bookworm-minbase"
  base_tar="$CACHE/images/debian-bookworm-minbase.tar"
  root="$work/root"
  mkdir "$root"
  if [ -d "$rootfs" ]; then
    cp -a "$rootfs/." "$root/"
  elif [ -s "$base_tar" ]; then
    tar -C "$root" -xf "$base_tar"
  else
    command -v debootstrap >/dev/null || fail "debootstrap missing (deploy/setup-ci.sh installs it)"
    rm -rf "$rootfs.tmp"
    debootstrap --variant=minbase bookworm "$rootfs.tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    rm -rf "$rootfs.tmp/var/cache/apt/archives/"*.deb "$rootfs.tmp/var/lib/apt/lists/"*
    mv "$rootfs.tmp" "$rootfs"
    cp -a "$rootfs/." "$root/"
  fi
  [ ! -e "$root/usr/bin/systemctl" ] || fail "the clean root has systemd: the test of the postinst without it would not run"

  cp "$deb" "$root/tmp/host-agent.deb"
  chroot "$root" dpkg -i /tmp/host-agent.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i failed"; }
  mode() { stat -c '%a %U:%G %F' "$root$1"; }
  [ "$(mode /usr/bin/host-agent)" = "755 root:root regular file" ] || fail "/usr/bin/host-agent: $(mode /usr/bin/host-agent)"
  [ "$(mode /etc/host-agent/env)" = "600 root:root regular file" ] || fail "/etc/host-agent/env: $(mode /etc/host-agent/env), want 600"
  [ "$(mode /var/lib/host-agent)" = "700 root:root directory" ] || fail "/var/lib/host-agent: $(mode /var/lib/host-agent), want 700"
  [ "$(mode /var/lib/host-agent/token)" = "600 root:root regular file" ] || fail "token: $(mode /var/lib/host-agent/token)"
  grep -Eqx '[0-9a-f]{64}' "$root/var/lib/host-agent/token" || fail "the generated token is not 64 hex digits"
  cmp deploy/host-agent.service "$root/usr/lib/systemd/system/host-agent.service" || fail "the unit installed differs from deploy/host-agent.service"
  wants="$root/etc/systemd/system/multi-user.target.wants/host-agent.service"
  [ "$(readlink "$wants")" = /usr/lib/systemd/system/host-agent.service ] || fail "the unit is not enabled (no $wants)"
  chroot "$root" dpkg-query -W -f '${Conffiles}\n' host-agent | grep -q '^ /etc/host-agent/env ' || fail "/etc/host-agent/env is not a conffile"
  out=$(chroot "$root" host-agent version) || fail "host-agent version failed in the clean root"
  [[ $out == "host-agent $version "* ]] || fail "host-agent version: $out"
  echo "installed: $out"

  # The agent as the unit runs it reads the env file itself: it asks for
  # AGENT_ID (exit 2, no daemon) and refuses the file once others may read it.
  envvar=$(sed -n 's/^Environment=\(ENV_FILE=.*\)$/\1/p' deploy/host-agent.service)
  [ "$envvar" = ENV_FILE=/etc/host-agent/env ] || fail "the unit does not set ENV_FILE=/etc/host-agent/env"
  rc=0; out=$(chroot "$root" env "$envvar" host-agent 2>&1) || rc=$?
  [ "$rc" = 2 ] && [[ $out == *AGENT_ID* ]] || fail "host-agent with the packaged env file: exit $rc, $out"
  chmod 644 "$root/etc/host-agent/env"
  rc=0; out=$(chroot "$root" env "$envvar" AGENT_ID=ci host-agent 2>&1) || rc=$?
  [ "$rc" = 2 ] && [[ $out == *ENV_FILE*/etc/host-agent/env*0644* ]] || fail "host-agent with a world-readable env file: exit $rc, $out"
  chmod 600 "$root/etc/host-agent/env"

  # An upgrade keeps a changed configuration and the token; removal keeps
  # the configuration, purge removes it.
  echo "AGENT_ID=ci-host" >>"$root/etc/host-agent/env"
  token=$(cat "$root/var/lib/host-agent/token")
  chroot "$root" dpkg -i /tmp/host-agent.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i over itself failed"; }
  grep -qx AGENT_ID=ci-host "$root/etc/host-agent/env" || fail "reinstalling replaced the changed /etc/host-agent/env"
  [ "$(mode /etc/host-agent/env)" = "600 root:root regular file" ] || fail "/etc/host-agent/env after reinstall: $(mode /etc/host-agent/env)"
  [ "$(cat "$root/var/lib/host-agent/token")" = "$token" ] || fail "reinstalling changed the token"
  chroot "$root" dpkg -r host-agent >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -r failed"; }
  [ ! -e "$root/usr/bin/host-agent" ] && [ ! -L "$wants" ] || fail "dpkg -r left the binary or the enabled unit"
  [ -e "$root/etc/host-agent/env" ] || fail "dpkg -r removed /etc/host-agent/env"
  chroot "$root" dpkg -P host-agent >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -P failed"; }
  [ ! -e "$root/etc/host-agent" ] && [ ! -e "$root/var/lib/host-agent" ] || fail "purge left /etc/host-agent or /var/lib/host-agent"
  echo "package: $deb installs on a clean Debian root, upgrades keeping its configuration, and removes"

  # The .rpm holds the same, read with rpm's own query tool.
  command -v rpm >/dev/null || fail "rpm missing (deploy/setup-ci.sh installs it)"
  rpm -qp --requires "$rpm" | grep -Eqx 'glibc >= 2\.[0-9]+' || fail "$rpm does not require glibc by version"
  files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm")
  for want in "-rwxr-xr-x root:root  /usr/bin/host-agent" \
    "-rw-r--r-- root:root  /usr/lib/systemd/system/host-agent.service" \
    "-rw------- root:root cn /etc/host-agent/env" \
    "drwx------ root:root  /var/lib/host-agent"; do
    grep -qxF -- "$want" <<<"$files" || fail "$rpm lacks '$want'; it holds:
$files"
  done
  rpm -qp --scripts "$rpm" | grep -q 'systemctl enable' || fail "$rpm has no postinstall enabling the unit"
  echo "package: $rpm holds the binary, the unit, the env file (config, noreplace, 600) and the state directory (700)"
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
  echo "usage: $0 actionlint|cross-arm64|openapi|asyncapi|package|promtool" >&2
  exit 2
  ;;
esac
