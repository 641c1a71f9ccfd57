#!/usr/bin/env bash
# Measures a rental's start+terminate through the agent's runtime against the
# same work done with containerd's client directly, on the same private
# containerd and image in the same run. Needs root (as deploy/test.sh).
#   deploy/bench.sh [COUNT]   COUNT rentals per side (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh
bash deploy/setup-build.sh
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export CGO_CFLAGS="-Wno-deprecated-declarations"
go test -run '^$' -bench 'StartTerminate' -benchtime "${1:-30}x" -count 1 ./runtime/containerd/
