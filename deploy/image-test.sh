#!/usr/bin/env bash
# Tests the agent's image as providers deploy it, offline: base images made
# here from Debian's packages, a real dockerd (moby, from the Go module
# proxy) on a private containerd, `docker build` of the real Dockerfile, then
# the README's own `docker run` command line (deploy/imagetest reads it from
# README.md) and a rental started through the containerized agent.
#
# Everything slow is cached outside the clone, keyed by version, under
# HOST_AGENT_CI_CACHE (default /var/cache/host-agent-ci): the dockerd
# binary, the debootstrapped root file system, the base image tarballs, and
# dockerd's and its containerd's data (so the build cache survives).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="/usr/local/go/bin:/usr/local/bin:/usr/sbin:/sbin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
DOCKERD_VERSION="${DOCKERD_VERSION:-v2.0.0-beta.24}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
GO_VERSION=$(go env GOVERSION) # the toolchain go.mod selects
GOROOT_DIR=$(go env GOROOT)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
log() { printf '[image-test] %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "image-test.sh must run as root" >&2; exit 1; }
for b in docker containerd containerd-shim-runc-v2 runc ctr debootstrap; do
  command -v "$b" >/dev/null || { echo "image-test.sh: $b missing (deploy/setup-ci.sh installs it)" >&2; exit 1; }
done
mkdir -p "$CACHE"

# 1. dockerd from the Go module proxy.
DOCKERD=$(DOCKERD_VERSION="$DOCKERD_VERSION" bash deploy/build-dockerd.sh)

# 2. A minimal Debian root file system, when a base image is to be made.
ROOTFS="$CACHE/rootfs-$SUITE-minbase"
IMAGES="$CACHE/images"
BASE_TAR="$IMAGES/debian-$SUITE-minbase.tar"
GO_TAR="$IMAGES/golang-${GO_VERSION#go}-$SUITE.tar"
if [ ! -d "$ROOTFS" ] && { [ ! -s "$BASE_TAR" ] || [ ! -s "$GO_TAR" ]; }; then
  log "debootstrap --variant=minbase $SUITE (once)"
  rm -rf "$ROOTFS.tmp"
  debootstrap --variant=minbase "$SUITE" "$ROOTFS.tmp" "$MIRROR" >/dev/null
  rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb "$ROOTFS.tmp/var/lib/apt/lists/"*
  mv "$ROOTFS.tmp" "$ROOTFS"
fi

# 3. Base image tarballs: the runtime base (minbase + this host's CA bundle,
# which its module proxy and registries may need) and the build base
# (that + gcc, libc6-dev and the Go toolchain go.mod selects).
mkdir -p "$IMAGES"
if [ ! -s "$BASE_TAR" ]; then
  log "making the base image tarball"
  tmp=$(mktemp -d)
  cp -a "$ROOTFS/." "$tmp/"
  install -D -m 0644 "$CA_BUNDLE" "$tmp/etc/ssl/certs/ca-certificates.crt"
  tar -C "$tmp" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$tmp"
fi
if [ ! -s "$GO_TAR" ]; then
  log "making the Go build image tarball ($GO_VERSION, gcc)"
  tmp=$(mktemp -d)
  cp -a "$ROOTFS/." "$tmp/"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
  : > "$tmp/etc/resolv.conf"
  install -D -m 0644 "$CA_BUNDLE" "$tmp/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$tmp/usr/local"
  cp -a "$GOROOT_DIR" "$tmp/usr/local/go"
  tar -C "$tmp" -cf "$GO_TAR.tmp" . && mv "$GO_TAR.tmp" "$GO_TAR"
  rm -rf "$tmp"
fi

# 4. A private containerd (the "host's" containerd: the rentals run on it,
# and dockerd runs on it too) and dockerd. Their data persist in the cache;
# sockets and state live in a directory of this run.
W=$(mktemp -d /tmp/host-agent-image.XXXXXX)
DATA="$CACHE/daemons-$DOCKERD_VERSION"
mkdir -p "$DATA/containerd" "$DATA/docker" "$W/ctd-state" "$W/exec"
pids=()
cleanup() {
  set +e
  if [ -S "$W/docker.sock" ]; then
    docker -H "unix://$W/docker.sock" rm -f host-agent >/dev/null 2>&1
  fi
  if [ -S "$W/containerd.sock" ]; then
    for c in $(ctr --address "$W/containerd.sock" -n rentals containers ls -q 2>/dev/null); do
      ctr --address "$W/containerd.sock" -n rentals tasks kill -s KILL "$c" >/dev/null 2>&1
      sleep 0.2
      ctr --address "$W/containerd.sock" -n rentals tasks delete "$c" >/dev/null 2>&1
      ctr --address "$W/containerd.sock" -n rentals containers delete "$c" >/dev/null 2>&1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null
    wait "${pids[$i]}" 2>/dev/null
  done
  # dockerd leaves its iptables chains behind; remove them unless the host
  # had Docker's chains before this run (a leftover DOCKER-USER would read
  # as a dockerd managing iptables to the next agent on Docker).
  if [ "${DOCKER_CHAINS_BEFORE:-1}" = 0 ]; then
    for table in filter nat; do
      iptables -t "$table" -S 2>/dev/null | awk '$1 == "-A" && $0 ~ /-j DOCKER/ && $2 !~ /^DOCKER/' |
        sed 's/^-A /-D /' | while read -r rule; do eval "iptables -t $table $rule"; done
      for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
        iptables -t "$table" -F "$chain"
      done
      for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
        iptables -t "$table" -X "$chain"
      done
    done
  fi
  ip link del hadocker0 2>/dev/null
  # dockerd leaves its default network namespace mounted under its exec root.
  awk -v w="$W" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r umount -l
  if [ "${KEEP:-}" = "" ]; then rm -rf "$W"; else log "kept $W"; fi
}
trap cleanup EXIT
cat > "$W/containerd.toml" <<TOML
version = 3
root = "$DATA/containerd"
state = "$W/ctd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$W/containerd.sock"
TOML
containerd --config "$W/containerd.toml" >"$W/containerd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do ctr --address "$W/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.2; done
ctr --address "$W/containerd.sock" version >/dev/null || { cat "$W/containerd.log" >&2; exit 1; }

# Debian's runc has no time namespaces.
echo '{"features": {"time-namespaces": false}}' > "$W/daemon.json"
DOCKER_CHAINS_BEFORE=0
iptables -S DOCKER-USER >/dev/null 2>&1 && DOCKER_CHAINS_BEFORE=1
"$DOCKERD" --config-file "$W/daemon.json" --containerd "$W/containerd.sock" \
  --data-root "$DATA/docker" --exec-root "$W/exec" --pidfile "$W/dockerd.pid" \
  -H "unix://$W/docker.sock" --userland-proxy=false --iptables=true --ip6tables=false --bridge=none \
  >"$W/dockerd.log" 2>&1 &
pids+=($!)
export DOCKER_HOST="unix://$W/docker.sock"
for _ in $(seq 1 150); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
docker version --format 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}})' || { tail -50 "$W/dockerd.log" >&2; exit 1; }

