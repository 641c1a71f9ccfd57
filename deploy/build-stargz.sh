#!/usr/bin/env bash
# Builds containerd-stargz-grpc, the stargz-snapshotter daemon that lazy
# pulling (SNAPSHOTTER=stargz) runs on, from its source, once per version,
# into HOST_AGENT_CI_CACHE (default /var/cache/host-agent-ci)/stargz-VERSION,
# and prints its path. internal/testenv and deploy/setup-host.sh --lazy-pull
# look for it there.
#
# Its command lives in a Go module of its own (cmd/) whose go.mod points at
# the repository's other modules with replace directives, so `go install
# ...@version` cannot build it. The source tree is laid out as in the
# repository:
#   - STARGZ_SRC=DIR: a checkout of github.com/containerd/stargz-snapshotter
#     at STARGZ_VERSION, used as it is; else
#   - the modules github.com/containerd/stargz-snapshotter, .../estargz and
#     .../ipfs at STARGZ_VERSION from the Go module proxy, side by side as
#     the replace directives want them, and the cmd module's go.mod, go.sum
#     and containerd-stargz-grpc sources from deploy/stargz/cmd (copied
#     unchanged from the same release: the module proxy does not serve that
#     module). Bump STARGZ_VERSION and that copy together.
set -euo pipefail
export PATH="/usr/local/go/bin:/usr/local/bin:${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
STARGZ_VERSION="${STARGZ_VERSION:-v0.18.2}"
CACHE="${HOST_AGENT_CI_CACHE:-/var/cache/host-agent-ci}"
OUT="$CACHE/stargz-$STARGZ_VERSION"
BIN="$OUT/containerd-stargz-grpc"
here="$(cd "$(dirname "$0")" && pwd)"

if [ ! -x "$BIN" ]; then
  mkdir -p "$CACHE"
  printf '[build-stargz] building containerd-stargz-grpc %s from its source (a few minutes, once)\n' "$STARGZ_VERSION" >&2
  work="$(mktemp -d "$CACHE/stargz-src.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  src="$work/stargz-snapshotter"
  if [ -n "${STARGZ_SRC:-}" ]; then
    cp -a "$STARGZ_SRC" "$src"
  else
    if ! grep -qF "github.com/containerd/stargz-snapshotter v${STARGZ_VERSION#v}" "$here/stargz/cmd/go.mod"; then
      echo "deploy/stargz/cmd is not the cmd module of stargz-snapshotter $STARGZ_VERSION; set STARGZ_SRC to a checkout of that version" >&2
      exit 1
    fi
    moddir() { (cd "$work" && go mod download -json "$1@$STARGZ_VERSION") | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
    main_dir="$(moddir github.com/containerd/stargz-snapshotter)"
    estargz_dir="$(moddir github.com/containerd/stargz-snapshotter/estargz)"
    ipfs_dir="$(moddir github.com/containerd/stargz-snapshotter/ipfs)"
    for d in "$main_dir" "$estargz_dir" "$ipfs_dir"; do
      if [ -z "$d" ] || [ ! -d "$d" ]; then echo "the Go module proxy did not give every stargz-snapshotter module at $STARGZ_VERSION" >&2; exit 1; fi
    done
    cp -r "$main_dir" "$src"
    chmod -R u+w "$src"
    cp -r "$estargz_dir" "$src/estargz"
    cp -r "$ipfs_dir" "$src/ipfs"
    cp -r "$here/stargz/cmd" "$src/cmd"
    chmod -R u+w "$src"
  fi
  rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
  (cd "$src/cmd" && GOFLAGS=-buildvcs=false CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/containerd/stargz-snapshotter/version.Version=$STARGZ_VERSION" \
    -o "$OUT.tmp/containerd-stargz-grpc" ./containerd-stargz-grpc)
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
echo "$BIN"
