package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"beam.dev/beam/netstack/internal/inflight"
	"golang.zx2c4.com/wireguard/tun"
)

// Kernel TUN mode (Options.TUN): wireguard-go runs on a kernel TUN device
// instead of the gVisor stack, and the host's own TCP/IP serves the overlay.
//
//	peer --UDP/relay--> bind --> wireguard-go (decrypt) --> tunFilter.Write --> kernel TUN --> host sockets
//	host app --> kernel routes (Config.Routes) --> kernel TUN --> tunFilter.Read --> wireguard-go (encrypt) --> bind --> peer
//
// The packet filter is the same as in userspace mode (packetFilter): new
// inbound flows must match the policy, flows this node opened are
// recorded on the way out so their replies pass. Nothing is forwarded to
// loopback: a peer reaches whatever the host serves on its overlay
// addresses, and, like userspace mode, never the node's own listeners
// (Config.OwnListeners on an unspecified or overlay address).

// tunFilter wraps the kernel TUN device with the engine's packet filter.
// wireguard-go calls Read from one goroutine and Write from one per peer.
type tunFilter struct {
	tun.Device
	pf *packetFilter
	// ownPorts are the ports of Config.OwnListeners that an inbound flow
	// to an overlay address could reach (listeners on an unspecified or
	// overlay address); nil when none.
	ownPorts atomic.Pointer[ownPortSet]
	// onOwn is called for each new inbound flow refused by ownPorts.
	onOwn func(proto string, src, dst netip.AddrPort)
	// steer, if not nil, maps the engine's TUN-mode listeners (see
	// Engine.tunListen) between the port peers dial and the port they
	// are bound to.
	steer atomic.Pointer[steerMap]
	// reply, if set, sends a packet the filter answers with (a TCP
	// reset) back to the peer; nil drops refused packets silently.
	reply func(pkt []byte)
	// onOutbound, if set, sees each packet the host sends into the
	// overlay before wireguard-go does (Engine.noteOutbound).
	onOutbound func(pkt []byte) bool
	// outWin counts the packets Read hands wireguard-go until the bind
	// sent them, and Read waits while it is full; inWin is released by
	// the packets Write takes (the bind counts them in). Either may be
	// nil. As in userspace mode (gv.TUN), they bound the packets
	// wireguard-go holds, each in a 64 KiB buffer, where the host's TCP
	// windows alone would let thousands wait in its queues.
	outWin, inWin *inflight.Window
	readWait      *inflight.Waiter
}

// ownPortSet is an immutable set of the destinations of Config.OwnListeners,
// for both TCP and UDP.
type ownPortSet struct {
	any  map[uint16]bool         // listeners on an unspecified address
	addr map[netip.AddrPort]bool // listeners on one overlay address
	svc  map[netip.Addr]bool     // Config.ServiceAddrs: only this node's own programs use them
}

// Read reads packets the host sends into the overlay and records the
// flows they open (see packetFilter.outbound).
func (t *tunFilter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.readWait.Wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	defer func() {
		handed := 0
		for i := range n {
			if sizes[i] > 0 {
				handed++
			}
		}
		t.outWin.Add(handed)
	}()
	if s := t.steer.Load(); s != nil {
		for i := range n {
			s.rewrite(bufs[i][offset:offset+sizes[i]], false)
		}
	}
	if t.onOutbound != nil {
		for i := range n {
			if sizes[i] > 0 && !t.onOutbound(bufs[i][offset:offset+sizes[i]]) {
				sizes[i] = 0 // wireguard-go skips it
			}
		}
	}
	if n > 0 && !t.pf.pol.Load().open {
		for i := range n {
			if sizes[i] > 0 {
				t.pf.outbound(bufs[i][offset : offset+sizes[i]])
			}
		}
	}
	return n, err
}

// Write hands the host the packets from peers that the filter accepts.
// Refused packets are dropped, and a refused TCP SYN is answered with a
// reset, as the userspace stack does, so a denied port fails fast; bufs
// is compacted in place (wireguard-go rebuilds the slice for every call).
func (t *tunFilter) Write(bufs [][]byte, offset int) (int, error) {
	t.inWin.Done(len(bufs))
	own, steer := t.ownPorts.Load(), t.steer.Load()
	if own == nil && steer == nil && t.pf.pol.Load().open {
		return t.Device.Write(bufs, offset)
	}
	kept := bufs[:0]
	for _, b := range bufs {
		pkt := b[offset:]
		if !t.pf.inbound(pkt) || (own != nil && t.refusedOwn(own, pkt)) {
			if t.reply != nil {
				if rst := tcpResetFor(pkt); rst != nil {
					t.reply(rst)
				}
			}
			continue
		}
		if steer != nil {
			steer.rewrite(pkt, true)
		}
		kept = append(kept, b)
	}
	if len(kept) == 0 {
		return 0, nil
	}
	return t.Device.Write(kept, offset)
}

