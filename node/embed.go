package node

import (
	"net"

	"beam.dev/beam/expose"
)

// What a program that embeds a node (package beamnet) needs beyond the
// daemon's operations: listeners of its own inside the engine, and its
// own listener as the app of a published route.

// Listen listens for TCP connections from peers inside the engine, on
// address (an overlay IP literal and port; ":port" listens on every
// overlay address of the node). Connections to that port then reach the
// listener rather than the host's loopback; the packet filter (the
// network's policy) and shields-up apply to them as to forwarded ones.
// The listener lives as long as the engine: Down, Logout and Close end
// it. Without a running engine it returns ErrNotRunning.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	n.mu.Lock()
	e := n.engine
	n.mu.Unlock()
	if e == nil {
		return nil, ErrNotRunning
	}
	return e.Listen(network, address)
}

// ListenPacket opens a UDP socket inside the engine on address, as Listen
// does for TCP: datagrams from peers to that port reach it rather than
// the host's loopback, subject to the packet filter.
func (n *Node) ListenPacket(network, address string) (net.PacketConn, error) {
	n.mu.Lock()
	e := n.engine
	n.mu.Unlock()
	if e == nil {
		return nil, ErrNotRunning
	}
	return e.ListenPacket(network, address)
}

// SetRouteApp makes app the destination of this node's http routes to
// local port port, instead of 127.0.0.1:port; nil goes back to the port.
// An embedding program registers its public listener this way before it
// publishes the route with Expose.
func (n *Node) SetRouteApp(port uint16, app expose.AppDialer) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if app == nil {
		delete(n.routeApps, port)
	} else {
		if n.routeApps == nil {
			n.routeApps = map[uint16]expose.AppDialer{}
		}
		n.routeApps[port] = app
	}
	n.applyLocked()
}
