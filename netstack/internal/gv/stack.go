// Package gv is Beam's glue to the gVisor TCP/IP stack. It is the only
// package in Beam that imports gvisor.dev/... (and third_party/gvisor/tcp,
// Beam's copy of gVisor's TCP with a BBR-style congestion control);
// everything it exports speaks net, netip and wireguard-go's tun.Device.
//
// A Stack is a gVisor stack with one NIC whose link layer is an in-memory
// channel; that channel is exposed as a tun.Device (see TUN) for a
// wireguard-go device to read outbound packets from and write decrypted
// inbound packets to. Inbound connections that no local listener claims are
// handed to the TCP and UDP handlers in Options, which decide whether to
// accept, reject (RST) or drop them.
package gv

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"beam.dev/beam/netstack/internal/inflight"
	"beam.dev/beam/third_party/gvisor/tcp"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const nicID tcpip.NICID = 1

// TCP buffer sizes. Auto-tuning (moderate receive buffer) grows a
// connection's buffers from the default up to the maximum as its
// bandwidth-delay product requires, so idle connections stay small.
const (
	tcpRXBufMin = tcp.MinBufferSize
	tcpRXBufDef = tcp.DefaultReceiveBufferSize
	tcpRXBufMax = 8 << 20
	tcpTXBufMin = tcp.MinBufferSize
	tcpTXBufDef = tcp.DefaultSendBufferSize
	tcpTXBufMax = 6 << 20
)

// tcpMaxRTO caps TCP's retransmission timeout backoff (gVisor's default,
// like Linux's, is 120 s). An overlay path can vanish for seconds while
// the bind moves between direct UDP and the relay; with the default cap a
// connection that lost packets meanwhile could sit out another minute or
// two after the path came back. The minimum stays at 200 ms.
const tcpMaxRTO = 10 * time.Second

// Options configures a Stack.
type Options struct {
	// MTU is the link MTU of the stack's NIC. Zero means 1280.
	MTU int
	// QueueBytes bounds the outbound packets the link holds for the TUN
	// reader; when it is full, senders wait for room rather than having
	// packets dropped. Zero means 64 KiB: one segmentation-offload burst
	// waits while the TUN reader cuts up the previous one, so the reader
	// never starves, and a bulk sender's excess waits in its send buffer
	// rather than inflating the round-trip time every connection sees. A
	// long queue made retransmission timeouts fire on ACKs that were
	// merely late when the machine was busy, and slowed bulk transfers:
	// TCP grows its window by about a segment per round trip, so every
	// millisecond queued here costs window growth (320 KiB measured 20-25%
	// less throughput than 64 KiB at MTU 1280).
	QueueBytes int
	// Logger receives the stack's logs. Nil discards them.
	Logger *slog.Logger
	// MaxInFlightTCP caps inbound TCP connection attempts that HandleTCP
	// has not completed yet; further SYNs are ignored. Zero means 512.
	MaxInFlightTCP int
	// CongestionControl is "bbr", "cubic" or "reno". Empty means "bbr":
	// a BBR-style control (third_party/gvisor/tcp) that sizes the window
	// from the path's measured bandwidth and round trip, so random loss
	// (Wi-Fi, a lossy uplink) does not shrink it. Cubic and Reno halve
	// the window at every loss and crawl at a few percent loss.
	CongestionControl string
	// RACK enables gVisor's RACK loss detection. False disables it (like
	// Tailscale, whose measurements found it costly in user space).
	RACK bool
	// HandleTCP is called, on its own goroutine, for each inbound TCP SYN
	// to a local address that no listener claims. It must call exactly one
	// of the request's Accept, Reject or Drop. Nil rejects every such SYN.
	HandleTCP func(*TCPRequest)
	// HandleUDP is called on the packet path for each inbound UDP datagram
	// that no local endpoint claims. It must not block; to accept the flow
	// it calls Accept, which makes later datagrams of the flow bypass it.
	// Nil drops such datagrams.
	HandleUDP func(*UDPRequest)
	// Inbound, if non-nil, sees every IP packet written to the TUN before
	// the stack does; returning false drops it. It must not keep pkt.
	Inbound func(pkt []byte) bool
	// Outbound, if non-nil, sees every IP packet the stack sends, before it
	// is handed to the TUN reader; returning false drops it (the reader
	// gets it with size 0, which wireguard-go skips). It must not keep
	// pkt.
	Outbound func(pkt []byte) bool
	// OutboundWindow, if set, counts the packets the TUN hands its reader
	// (wireguard-go), and the TUN waits while it is full; InboundWindow,
	// if set, is released by the packets written to the TUN. See package
	// inflight.
	OutboundWindow, InboundWindow *inflight.Window
}

// Stack is a gVisor network stack with a single channel NIC exposed as a
// TUN device. Its methods are safe for concurrent use.
type Stack struct {
	s      *stack.Stack
	ep     *link
	tun    *TUN
	log    *slog.Logger
	mtu    int
	inFl   int
	tcpFwd *tcp.Forwarder
	udpFwd *udp.Forwarder

	mu     sync.Mutex // guards the following fields
	addrs  map[netip.Addr]bool
	closed bool
}

