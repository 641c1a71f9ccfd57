#!/usr/bin/env bash
# Installs what building the agent (or containerd) from source needs on a
# Debian or Ubuntu host, as root: the Go toolchain go.mod names (the
# distribution's Go when recent enough, else that toolchain fetched through
# the Go module proxy), gcc and the C library headers for cgo (NVML), git
# for the build's VCS stamp. Idempotent. Called by deploy/run-agent.sh,
# deploy/setup-host.sh (only when containerd must be built) and
# deploy/setup-ci.sh; a host that runs a packaged agent needs none of it.
set -euo pipefail

GO_MIN_MINOR=21 # the first Go that fetches the toolchain go.mod asks for

log() { printf '[setup-build] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-build.sh must run as root (it installs packages)" >&2
  exit 1
fi

export PATH="/usr/local/go/bin:${PATH}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
command -v git >/dev/null || need_pkgs+=(git)
command -v curl >/dev/null || need_pkgs+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_pkgs+=(ca-certificates)
go_ok() {
  command -v go >/dev/null || return 1
  local v; v=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || go version | awk '{print $3}')
  v=${v#go}
  [ "${v%%.*}" -gt 1 ] || [ "$(echo "$v" | cut -d. -f2)" -ge "$GO_MIN_MINOR" ]
}
go_ok || need_pkgs+=(golang-go unzip)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! go_ok; then
  # The distribution's Go predates toolchain switching: fetch the toolchain
  # go.mod names as a module, through the Go module proxy.
  want=$(awk '/^toolchain /{t=$2} /^go /{g="go"$2} END{print (t ? t : g)}' "$(dirname "$0")/../go.mod")
  proxy=$(go env GOPROXY | cut -d, -f1)
  log "system Go is too old; fetching ${want} from the module proxy"
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/go.zip" "${proxy}/golang.org/toolchain/@v/v0.0.1-${want}.linux-$(dpkg --print-architecture).zip"
  (cd "$tmp" && { unzip -q go.zip || python3 -m zipfile -e go.zip .; })
  rm -rf /usr/local/go && mv "$tmp"/golang.org/toolchain@*/ /usr/local/go
  chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/*
  rm -rf "$tmp"
fi
log "ready: $(go version), $(gcc --version | head -1)"