// refusedOwn reports whether pkt is for a service address or opens a flow
// to one of the node's own listeners.
func (t *tunFilter) refusedOwn(own *ownPortSet, pkt []byte) bool {
	pi, ok := parsePacket(pkt)
	if !ok {
		return false
	}
	if own.svc[pi.dst] {
		// MagicDNS and the like serve this host; a peer has its own.
		return true
	}
	if pi.fragment {
		return false
	}
	var proto string
	switch {
	case pi.proto == protoTCP && pi.tcpSYNOnly:
		proto = "tcp"
	case pi.proto == protoUDP:
		proto = "udp"
	default:
		return false
	}
	dst := netip.AddrPortFrom(pi.dst, pi.dport)
	if !own.any[pi.dport] && !own.addr[dst] {
		return false
	}
	if t.onOwn != nil {
		t.onOwn(proto, netip.AddrPortFrom(pi.src, pi.sport), dst)
	}
	return true
}

// steerMap is an immutable set of the engine's TUN-mode TCP listeners on
// an overlay address: peers dial addr:port, the listener is bound to
// addr:bound, a port the kernel chose, so the host's own server on
// 0.0.0.0:port does not keep the engine's listener from binding (and the
// engine's listener takes precedence for peers, as in userspace mode).
type steerMap struct {
	in  map[netip.AddrPort]uint16 // addr:port -> bound
	out map[netip.AddrPort]uint16 // addr:bound -> port
}

// rewrite changes the port of a TCP segment steered by s: the destination
// port of a segment from a peer (in), or the source port of one the host
// sends (out), with the checksum updated to match.
func (s *steerMap) rewrite(pkt []byte, in bool) {
	var addr netip.Addr
	var l4 []byte
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4 && pkt[9] == protoTCP && binary.BigEndian.Uint16(pkt[6:8])&0x1fff == 0:
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || len(pkt) < ihl+20 {
			return
		}
		l4 = pkt[ihl:]
		if in {
			addr = netip.AddrFrom4([4]byte(pkt[16:20]))
		} else {
			addr = netip.AddrFrom4([4]byte(pkt[12:16]))
		}
	case len(pkt) >= 60 && pkt[0]>>4 == 6 && pkt[6] == protoTCP:
		l4 = pkt[40:]
		if in {
			addr = netip.AddrFrom16([16]byte(pkt[24:40]))
		} else {
			addr = netip.AddrFrom16([16]byte(pkt[8:24]))
		}
	default:
		return
	}
	field, m := l4[2:4], s.in // destination port
	if !in {
		field, m = l4[0:2], s.out // source port
	}
	old := binary.BigEndian.Uint16(field)
	port, ok := m[netip.AddrPortFrom(addr, old)]
	if !ok {
		return
	}
	binary.BigEndian.PutUint16(field, port)
	// RFC 1624: HC' = ~(~HC + ~m + m').
	sum := uint32(^binary.BigEndian.Uint16(l4[16:18])) + uint32(^old) + uint32(port)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(l4[16:18], ^uint16(sum))
}

// steeredListener is a TUN-mode listener bound to another port than the
// one peers dial; Close ends the steering.
type steeredListener struct {
	net.Listener
	addr   net.Addr // the address peers dial
	remove func()
}

func (l *steeredListener) Addr() net.Addr { return l.addr }

func (l *steeredListener) Close() error {
	l.remove()
	return l.Listener.Close()
}

// listenSteered listens for peers' TCP connections to ap, an overlay
// address and port, on a port of ap's address that the kernel chooses,
// and has the TUN filter steer ap's segments there.
func (e *Engine) listenSteered(ap netip.AddrPort) (net.Listener, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ap.Addr(), 0).String())
	if err != nil {
		return nil, err
	}
	bound := netip.AddrPortFrom(ap.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port))
	e.steerMu.Lock()
	defer e.steerMu.Unlock()
	if _, dup := e.steered[ap]; dup {
		ln.Close()
		return nil, fmt.Errorf("netstack: listen tcp %s: the engine already listens there", ap)
	}
	if e.steered == nil {
		e.steered = map[netip.AddrPort]uint16{}
	}
	e.steered[ap] = bound.Port()
	e.publishSteerLocked()
	var once sync.Once
	return &steeredListener{Listener: ln, addr: net.TCPAddrFromAddrPort(ap), remove: func() {
		once.Do(func() {
			e.steerMu.Lock()
			defer e.steerMu.Unlock()
			delete(e.steered, ap)
			e.publishSteerLocked()
		})
	}}, nil
}

