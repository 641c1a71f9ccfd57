#!/usr/bin/env bash
# Builds the real-GPU check into one xz-packed archive that runs on a GPU
# machine without a Go toolchain, network, containerd or a recent C library:
#
#   deploy/build-gpu-check.sh [ARCHIVE]     (default: bin/gpu-check.tar.xz)
#
# The archive holds one folder, gpu-check/: the check (gpu-check), the probe
# its rental runs, containerd and its runc shim, a static runc (with
# seccomp), the NVIDIA CDI hook, a static ldconfig for hosts without one,
# and lib/, a minimal C library (Debian's) that runs the check itself and
# that the probe image carries for the driver's nvidia-smi. Binaries are
# stripped (-s -w); ctr is left out. It must stay under 50 MB: what travels
# to a sandboxed GPU machine is limited. Run as root on Debian or Ubuntu
# (it installs what the build needs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
archive="${1:-bin/gpu-check.tar.xz}"
case $archive in /*) ;; *) archive="$repo/$archive" ;; esac
LIMIT_BYTES=$((50 * 1000 * 1000))
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.3.7}"

export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
command -v go >/dev/null && command -v gcc >/dev/null || bash deploy/setup-build.sh
need=()
[ -e /usr/lib/x86_64-linux-gnu/libseccomp.a ] || need+=(libseccomp-dev)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v xz >/dev/null || need+=(xz-utils)
if [ "${#need[@]}" -gt 0 ]; then
  echo "[build-gpu-check] installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/gpu-check"
mkdir -p "$dir/lib"
strip=(-trimpath -ldflags "-s -w")
hook_version=$(go list -m -f '{{.Version}}' github.com/NVIDIA/nvidia-container-toolkit)

echo "[build-gpu-check] gpu-check and its probe" >&2
CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations" go build "${strip[@]}" -o "$dir/gpu-check" ./cmd/gpu-check
CGO_ENABLED=0 go build "${strip[@]}" -o "$dir/gpu-check-probe" ./cmd/gpu-check/probe

# The rest is built from the Go module proxy, outside this module, each as
# its own project builds its releases: static, so the machine's C library
# does not matter.
echo "[build-gpu-check] nvidia-cdi-hook ${hook_version}, containerd ${CONTAINERD_VERSION}, runc ${RUNC_VERSION}" >&2
(
  cd "$stage"
  # The hook links go-nvml (cgo); linked statically it still runs its
  # commands, none of which load NVML unless a GPU memory limit is asked for.
  GOBIN="$dir" CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations" go install -trimpath -tags "netgo osusergo" \
    -ldflags "-s -w -extldflags -static" "github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-cdi-hook@${hook_version}"
  GOBIN="$dir" CGO_ENABLED=0 go install "${strip[@]}" -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}"
  GOBIN="$dir" CGO_ENABLED=1 go install -trimpath -tags "seccomp netgo osusergo" \
    -ldflags "-s -w -extldflags -static" "github.com/opencontainers/runc@${RUNC_VERSION}"
)

# The minimal C library: the loader and what the check, nvidia-smi and the
# driver's libraries link against.
for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1; do
  cp -L "/lib/x86_64-linux-gnu/$lib" "$dir/lib/$lib"
done
# ldconfig for the CDI hook on a host that has none; Debian's is static.
ldconfig_bin=/sbin/ldconfig
[ -e /sbin/ldconfig.real ] && ldconfig_bin=/sbin/ldconfig.real
if file -L "$ldconfig_bin" 2>/dev/null | grep -q 'static'; then
  cp "$ldconfig_bin" "$dir/ldconfig"
fi
cp deploy/gpu-check.sh "$dir/gpu-check.sh"

mkdir -p "$(dirname "$archive")"
echo "[build-gpu-check] packing with xz -9e" >&2
tar -C "$stage" --owner=0 --group=0 -cf - gpu-check | xz -9e -T1 >"$archive.tmp"
mv "$archive.tmp" "$archive"
size=$(stat -c %s "$archive")
echo "[build-gpu-check] $archive: $size bytes (limit $LIMIT_BYTES)" >&2
if [ "$size" -gt "$LIMIT_BYTES" ]; then
  echo "[build-gpu-check] the bundle is over 50 MB" >&2
  exit 1
fi
rel=${archive#"$repo"/}
echo "On the GPU machine, from the repository root (with $rel carried along), as root:"
echo "bash deploy/gpu-check.sh $rel --out \"\$OUT\""
