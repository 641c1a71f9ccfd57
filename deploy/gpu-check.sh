#!/usr/bin/env bash
# Real-GPU check, run as root on a machine with an NVIDIA GPU and driver,
# from the folder deploy/build-gpu-check.sh made; it builds nothing. It
# prints the NVML inventory and a CDI spec generated with nvcdi, starts a
# private containerd, and starts an instance holding one GPU whose container
# must list exactly that GPU's device node. Bounded at 8 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here:$PATH"
echo "== host"
uname -a
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not found; NVML is read directly)"
runc --version | head -1
exec timeout 480 "$here/gpu-check" -bundle "$here"
