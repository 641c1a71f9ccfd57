#!/usr/bin/env bash
# Installs what a provider's host needs to run rentals, on Debian or Ubuntu,
# as root: runc, the CNI plugins with iptables, nftables and iproute2 for
# the rentals' network, CA certificates, and containerd. A containerd
# already installed (the distribution's, Docker's containerd.io) is kept;
# without one, containerd ${CONTAINERD_VERSION} is built from the Go module
# proxy into ${BIN_DIR} (deploy/setup-build.sh installs the Go toolchain for
# that). Nothing for building the agent or testing it: deploy/setup-build.sh
# and deploy/setup-ci.sh. Idempotent: what is already there is kept.
#
#   deploy/setup-host.sh                    install only
#   deploy/setup-host.sh --start-containerd also start containerd on
#                                           /run/containerd/containerd.sock
#   deploy/setup-host.sh --lazy-pull        also install and start
#                                           stargz-snapshotter for lazy
#                                           pulling (SNAPSHOTTER=stargz):
#                                           containerd-stargz-grpc built
#                                           from its source (Go), its
#                                           config, its unit, and
#                                           containerd's proxy_plugins entry
#                                           (containerd is restarted when
#                                           the entry is added: its tasks
#                                           live on)
# The flags combine.
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh must run as root (it installs packages and starts containerd)" >&2
  exit 1
fi

start_containerd=false
lazy_pull=false
for arg in "$@"; do
  case "$arg" in
    --start-containerd) start_containerd=true ;;
    --lazy-pull) lazy_pull=true ;;
    *) echo "usage: $0 [--start-containerd] [--lazy-pull]" >&2; exit 2 ;;
  esac
done

export PATH="/usr/local/go/bin:${BIN_DIR}:${PATH}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

need_pkgs=()
command -v runc >/dev/null || need_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need_pkgs+=(containernetworking-plugins)
command -v iptables >/dev/null || need_pkgs+=(iptables)
# The bridge plugin's MAC spoof check on the rentals' bridge is written with nft.
command -v nft >/dev/null || need_pkgs+=(nftables)
command -v ip >/dev/null || need_pkgs+=(iproute2)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_pkgs+=(ca-certificates)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

have_containerd() {
  command -v containerd >/dev/null && command -v containerd-shim-runc-v2 >/dev/null && command -v ctr >/dev/null
}
if ! have_containerd; then
  bash "$(dirname "$0")/setup-build.sh"
  log "building containerd ${CONTAINERD_VERSION} from the Go module proxy into ${BIN_DIR}"
  GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
fi

if $start_containerd; then
  sock=/run/containerd/containerd.sock
  if ctr --address "$sock" version >/dev/null 2>&1; then
    log "containerd already answers on $sock"
  elif [ -d /run/systemd/system ]; then
    log "starting containerd with systemd"
    # The unit of the distribution's or Docker's containerd when there is
    # one; else ours, for the containerd found on PATH.
    if ! systemctl cat containerd.service >/dev/null 2>&1; then
      install -m 0644 "$(dirname "$0")/containerd.service" /etc/systemd/system/containerd.service
      sed -i "s#/usr/local/bin/containerd#$(command -v containerd)#" /etc/systemd/system/containerd.service
    fi
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
if $lazy_pull; then
  bash "$(dirname "$0")/setup-lazy-pull.sh"
fi
log "ready: $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -1)"