// publishSteerLocked hands the TUN filter the current steered listeners.
// e.steerMu held.
func (e *Engine) publishSteerLocked() {
	if len(e.steered) == 0 {
		e.tun.steer.Store(nil)
		return
	}
	s := &steerMap{in: map[netip.AddrPort]uint16{}, out: map[netip.AddrPort]uint16{}}
	for ap, bound := range e.steered {
		s.in[ap] = bound
		s.out[netip.AddrPortFrom(ap.Addr(), bound)] = ap.Port()
	}
	e.tun.steer.Store(s)
}

// tcpResetFor returns the RST|ACK that refuses pkt if pkt is a TCP SYN
// (without ACK) in an unfragmented IPv4 packet or an IPv6 packet without
// extension headers, else nil. The reset goes from pkt's destination to
// its source and acknowledges the SYN and any data it carries (RFC 9293
// 3.10.7.1).
func tcpResetFor(pkt []byte) []byte {
	var l4 []byte
	var src, dst netip.Addr
	if len(pkt) < 1 {
		return nil
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 || pkt[9] != protoTCP {
			return nil
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl || total > len(pkt) || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return nil // malformed, or a fragment
		}
		src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		l4 = pkt[ihl:total]
	case 6:
		if len(pkt) < 40 || pkt[6] != protoTCP {
			return nil
		}
		end := 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
		if end > len(pkt) {
			return nil
		}
		src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		l4 = pkt[40:end]
	default:
		return nil
	}
	if len(l4) < 20 {
		return nil
	}
	doff := int(l4[12]>>4) * 4
	if doff < 20 || doff > len(l4) || l4[13]&(tcpFlagSYN|tcpFlagACK|tcpFlagRST) != tcpFlagSYN {
		return nil
	}
	ack := binary.BigEndian.Uint32(l4[4:8]) + 1 + uint32(len(l4)-doff)

	var rst []byte
	var tcp []byte
	if src.Is4() {
		rst = make([]byte, 20+20)
		rst[0] = 0x45
		binary.BigEndian.PutUint16(rst[2:4], uint16(len(rst)))
		rst[8] = 64
		rst[9] = protoTCP
		d, s := dst.As4(), src.As4()
		copy(rst[12:16], d[:])
		copy(rst[16:20], s[:])
		binary.BigEndian.PutUint16(rst[10:12], ^checksum(0, rst[:20]))
		tcp = rst[20:]
	} else {
		rst = make([]byte, 40+20)
		rst[0] = 0x60
		binary.BigEndian.PutUint16(rst[4:6], 20)
		rst[6] = protoTCP
		rst[7] = 64
		d, s := dst.As16(), src.As16()
		copy(rst[8:24], d[:])
		copy(rst[24:40], s[:])
		tcp = rst[40:]
	}
	copy(tcp[0:2], l4[2:4]) // source port: the refused destination port
	copy(tcp[2:4], l4[0:2])
	binary.BigEndian.PutUint32(tcp[8:12], ack)
	tcp[12] = 5 << 4
	tcp[13] = tcpFlagRST | tcpFlagACK
	// Pseudo-header: addresses, protocol, TCP length.
	var sum uint32
	if src.Is4() {
		sum = uint32(checksum(0, rst[12:20]))
	} else {
		sum = uint32(checksum(0, rst[8:40]))
	}
	sum += protoTCP + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:18], ^checksum(sum, tcp))
	return rst
}

// TCP header flags used by tcpResetFor.
const (
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10
)

// checksum adds b to the one's-complement sum sum and folds it to 16 bits
// (the Internet checksum before the final complement).
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// newOwnPortSet returns what inbound packets from peers must not reach in
// TUN mode, or nil if nothing: the service addresses, and the own
// listeners on an unspecified address or on one of the overlay addresses
// (loopback listeners are out of the overlay's reach).
func newOwnPortSet(own []netip.AddrPort, overlay map[netip.Addr]bool, svc []netip.Addr) *ownPortSet {
	s := &ownPortSet{any: map[uint16]bool{}, addr: map[netip.AddrPort]bool{}, svc: map[netip.Addr]bool{}}
	for _, a := range svc {
		s.svc[a.Unmap()] = true
	}
	for _, ap := range own {
		a := ap.Addr().Unmap()
		switch {
		case a.IsUnspecified():
			s.any[ap.Port()] = true
		case overlay[a]:
			s.addr[netip.AddrPortFrom(a, ap.Port())] = true
		}
	}
	if len(s.any) == 0 && len(s.addr) == 0 && len(s.svc) == 0 {
		return nil
	}
	return s
}

