#!/usr/bin/env bash
# Real-GPU check: runs, as root on a machine with an NVIDIA GPU and driver,
# the bundle deploy/build-gpu-check.sh made. It builds nothing and needs no
# network, Go toolchain or containerd on the machine:
#
#   deploy/gpu-check.sh BUNDLE [--out DIR] [gpu-check flags...]
#
# BUNDLE is the .tar.xz (unpacked into a temporary directory, removed at the
# end) or an unpacked bundle directory. --out DIR receives report.json and
# gpu-check.log. Other flags go to gpu-check, e.g. --driver-root DIR (default:
# $NVIDIA_DRIVER_ROOT, else /usr/local/nvidia when it holds the driver, else
# /) or --mock for a dry run on a machine without a GPU. Bounded at 7 minutes;
# exits 0 when no stage failed.
set -uo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
bundle=$1
shift
out=""
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

tmp=""
cleanup() { [ -n "$tmp" ] && rm -rf "$tmp"; }
trap cleanup EXIT
if [ -d "$bundle" ]; then
  dir=$(cd "$bundle" && pwd)
else
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  if ! xz -dc "$bundle" | tar -C "$tmp" -xf -; then
    echo "gpu-check FAIL: cannot unpack $bundle" >&2
    exit 1
  fi
  dir=$tmp/gpu-check
fi

if [ -n "$out" ]; then
  mkdir -p "$out"
  args+=(--json "$out/report.json")
fi

run_check() {
  echo "== host: $(uname -srvm), euid $(id -u)"
  for smi in "${NVIDIA_DRIVER_ROOT:-/usr/local/nvidia}/bin/nvidia-smi" /usr/bin/nvidia-smi; do
    if [ -x "$smi" ]; then
      root=$(dirname "$(dirname "$smi")")
      echo "== $smi -L (for reference; the check reads NVML itself)"
      LD_LIBRARY_PATH="$root/lib64:$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 20 "$smi" -L 2>&1 | head -20
      break
    fi
  done
  # The check links the C library dynamically (NVML is loaded with
  # dlopen): run it with the bundle's own loader and C library, so the
  # host's C library, whatever its age, does not matter.
  timeout -k 10 420 "$dir/lib/ld-linux-x86-64.so.2" --library-path "$dir/lib" \
    "$dir/gpu-check" --bundle "$dir" "${args[@]}"
  local rc=$?
  if [ "$rc" -eq 124 ]; then
    echo "gpu-check FAIL: did not finish within 7 minutes"
  fi
  return "$rc"
}

if [ -n "$out" ]; then
  run_check 2>&1 | tee "$out/gpu-check.log"
  exit "${PIPESTATUS[0]}"
fi
run_check
