#!/usr/bin/env bash
# Builds the moby dockerd the Docker back end's tests and the image test run
# (from the Go module proxy, a few minutes, once per version) into
# HOST_AGENT_CI_CACHE (default /var/cache/host-agent-ci)/dockerd-VERSION,
# and prints its path. internal/testenv looks for it there.
set -euo pipefail
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
DOCKERD_VERSION="${DOCKERD_VERSION:-v2.0.0-beta.24}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
DOCKERD="$CACHE/dockerd-$DOCKERD_VERSION/dockerd"
if [ ! -x "$DOCKERD" ]; then
  mkdir -p "$CACHE"
  printf '[build-dockerd] building dockerd %s from the Go module proxy (a few minutes, once)\n' "$DOCKERD_VERSION" >&2
  rm -rf "$(dirname "$DOCKERD").tmp"
  (cd /tmp && GOBIN="$(dirname "$DOCKERD").tmp" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "github.com/moby/moby/v2/cmd/dockerd@$DOCKERD_VERSION")
  rm -rf "$(dirname "$DOCKERD")" && mv "$(dirname "$DOCKERD").tmp" "$(dirname "$DOCKERD")"
fi
echo "$DOCKERD"
