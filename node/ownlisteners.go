package node

import (
	"cmp"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"beam.dev/beam/netstack"
	"beam.dev/beam/wire"
	"golang.org/x/time/rate"
)

// ownListeners are the host addresses of the daemon's own loopback
// listeners: its SOCKS5 and HTTP proxies and its DNS listener. A peer that
// reached one of them could have the node dial or resolve on its behalf,
// around the policy, so the engine never forwards a peer's connection to
// them (netstack.Config.OwnListeners), and, should one get through anyway,
// the listeners refuse clients that are the engine's forwarder
// (netstack.FromOverlay; see refuseOverlay).
type ownListeners struct {
	logRate rate.Sometimes // rate-limits the log of refused forwarded clients

	mu sync.Mutex             // guards m
	m  map[netip.AddrPort]int // address -> listeners on it (TCP and UDP)
}

// add records a; it reports whether the set changed. Addresses a peer's
// forwarded connection cannot reach (neither loopback nor unspecified, such
// as MagicDNS inside the netstack) are left out.
func (o *ownListeners) add(a net.Addr) bool {
	ap, ok := hostListenAddr(a)
	if !ok {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = make(map[netip.AddrPort]int)
	}
	o.m[ap]++
	return o.m[ap] == 1
}

// remove undoes add; it reports whether the set changed.
func (o *ownListeners) remove(a net.Addr) bool {
	ap, ok := hostListenAddr(a)
	if !ok {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m[ap] == 0 {
		return false
	}
	o.m[ap]--
	if o.m[ap] > 0 {
		return false
	}
	delete(o.m, ap)
	return true
}

// list returns the set, sorted; nil if empty.
func (o *ownListeners) list() []netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []netip.AddrPort
	for ap := range o.m {
		out = append(out, ap)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Port(), b.Port()))
	})
	return out
}

// hostListenAddr returns a listener's address if it is on the host's
// loopback or all addresses.
func hostListenAddr(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		return netip.AddrPort{}, false
	}
	ip := ap.Addr().Unmap()
	if !ip.IsLoopback() && !ip.IsUnspecified() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, ap.Port()), true
}

// ownListener records a as one of the daemon's own listeners and tells
// the engine; the returned func undoes it. It must not be called with n.mu
// held.
func (n *Node) ownListener(a net.Addr) (release func()) {
	n.setOwnListener(a, true)
	return func() { n.setOwnListener(a, false) }
}

// refuseOverlay wraps a listener of the daemon's own and closes, as soon as
// they are accepted, connections that are the engine forwarding a peer's
// connection to the host (normally the engine refuses those before they
// reach the host; this is the second line).
type refuseOverlay struct {
	net.Listener
	n *Node
}

func (l refuseOverlay) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !netstack.FromOverlay(c.RemoteAddr()) {
			return c, nil
		}
		l.n.noteRefusedOverlay(c.LocalAddr().String(), c.RemoteAddr())
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
		c.Close()
	}
}

// noteRefusedOverlay logs, at most every few seconds, that one of the
// daemon's own listeners refused a peer's forwarded client.
func (n *Node) noteRefusedOverlay(listener string, remote net.Addr) {
	n.own.logRate.Do(func() {
		n.logger.Warn("refused a peer's forwarded connection to the daemon's own listener", "listener", listener, "client", remote.String())
	})
}

// allowDNSClient refuses DNS clients that are the engine forwarding a
// peer's query to a DNS listener of the daemon on loopback.
func (n *Node) allowDNSClient(a net.Addr) bool {
	if netstack.FromOverlay(a) {
		n.noteRefusedOverlay("dns", a)
		return false
	}
	return true
}

// setOwnListener adds a to ownListeners (on) or removes it, and tells the
// engine if the set changed. The resolver calls it for the DNS listeners
// the daemon hands it. It must not be called with n.mu held.
func (n *Node) setOwnListener(a net.Addr, on bool) {
	if on {
		if n.own.add(a) {
			n.reapply()
		}
		return
	}
	if n.own.remove(a) {
		n.reapply()
	}
}

// reapply pushes a changed ownListeners set to the engine.
func (n *Node) reapply() {
	n.mu.Lock()
	n.applyLocked()
	n.mu.Unlock()
}

// serverListeners returns the ports of the servers this node uses that
// run on this host (a URL or address naming loopback, localhost or an
// unspecified address): its coordinators and the relays and STUN
// responders of its relay map. They are the node's own listeners too,
// on every address (netstack.Config.OwnListeners): a peer forwarded to
// one would reach it from the host's loopback, which a coordinator in
// dev mode trusts (registration without an auth key, the console's
// sign-in over plain HTTP).
func serverListeners(coordinators string, dm *wire.DERPMap) []netip.AddrPort {
	var out []netip.AddrPort
	addHostPort := func(host, port string) {
		if !localHostName(host) {
			return
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return
		}
		out = append(out, netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p))) // every address of the port
	}
	addURL := func(s string) {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Hostname() == "" {
			return
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		addHostPort(u.Hostname(), port)
	}
	for s := range strings.SplitSeq(coordinators, ",") {
		addURL(s)
	}
	if dm != nil {
		for _, r := range dm.Regions {
			if r == nil {
				continue
			}
			for _, dn := range r.Nodes {
				if dn == nil {
					continue
				}
				addURL(dn.URL)
				if host, port, err := net.SplitHostPort(dn.STUNAddr); err == nil {
					addHostPort(host, port)
					if dn.STUNAltPort != 0 {
						addHostPort(host, strconv.Itoa(int(dn.STUNAltPort)))
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return cmp.Compare(a.Port(), b.Port()) })
	return slices.Compact(out)
}

// localHostName reports whether a URL's host names this host's loopback
// or every address.
func localHostName(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && (a.Unmap().IsLoopback() || a.IsUnspecified())
}

// engineSockets returns the engine's own UDP sockets (the WireGuard
// bind's port and the peer relay server's) as own listeners on every
// address: a peer's datagram to 100.64.x.y:PORT would otherwise be
// forwarded to the node's own socket from the host's loopback.
func engineSockets(e *netstack.Engine) []netip.AddrPort {
	var out []netip.AddrPort
	if p := e.LocalPort(); p != 0 {
		out = append(out, netip.AddrPortFrom(netip.IPv4Unspecified(), p))
	}
	if st, ok := e.PeerRelay(); ok && st.Port != 0 {
		out = append(out, netip.AddrPortFrom(netip.IPv4Unspecified(), st.Port))
	}
	return out
}
