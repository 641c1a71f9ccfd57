#!/usr/bin/env bash
# Builds the agent from this checkout and runs it against the host's
# containerd, setting up first what the host needs (deploy/setup-host.sh,
# which also starts containerd) and what the build needs
# (deploy/setup-build.sh). Configuration comes from the environment or
# ./.env (see README.md); without a token, one is generated into
# $STATE_DIR/token.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh --start-containerd
bash deploy/setup-build.sh
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

mkdir -p bin
CGO_CFLAGS="-Wno-deprecated-declarations" go build -o bin/host-agent ./cmd/host-agent

export STATE_DIR="${STATE_DIR:-/var/lib/host-agent}"
export AGENT_ID="${AGENT_ID:-$(hostname)}"
if [ -z "${AGENT_TOKEN:-}" ] && [ -z "${AGENT_TOKEN_FILE:-}" ] && ! grep -qs '^AGENT_TOKEN' .env; then
  mkdir -p "$STATE_DIR"
  if [ ! -s "$STATE_DIR/token" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE_DIR/token")
    echo "[run-agent] generated an API token in $STATE_DIR/token" >&2
  fi
  export AGENT_TOKEN_FILE="$STATE_DIR/token"
fi
exec ./bin/host-agent
