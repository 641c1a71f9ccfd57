#!/usr/bin/env bash
# Installs lazy pulling (SNAPSHOTTER=stargz) on a provider's host, as root;
# deploy/setup-host.sh --lazy-pull runs it. Idempotent: what is there is
# kept, and nothing restarts unless it changed. The paths below can be
# moved with the variables of the same names (a test on a scratch tree).
#   - containerd-stargz-grpc, built from its source (deploy/build-stargz.sh,
#     cached by version), into ${BIN_DIR};
#   - its configuration, /etc/containerd-stargz-grpc/config.toml (kept when
#     present);
#   - its systemd unit (deploy/containerd-stargz-grpc.service), started;
#     without systemd, started in the background;
#   - containerd's proxy_plugins entry "stargz" in ${CONTAINERD_CONFIG},
#     and a restart of containerd when the entry was added (its tasks live
#     on: shims outlive containerd).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"
CONTAINERD_CONFIG="${CONTAINERD_CONFIG:-/etc/containerd/config.toml}"
CONTAINERD_SOCK="${CONTAINERD_SOCK:-/run/containerd/containerd.sock}"
STARGZ_CONFIG="${STARGZ_CONFIG:-/etc/containerd-stargz-grpc/config.toml}"
STARGZ_SOCK="${STARGZ_SOCK:-/run/containerd-stargz-grpc/containerd-stargz-grpc.sock}"
STARGZ_ROOT="${STARGZ_ROOT:-/var/lib/containerd-stargz-grpc}"
export PATH="/usr/local/go/bin:${BIN_DIR}:${PATH}"

log() { printf '[setup lazy-pull] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-lazy-pull.sh must run as root" >&2
  exit 1
fi

# The snapshotter mounts each layer with FUSE.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if [ ! -e /dev/fuse ]; then
  echo "lazy pulling needs FUSE and this host has no /dev/fuse: load the fuse module (modprobe fuse), or leave SNAPSHOTTER unset" >&2
  exit 1
fi

command -v go >/dev/null || bash "$here/setup-build.sh"
built="$(bash "$here/build-stargz.sh")"
bin_changed=false
if ! cmp -s "$built" "$BIN_DIR/containerd-stargz-grpc"; then
  log "installing containerd-stargz-grpc into $BIN_DIR"
  install -m 0755 "$built" "$BIN_DIR/containerd-stargz-grpc.new"
  mv "$BIN_DIR/containerd-stargz-grpc.new" "$BIN_DIR/containerd-stargz-grpc"
  bin_changed=true
fi

if [ ! -e "$STARGZ_CONFIG" ]; then
  log "writing $STARGZ_CONFIG"
  mkdir -p "$(dirname "$STARGZ_CONFIG")"
  cat >"$STARGZ_CONFIG" <<'EOF'
# containerd-stargz-grpc, for host-agent's lazy pulling (SNAPSHOTTER=stargz).
# The snapshotter's defaults: eStargz layers are verified against their TOC
# digest, the files an image marks for prefetch are fetched at mount, and
# the rest of each layer is fetched in the background once the rental runs,
# so that only the first reads of a file wait for the registry.
# Registry credentials: root's ~/.docker/config.json. An image the
# snapshotter cannot mount (not eStargz, private, unreachable) is pulled in
# full by containerd, as without lazy pulling.
EOF
fi

conf_changed=false
if ! grep -Eq '^[[:space:]]*\[proxy_plugins\.("stargz"|stargz)\]' "$CONTAINERD_CONFIG" 2>/dev/null; then
  log "adding the stargz proxy plugin to $CONTAINERD_CONFIG"
  mkdir -p "$(dirname "$CONTAINERD_CONFIG")"
  # A new file: version 2 is read by containerd 1.6 and 2.x alike.
  [ -s "$CONTAINERD_CONFIG" ] || printf 'version = 2\n' >"$CONTAINERD_CONFIG"
  printf '\n# Lazy pulling for host-agent (SNAPSHOTTER=stargz), by deploy/setup-host.sh --lazy-pull.\n[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "%s"\n' \
    "$STARGZ_SOCK" >>"$CONTAINERD_CONFIG"
  conf_changed=true
fi

stargz_answers() { [ -S "$STARGZ_SOCK" ]; }
systemd=false
[ -d /run/systemd/system ] && systemd=true
if $systemd; then
  unit=/etc/systemd/system/containerd-stargz-grpc.service
  sed "s#/usr/local/bin/containerd-stargz-grpc#$BIN_DIR/containerd-stargz-grpc#" "$here/containerd-stargz-grpc.service" >"$unit.new"
  if ! cmp -s "$unit.new" "$unit"; then
    mv "$unit.new" "$unit"
    bin_changed=true
    systemctl daemon-reload
  else
    rm -f "$unit.new"
  fi
  systemctl enable --now containerd-stargz-grpc >/dev/null
  if $bin_changed; then
    systemctl restart containerd-stargz-grpc
  fi
elif ! stargz_answers || $bin_changed; then
  log "starting containerd-stargz-grpc in the background (log: /var/log/containerd-stargz-grpc.log)"
  pidfile="$(dirname "$STARGZ_SOCK")/containerd-stargz-grpc.pid"
  if [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
    sleep 1
  fi
  mkdir -p "$(dirname "$STARGZ_SOCK")"
  rm -f "$STARGZ_SOCK"
  nohup "$BIN_DIR/containerd-stargz-grpc" --log-level=info --config="$STARGZ_CONFIG" --address="$STARGZ_SOCK" \
    --root="$STARGZ_ROOT" >>/var/log/containerd-stargz-grpc.log 2>&1 &
  echo $! >"$pidfile"
fi
for _ in $(seq 1 100); do
  stargz_answers && break
  sleep 0.2
done
stargz_answers || { echo "containerd-stargz-grpc did not come up on $STARGZ_SOCK; see its log" >&2; exit 1; }

if $conf_changed && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  if $systemd && systemctl is-active --quiet containerd; then
    log "restarting containerd to load the stargz proxy plugin (rentals keep running)"
    systemctl restart containerd
  else
    log "restart containerd now so that it loads the stargz proxy plugin (rentals keep running)"
  fi
fi
if ctr --address "$CONTAINERD_SOCK" plugins ls 2>/dev/null | grep -q 'snapshotter.*stargz'; then
  log "ready: containerd reaches the stargz snapshotter; set SNAPSHOTTER=stargz for the agent"
fi
