#!/usr/bin/env bash
# Builds everything deploy/gpu-check.sh needs into one folder, so that the
# check runs on a GPU machine without a Go toolchain or network:
#   deploy/build-gpu-check.sh [DIR]     (default: bin/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bin/gpu-check}"
bash deploy/setup-host.sh
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export CGO_CFLAGS="-Wno-deprecated-declarations"
mkdir -p "$out"
go build -o "$out/gpu-check" ./cmd/gpu-check
out=$(cd "$out" && pwd)
# The hook that generated CDI specs run, from the toolkit's own module.
GOBIN="$out" go install github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-cdi-hook@v1.20.2
(cd runtime/testenv/payload && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/payload" .)
for b in containerd containerd-shim-runc-v2 ctr; do cp "$(command -v "$b")" "$out/"; done
# runc from the distribution links libseccomp dynamically: ship the library
# beside it and a wrapper that finds it, in case the GPU machine lacks it.
mkdir -p "$out/lib"
cp "$(command -v runc)" "$out/runc.real"
ldd "$(command -v runc)" | awk '/libseccomp/{print $3}' | xargs -r -I{} cp {} "$out/lib/"
cat >"$out/runc" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/runc.real" "$@"
WRAP
chmod +x "$out/runc"
cp deploy/gpu-check.sh "$out/"
echo "bundle ready in $out; on the GPU machine run: sudo $out/gpu-check.sh"
