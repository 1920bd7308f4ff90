#!/bin/sh
# After the beam package is installed or upgraded: create the beam user
# and the directories the units use, and tell systemd about the units.
# No unit is enabled or started: the settings in /etc/beam come first.
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/beam.conf
elif ! getent passwd beam >/dev/null 2>&1; then
	useradd --system --home-dir /var/lib/beam --no-create-home --shell /usr/sbin/nologin --user-group beam
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create /usr/lib/tmpfiles.d/beam.conf || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
