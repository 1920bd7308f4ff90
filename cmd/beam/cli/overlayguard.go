package cli

import (
	"net"

	"beam.dev/beam/netstack"
)

// refuseForwarded wraps the listener of beam server's coordinator and
// relay and closes, as soon as they are accepted, connections that the
// server's own edge node forwards from a peer (netstack.FromOverlay):
// they come from the host's loopback, which the coordinator trusts in dev
// mode (registration without an auth key) and the console for signing in
// over plain HTTP. The edge node lists the coordinator's port as one of
// its own listeners and does not forward to it; this is the second line.
type refuseForwarded struct{ net.Listener }

func (l refuseForwarded) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !netstack.FromOverlay(c.RemoteAddr()) {
			return c, nil
		}
		c.Close()
	}
}
