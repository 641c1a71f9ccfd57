#!/usr/bin/env bash
# Installs what the agent and its tests need on a Debian or Ubuntu host, as
# root: runc, CNI plugins with iptables and nftables for the rentals'
# network, a Go toolchain able to build the agent, and
# containerd built from the Go module proxy. Idempotent: what is already
# there is kept.
#
#   deploy/setup-host.sh                    install only
#   deploy/setup-host.sh --start-containerd also start containerd on
#                                           /run/containerd/containerd.sock
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"
GO_MIN_MINOR=21 # the first Go that fetches the toolchain go.mod asks for

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh must run as root (it installs packages and starts containerd)" >&2
  exit 1
fi

export PATH="/usr/local/go/bin:${BIN_DIR}:${PATH}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

need_pkgs=()
command -v runc >/dev/null || need_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need_pkgs+=(containernetworking-plugins)
command -v iptables >/dev/null || need_pkgs+=(iptables)
# The bridge plugin's MAC spoof check on the rentals' bridge is written with nft.
command -v nft >/dev/null || need_pkgs+=(nftables)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
command -v git >/dev/null || need_pkgs+=(git)
command -v curl >/dev/null || need_pkgs+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_pkgs+=(ca-certificates)
# CI only: the arm64 cross-build (cgo) and the base images of the image test.
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
# CI only: Debian's dockerd 20.10 (API 1.41, no CDI), one of the two dockerds
# the Docker back end is tested against (deploy/build-dockerd.sh builds the other).
[ -x /usr/sbin/dockerd ] || need_pkgs+=(docker.io)
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

have_containerd() {
  command -v containerd >/dev/null && command -v containerd-shim-runc-v2 >/dev/null && command -v ctr >/dev/null &&
    containerd --version 2>/dev/null | grep -qF " ${CONTAINERD_VERSION#v}"
}
if ! have_containerd; then
  log "building containerd ${CONTAINERD_VERSION} from the Go module proxy into ${BIN_DIR}"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
fi

if [ "${1:-}" = "--start-containerd" ]; then
  sock=/run/containerd/containerd.sock
  if ctr --address "$sock" version >/dev/null 2>&1; then
    log "containerd already answers on $sock"
  elif [ -d /run/systemd/system ]; then
    log "starting containerd with systemd"
    install -m 0644 "$(dirname "$0")/containerd.service" /etc/systemd/system/containerd.service
    sed -i "s#/usr/local/bin/containerd#${BIN_DIR}/containerd#" /etc/systemd/system/containerd.service
    systemctl daemon-reload
    systemctl enable --now containerd
  else
    log "starting containerd in the background (log: /var/log/containerd.log)"
    mkdir -p /run/containerd
    nohup containerd --address "$sock" >>/var/log/containerd.log 2>&1 &
  fi
  for _ in $(seq 1 100); do
    ctr --address "$sock" version >/dev/null 2>&1 && break
    sleep 0.2
  done
  ctr --address "$sock" version >/dev/null || { echo "containerd did not come up; see its log" >&2; exit 1; }
fi
log "ready: $(go version), $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -1)"
