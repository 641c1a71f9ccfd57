#!/usr/bin/env bash
# Builds the agent's .deb and .rpm for one architecture with nfpm
# (deploy/nfpm.yaml says what they hold):
#
#   deploy/package.sh VERSION ARCH    VERSION: 1.2.3 (a leading v is dropped);
#                                     ARCH: amd64 or arm64
#
# writes dist/host-agent_VERSION-1_ARCH.deb and dist/host-agent-VERSION-1.ARCH.rpm
# (x86_64 or aarch64) and prints their paths. The binary needs cgo (NVML): a
# foreign architecture is built with Debian's cross compiler
# (gcc-aarch64-linux-gnu or gcc-x86-64-linux-gnu). nfpm is built from the Go
# module proxy once, into HOST_AGENT_CI_CACHE (default /var/cache/host-agent-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
NFPM_VERSION="${NFPM_VERSION:-v2.45.2}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
export PATH="/usr/local/go/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

usage() { echo "usage: $0 VERSION amd64|arm64" >&2; exit 2; }
[ $# -eq 2 ] || usage
version=${1#v}
arch=$2
# Debian and RPM versions must start with a digit; '-' would split off a
# release, so it is not allowed (use ~ for pre-releases: 1.2.0~rc1).
[[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || { echo "package.sh: version '$1' must look like 1.2.3 (digits first; letters, '.', '+', '~')" >&2; exit 2; }

host=$(go env GOHOSTARCH)
case "$arch" in
amd64) cross=x86_64-linux-gnu-gcc rpmarch=x86_64 ;;
arm64) cross=aarch64-linux-gnu-gcc rpmarch=aarch64 ;;
*) usage ;;
esac
cc=gcc
if [ "$arch" != "$host" ]; then
  cc=$cross
  command -v "$cc" >/dev/null || { echo "package.sh: $cc missing (deploy/setup-ci.sh installs it)" >&2; exit 1; }
fi

nfpm="$CACHE/nfpm-$NFPM_VERSION/nfpm"
if [ ! -x "$nfpm" ]; then
  mkdir -p "$(dirname "$nfpm")"
  GOBIN="$(dirname "$nfpm")" CGO_ENABLED=0 go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
fi

build="dist/build-$arch"
mkdir -p "$build"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CGO_ENABLED=1 GOOS=linux GOARCH="$arch" CC="$cc" CGO_CFLAGS="-Wno-deprecated-declarations" \
  go build -trimpath -ldflags "-s -w -X main.version=$version -X main.commit=$commit" \
  -o "$build/host-agent" ./cmd/host-agent

# The newest glibc symbol version the binary uses is the oldest C library
# it runs on: the packages depend on that.
glibc=$(readelf --version-info --wide "$build/host-agent" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$glibc" ] || { echo "package.sh: no glibc version found in $build/host-agent" >&2; exit 1; }

export VERSION="$version" ARCH="$arch" BINARY="$build/host-agent" GLIBC_MIN="$glibc"
export MAINTAINER="${MAINTAINER:-host-agent maintainers}"
export HOMEPAGE="${HOMEPAGE:-https://github.com/host-agent/host-agent}"
for packager in deb rpm; do
  "$nfpm" package --config deploy/nfpm.yaml --packager "$packager" --target dist/ >&2
done
ls -1 "dist/host-agent_${version}-1_${arch}.deb" "dist/host-agent-${version}-1.${rpmarch}.rpm"
