#!/bin/sh
# Before the beam package is removed (not upgraded): stop its units.
# The beam user and /var/lib/beam* stay, with the keys and databases.
set -e
case "$1" in
upgrade | 1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	for u in beam-daemon beam-server beam-coordinator beam-derp beam-edge; do
		systemctl disable --now "$u.service" >/dev/null 2>&1 || true
	done
fi
