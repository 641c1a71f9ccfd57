#!/bin/sh
# After the host-agent package is removed or upgraded. A .deb purge also
# removes the token the package generated; the rest of /var/lib/host-agent
# (rentals' logs, benched GPUs) is kept unless empty, since rentals may
# still be running.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
if [ "${1:-}" = purge ]; then
  rm -f /var/lib/host-agent/token
  rmdir /var/lib/host-agent 2>/dev/null || true
  rmdir /etc/host-agent 2>/dev/null || true
fi
exit 0