// New creates a stack with IPv4, IPv6, TCP, UDP and ICMP, no addresses,
// and default routes for both families through its TUN.
func New(opts Options) (*Stack, error) {
	if opts.MTU == 0 {
		opts.MTU = 1280
	}
	if opts.MTU < 1280 || opts.MTU > 65535 {
		return nil, fmt.Errorf("gv: MTU %d out of range [1280, 65535]", opts.MTU)
	}
	if opts.QueueBytes == 0 {
		opts.QueueBytes = 64 << 10
	}
	if opts.MaxInFlightTCP == 0 {
		opts.MaxInFlightTCP = 512
	}
	if opts.CongestionControl == "" {
		opts.CongestionControl = "bbr"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		// HandleLocal lets the node dial its own addresses (for example a
		// MagicDNS service address) without going through WireGuard.
		HandleLocal: true,
	})
	st := &Stack{
		s: s,
		// WireGuard authenticates every packet before it reaches the
		// stack, so verifying TCP/UDP checksums again on receive is wasted
		// work. Outbound checksums are still computed: peers may be any
		// WireGuard. Segmentation offload: TCP hands the link packets of
		// up to 64 KiB, which the TUN reader cuts to the MTU (see
		// segmenter), saving gVisor's per-packet work.
		ep:    newLink(opts.QueueBytes, uint32(opts.MTU), stack.CapabilityRXChecksumOffload, stack.HostGSOSupported),
		log:   log,
		mtu:   opts.MTU,
		inFl:  opts.MaxInFlightTCP,
		addrs: make(map[netip.Addr]bool),
	}
	if err := st.tune(opts); err != nil {
		s.Destroy()
		return nil, err
	}
	if err := Err(s.CreateNIC(nicID, st.ep)); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("gv: create NIC: %w", err)
	}
	s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})

	handleTCP := opts.HandleTCP
	st.tcpFwd = tcp.NewForwarder(s, 0, opts.MaxInFlightTCP, func(r *tcp.ForwarderRequest) {
		req := newTCPRequest(st, r)
		if handleTCP == nil {
			req.Reject()
			return
		}
		handleTCP(req)
	})
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, st.tcpFwd.HandlePacket)
	handleUDP := opts.HandleUDP
	st.udpFwd = udp.NewForwarder(s, func(r *udp.ForwarderRequest) bool {
		if handleUDP != nil {
			handleUDP(newUDPRequest(st, r))
		}
		return true // taken either way: no ICMP port unreachable
	})
	s.SetTransportProtocolHandler(udp.ProtocolNumber, st.udpFwd.HandlePacket)

	st.tun = newTUN(st.ep, opts.MTU, opts.Inbound, opts.Outbound, opts.OutboundWindow, opts.InboundWindow)
	return st, nil
}

func (st *Stack) tune(opts Options) error {
	s := st.s
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rx := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpRXBufMin, Default: tcpRXBufDef, Max: tcpRXBufMax}
	tx := tcpip.TCPSendBufferSizeRangeOption{Min: tcpTXBufMin, Default: tcpTXBufDef, Max: tcpTXBufMax}
	cc := tcpip.CongestionControlOption(opts.CongestionControl)
	maxRTO := tcpip.TCPMaxRTOOption(tcpMaxRTO)
	recovery := tcpip.TCPRecovery(0)
	if opts.RACK {
		recovery = tcpip.TCPRACKLossDetection
	}
	for _, o := range []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"SACK", &sack},
		{"moderate receive buffer", &moderate},
		{"receive buffer range", &rx},
		{"send buffer range", &tx},
		{"congestion control", &cc},
		{"recovery", &recovery},
		{"max RTO", &maxRTO},
	} {
		if err := Err(s.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt)); err != nil {
			return fmt.Errorf("gv: set TCP %s: %w", o.name, err)
		}
	}
	return nil
}

// TUN returns the stack's link as a wireguard-go tun.Device. The same
// value is returned on every call; closing it stops packet flow.
func (st *Stack) TUN() *TUN { return st.tun }

// MTU returns the stack's link MTU.
func (st *Stack) MTU() int { return st.mtu }

// SetAddresses makes addrs exactly the set of local addresses of the
// stack, adding and removing only the differences so connections on
// addresses that stay are not disturbed.
func (st *Stack) SetAddresses(addrs []netip.Addr) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return errors.New("gv: stack closed")
	}
	want := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	var errs []error
	for a := range st.addrs {
		if !want[a] {
			if err := Err(st.s.RemoveAddress(nicID, tcpip.AddrFromSlice(a.AsSlice()))); err != nil {
				errs = append(errs, fmt.Errorf("remove address %v: %w", a, err))
				continue
			}
			delete(st.addrs, a)
		}
	}
	for a := range want {
		if st.addrs[a] {
			continue
		}
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
		}
		if err := Err(st.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{})); err != nil {
			errs = append(errs, fmt.Errorf("add address %v: %w", a, err))
			continue
		}
		st.addrs[a] = true
	}
	return errors.Join(errs...)
}

// HasAddress reports whether a is one of the stack's local addresses.
func (st *Stack) HasAddress(a netip.Addr) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.addrs[a.Unmap()]
}

// Close aborts every endpoint, stops the stack's workers and the TUN, and
// waits for gVisor's goroutines to exit. It is idempotent.
func (st *Stack) Close() {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	st.closed = true
	st.mu.Unlock()
	st.tun.Close()
	st.s.Close()
	st.s.Wait()
	st.ep.Close()
}

func toAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

func toFull(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if a.Is6() {
		proto = ipv6.ProtocolNumber
	}
	fa := tcpip.FullAddress{NIC: nicID, Port: ap.Port()}
	if a.IsValid() && !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return fa, proto
}

// ProbeTCP sends a keepalive-style probe on every connected TCP endpoint
// whose remote address remote accepts (see tcp.Endpoint.Probe): a peer
// that restarted answers each with a RST, so connections that only wait
// for data learn at once that it will not come.
func (st *Stack) ProbeTCP(remote func(netip.Addr) bool) int {
	n := 0
	for _, ep := range st.s.RegisteredEndpoints() {
		tep, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		info, ok := tep.Info().(*stack.TransportEndpointInfo)
		if !ok || !remote(toAddr(info.ID.RemoteAddress).Unmap()) {
			continue
		}
		tep.Probe()
		n++
	}
	return n
}
