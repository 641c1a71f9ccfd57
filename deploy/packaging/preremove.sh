#!/bin/sh
# Before the host-agent package is removed (.deb "remove"; .rpm 0 versions
# left). Not on upgrades. Stopping the agent leaves every rental running.
set -e
unit=host-agent.service
case "${1:-}" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl stop "$unit" || true
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable "$unit" || true
else
  rm -f "/etc/systemd/system/multi-user.target.wants/$unit"
fi
exit 0
