#!/bin/sh
# One-machine demo: a coordinator and two devices on loopback, a TCP echo
# reached by name through the mesh, and an HTTP page through SOCKS5.
# Everything runs in a temporary directory and is stopped at the end.
set -eu
cd "$(dirname "$0")/.."
go build -o bin/beam ./cmd/beam
BEAM="$PWD/bin/beam"
DIR=$(mktemp -d)
PORT=${BEAM_DEMO_PORT:-18080}
pids=""
cleanup() {
	for s in a b; do "$BEAM" --socket "$DIR/$s.sock" down >/dev/null 2>&1 || true; done
	for s in a b; do
		if [ -f "$DIR/$s/daemon.pid" ]; then kill "$(cat "$DIR/$s/daemon.pid")" 2>/dev/null || true; fi
	done
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

"$BEAM" coordinator --addr 127.0.0.1:$PORT --data "$DIR/coord" >"$DIR/coord.log" 2>&1 &
pids="$pids $!"
i=0
until [ -s "$DIR/coord/admin.token" ] && curl -fsS "http://127.0.0.1:$PORT/key" >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -lt 100 ] || { echo "coordinator did not start"; cat "$DIR/coord.log"; exit 1; }
	sleep 0.1
done
export BEAM_ADMIN_TOKEN="$(cat "$DIR/coord/admin.token")"
KEY=$("$BEAM" admin authkey create --coordinator "http://127.0.0.1:$PORT" --reusable --expiry 1h)

"$BEAM" up --coordinator "http://127.0.0.1:$PORT" --authkey "$KEY" --hostname alpha --state "$DIR/a" --socket "$DIR/a.sock" --socks5 127.0.0.1:11080
"$BEAM" up --coordinator "http://127.0.0.1:$PORT" --authkey "$KEY" --hostname beta --state "$DIR/b" --socket "$DIR/b.sock"

# A tiny HTTP server on beta's host loopback; beta forwards overlay port 18000 to it.
mkdir -p "$DIR/www" && echo "hello from beta" >"$DIR/www/index.html"
python3 -m http.server 18000 --bind 127.0.0.1 --directory "$DIR/www" >/dev/null 2>&1 &
pids="$pids $!"
sleep 0.5

echo "--- beam status (alpha)"
"$BEAM" --socket "$DIR/a.sock" status
echo "--- curl --socks5-hostname 127.0.0.1:11080 http://beta:18000/"
curl -fsS --retry 5 --retry-connrefused --socks5-hostname 127.0.0.1:11080 http://beta:18000/
echo "--- beam status (alpha) after traffic"
"$BEAM" --socket "$DIR/a.sock" status