// hostNet is the data plane's face to the host in TUN mode: the kernel
// device with its addresses and routes. Implemented per platform
// (tun_linux.go; elsewhere newHostNet fails).
type hostNet interface {
	// device is the kernel TUN device, for wireguard-go.
	device() tun.Device
	// setAddrs makes addrs the device's addresses and routes the device's
	// routes (each with a preferred source address of its family from
	// src, if any), changing only what differs from the last call.
	setAddrs(addrs []netip.Addr, routes []netip.Prefix, src []netip.Addr) error
	// send sends an IP packet out of the device, as if the host had sent
	// it: it reaches the peer its destination belongs to.
	send(pkt []byte) error
}

// ErrTUNUnsupported is returned by New for Options.TUN on platforms
// without kernel TUN mode.
var ErrTUNUnsupported = errors.New("netstack: kernel TUN mode is not supported on this platform")

// tunDial dials address from the host (TUN mode): the kernel routes
// overlay destinations through the device.
func tunDial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, proto, ap.String())
}

// tunListen listens on the host (TUN mode). An unspecified address is
// replaced by the node's overlay addresses of both families: the
// engine's listeners are the overlay's, never the host's other networks.
// A TCP listener on an overlay address is steered (listenSteered): it
// binds a port the kernel chooses and the TUN filter maps peers'
// segments to and from it, so it binds beside a host server on
// 0.0.0.0:port and, as in userspace mode, takes precedence over that
// server for peers (the host's own connections to the overlay address
// still reach the host server).
func (e *Engine) tunListen(proto string, ap netip.AddrPort) (any, error) {
	if ap.Addr().IsValid() && !ap.Addr().IsUnspecified() {
		if proto == "tcp" {
			if ap.Port() != 0 && e.isOverlay(ap.Addr()) {
				return e.listenSteered(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			}
			return net.Listen("tcp", ap.String())
		}
		return net.ListenPacket("udp", ap.String())
	}
	e.mu.Lock()
	var addrs []netip.Addr
	for a := range e.overlay {
		addrs = append(addrs, a)
	}
	e.mu.Unlock()
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	if len(addrs) == 0 {
		return nil, fmt.Errorf("netstack: listen %s: the node has no overlay address yet", ap)
	}
	// One socket per address would need a merged listener; the first
	// IPv4 address covers what peers dial in practice.
	a := addrs[0]
	for _, x := range addrs {
		if x.Is4() {
			a = x
			break
		}
	}
	bound := netip.AddrPortFrom(a, ap.Port())
	if proto == "tcp" {
		if ap.Port() != 0 {
			return e.listenSteered(bound)
		}
		return net.Listen("tcp", bound.String())
	}
	return net.ListenPacket("udp", bound.String())
}

// newTUNDevice creates the kernel device for Options.TUN and wraps it
// with the engine's filter.
func (e *Engine) newTUNDevice(name string, mtu int, outWin, inWin *inflight.Window) (*tunFilter, hostNet, error) {
	hn, err := newHostNet(name, mtu, e.log)
	if err != nil {
		return nil, nil, err
	}
	tf := &tunFilter{Device: hn.device(), pf: &e.pf, onOutbound: e.noteOutbound, onOwn: func(proto string, src, dst netip.AddrPort) {
		e.refuseOwn(proto, src, dst)
	}, reply: func(pkt []byte) {
		if err := hn.send(pkt); err != nil {
			e.log.Debug("TUN filter: send a reset to the peer", "err", err)
		}
	}, outWin: outWin, inWin: inWin, readWait: outWin.NewWaiter()}
	return tf, hn, nil
}

// dropDeviceAddrs leaves out of eps the addresses the engine put on its
// TUN device (TUN mode): they are reached through the overlay, so they
// cannot carry the overlay itself.
func (e *Engine) dropDeviceAddrs(eps []netip.AddrPort) []netip.AddrPort {
	if e.tun == nil {
		return eps
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.DeleteFunc(eps, func(ap netip.AddrPort) bool {
		a := ap.Addr().Unmap()
		return e.overlay[a] || slices.Contains(e.cfg.ServiceAddrs, a)
	})
}
