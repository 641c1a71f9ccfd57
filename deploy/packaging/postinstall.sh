#!/bin/sh
# After the host-agent package is installed or upgraded. Arguments: .deb
# "configure" and the version replaced (none on a first install); .rpm the
# number of versions installed (1 on a first install). Works where systemd
# is not running (a chroot, an image build): the unit is then only enabled.
set -e
unit=host-agent.service
first=0
case "${1:-}" in
configure) [ -z "${2:-}" ] && first=1 ;;
1) first=1 ;;
esac

# The API's token, generated once, readable by root only; the env file
# names it (AGENT_TOKEN_FILE).
chmod 0700 /var/lib/host-agent
if [ ! -s /var/lib/host-agent/token ]; then
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >/var/lib/host-agent/token)
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
if [ "$first" = 1 ]; then
  # Enabled, not started: the agent needs AGENT_ID in /etc/host-agent/env
  # first. systemctl enable only writes symlinks, so it works offline too.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl enable "$unit" ||
      echo "host-agent: could not enable $unit; run: systemctl enable $unit" >&2
  else
    # No systemd here (yet): record the enablement as systemctl would.
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf "/usr/lib/systemd/system/$unit" "/etc/systemd/system/multi-user.target.wants/$unit"
  fi
  echo "host-agent: set AGENT_ID in /etc/host-agent/env, then: systemctl start $unit" >&2
elif [ -d /run/systemd/system ]; then
  # An upgrade restarts a running agent on the new binary; the rentals keep
  # running (KillMode=process) and the agent reads them back.
  systemctl try-restart "$unit" || true
fi
exit 0