# 5. The base images, imported under the names the Dockerfile's arguments get.
GO_IMAGE="host-agent-ci/golang:${GO_VERSION#go}-$SUITE"
BASE_IMAGE="host-agent-ci/debian:$SUITE-minbase"
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || docker import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
docker image inspect "$GO_IMAGE" >/dev/null 2>&1 ||
  docker import -c 'ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV GOTOOLCHAIN=local' "$GO_TAR" "$GO_IMAGE" >/dev/null

# 6. The real Dockerfile, with the legacy builder (no buildx here).
IMAGE=host-agent:image-test
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
log "docker build ($GO_IMAGE, $BASE_IMAGE)"
start=$(date +%s)
DOCKER_BUILDKIT=0 docker build --network host -q \
  --build-arg GO_IMAGE="$GO_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg GOPROXY="$(go env GOPROXY)" --build-arg GOSUMDB="$(go env GOSUMDB)" \
  --build-arg VERSION=image-test --build-arg COMMIT="$COMMIT" \
  -t "$IMAGE" "$REPO" >/dev/null
log "built $IMAGE in $(($(date +%s) - start))s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
docker run --rm "$IMAGE" version

# 7. Run it as the README says and rent through it (deploy/imagetest).
HOST_AGENT_IMAGE="$IMAGE" HOST_AGENT_IMAGE_CONTAINERD="$W/containerd.sock" \
  CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations" \
  go test -count=1 -v -run "TestImageAsDeployed|TestImageOnDockerOnly" ./deploy/imagetest
