#!/usr/bin/env bash
# Installs what the test suite (deploy/test.sh) needs on a Debian or Ubuntu
# host, as root, on top of what a provider's host has (deploy/setup-host.sh)
# and what building the agent needs (deploy/setup-build.sh): containerd
# exactly ${CONTAINERD_VERSION}, which the integration tests start, built
# from the Go module proxy when the host's is another; the arm64 cross
# compiler (cgo); debootstrap and Debian's archive keyring for the image and
# package tests' clean Debian roots; Debian's dockerd 20.10 (API 1.41, no
# CDI), one of the two dockerds the Docker back end is tested against
# (deploy/build-dockerd.sh builds the other); systemd-analyze for the unit
# check, rpm to read the .rpm, and npm for the API documents' linters.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")"

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"
export CONTAINERD_VERSION BIN_DIR

log() { printf '[setup-ci] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-ci.sh must run as root (it installs packages)" >&2
  exit 1
fi

bash setup-build.sh
bash setup-host.sh
export PATH="/usr/local/go/bin:${BIN_DIR}:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

need_pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
[ -x /usr/sbin/dockerd ] || need_pkgs+=(docker.io)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v readelf >/dev/null || need_pkgs+=(binutils)
command -v rpm >/dev/null || need_pkgs+=(rpm)
# The disk tests make XFS loop devices (runtime/disk).
command -v mkfs.xfs >/dev/null || need_pkgs+=(xfsprogs)
# The OpenAPI and AsyncAPI linters are npm packages (deploy/ci-checks.sh).
command -v npm >/dev/null || need_pkgs+=(nodejs npm)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The tests run against one containerd version, whatever the host has.
if ! "$BIN_DIR/containerd" --version 2>/dev/null | grep -qF " ${CONTAINERD_VERSION#v}" ||
  [ ! -x "$BIN_DIR/containerd-shim-runc-v2" ] || [ ! -x "$BIN_DIR/ctr" ]; then
  log "building containerd ${CONTAINERD_VERSION} from the Go module proxy into ${BIN_DIR}"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
fi
log "ready: $(go version), $("$BIN_DIR/containerd" --version | awk '{print $1, $3}'), $(runc --version | head -1)"
