package netstack

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// IP protocol numbers the filter knows.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Filter is an inbound packet filter (a compiled ACL). A packet from a peer
// that opens a new flow is accepted if any rule matches it; replies to
// flows this node opened always pass.
type Filter struct {
	// Rules are tried in order; the first match accepts. No rules means
	// nothing new is accepted.
	Rules []FilterRule
}

// FilterRule accepts new inbound flows from SrcIPs or SrcSets to DstPorts.
type FilterRule struct {
	// SrcIPs are the peer addresses the rule applies to. Empty matches
	// nothing (unless SrcSets does).
	SrcIPs []netip.Prefix
	// SrcSets are more peer addresses, in sets that rules may share.
	// Nil sets match nothing.
	SrcSets []*AddrSet
	// DstPorts are the destinations (local address prefix and port range)
	// the rule opens. For ICMP only the prefix is checked. Empty matches
	// nothing.
	DstPorts []PortRange
	// Protos are IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
	// Empty means TCP, UDP, ICMP and ICMPv6.
	Protos []uint8
}

// AddrSet is an immutable set of source addresses and prefixes, looked
// up in constant time per address however many it holds.
type AddrSet struct {
	hosts    map[netip.Addr]struct{}
	prefixes []netip.Prefix // those that are not single addresses
}

// NewAddrSet returns the set of the addresses in ps.
func NewAddrSet(ps []netip.Prefix) *AddrSet {
	s := &AddrSet{hosts: make(map[netip.Addr]struct{}, len(ps))}
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if p.IsSingleIP() {
			s.hosts[p.Addr()] = struct{}{}
		} else {
			s.prefixes = append(s.prefixes, p.Masked())
		}
	}
	return s
}

// Len returns the number of addresses and prefixes in s.
func (s *AddrSet) Len() int { return len(s.hosts) + len(s.prefixes) }

// Contains reports whether a is in s.
func (s *AddrSet) Contains(a netip.Addr) bool {
	if s == nil {
		return false
	}
	if _, ok := s.hosts[a]; ok {
		return true
	}
	for _, p := range s.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// PortRange is a destination prefix with an inclusive port range.
type PortRange struct {
	// Prefix is the destination address prefix; an invalid (zero) prefix
	// matches every destination.
	Prefix netip.Prefix
	// First and Last bound the port range, inclusive. Both zero means
	// every port.
	First, Last uint16
}

// packetInfo is what the filter reads from an IP packet.
type packetInfo struct {
	proto      uint8
	src, dst   netip.Addr
	sport      uint16
	dport      uint16 // for ICMP echo: the echo identifier (in both)
	tcpSYNOnly bool   // TCP SYN without ACK: opens a connection
	icmpEcho   uint8  // 1 request, 2 reply, 0 other ICMP
	fragment   bool   // a non-first fragment: no transport header
	// icmpQuoted is, for an ICMP error (destination unreachable, packet
	// too big, time exceeded, parameter problem), the start of the packet
	// it quotes; nil for every other packet.
	icmpQuoted []byte
}

// parsePacket decodes the IP and transport headers of pkt. ok is false for
// packets too short or malformed to judge.
func parsePacket(pkt []byte) (pi packetInfo, ok bool) {
	if len(pkt) < 1 {
		return pi, false
	}
	var l4 []byte
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return pi, false
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < 20 || len(pkt) < ihl {
			return pi, false
		}
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if total < ihl || total > len(pkt) {
			return pi, false
		}
		pi.proto = pkt[9]
		pi.src = netip.AddrFrom4([4]byte(pkt[12:16]))
		pi.dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
			pi.fragment = true
			return pi, true
		}
		l4 = pkt[ihl:total]
	case 6:
		if len(pkt) < 40 {
			return pi, false
		}
		pi.src = netip.AddrFrom16([16]byte(pkt[8:24]))
		pi.dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		next := pkt[6]
		off := 40
		// Walk the common extension headers to the transport header.
		for i := 0; i < 8; i++ {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(pkt) < off+8 {
					return pi, false
				}
				next = pkt[off]
				off += 8 + int(pkt[off+1])*8
				continue
			case 44: // fragment
				if len(pkt) < off+8 {
					return pi, false
				}
				fragOff := binary.BigEndian.Uint16(pkt[off+2:off+4]) >> 3
				next = pkt[off]
				off += 8
				if fragOff != 0 {
					pi.proto = next
					pi.fragment = true
					return pi, true
				}
				continue
			}
			break
		}
		if off > len(pkt) {
			return pi, false
		}
		pi.proto = next
		l4 = pkt[off:]
	default:
		return pi, false
	}
	switch pi.proto {
	case protoTCP:
		if len(l4) < 20 {
			return pi, false
		}
		pi.sport = binary.BigEndian.Uint16(l4[0:2])
		pi.dport = binary.BigEndian.Uint16(l4[2:4])
		flags := l4[13]
		pi.tcpSYNOnly = flags&0x02 != 0 && flags&0x10 == 0
	case protoUDP:
		if len(l4) < 8 {
			return pi, false
		}
		pi.sport = binary.BigEndian.Uint16(l4[0:2])
		pi.dport = binary.BigEndian.Uint16(l4[2:4])
	case protoICMP, protoICMPv6:
		if len(l4) < 8 {
			return pi, false
		}
		switch t := l4[0]; {
		case (pi.proto == protoICMP && t == 8) || (pi.proto == protoICMPv6 && t == 128):
			pi.icmpEcho = 1
		case (pi.proto == protoICMP && t == 0) || (pi.proto == protoICMPv6 && t == 129):
			pi.icmpEcho = 2
		case (pi.proto == protoICMP && (t == 3 || t == 11 || t == 12)) || (pi.proto == protoICMPv6 && t >= 1 && t <= 4):
			pi.icmpQuoted = l4[8:]
		}
		id := binary.BigEndian.Uint16(l4[4:6])
		pi.sport, pi.dport = id, id
	}
	return pi, true
}

// parseQuoted decodes the packet an ICMP error quotes: its IP header and
// the first 8 bytes of its transport header (the rest may be cut off).
// ok is false if that much is not there, it is a fragment past the first,
// or its protocol is not TCP, UDP or an ICMP echo request.
func parseQuoted(b []byte) (pi packetInfo, ok bool) {
	if len(b) < 1 {
		return pi, false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+8 || binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return pi, false
		}
		pi.proto = b[9]
		pi.src = netip.AddrFrom4([4]byte(b[12:16]))
		pi.dst = netip.AddrFrom4([4]byte(b[16:20]))
		l4 = b[ihl:]
	case 6:
		if len(b) < 48 {
			return pi, false
		}
		pi.proto = b[6] // extension headers: not a flow this node sends
		pi.src = netip.AddrFrom16([16]byte(b[8:24]))
		pi.dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return pi, false
	}
	switch pi.proto {
	case protoTCP, protoUDP:
		pi.sport = binary.BigEndian.Uint16(l4[0:2])
		pi.dport = binary.BigEndian.Uint16(l4[2:4])
	case protoICMP, protoICMPv6:
		if t := l4[0]; !(pi.proto == protoICMP && t == 8) && !(pi.proto == protoICMPv6 && t == 128) {
			return pi, false
		}
		pi.icmpEcho = 1
		id := binary.BigEndian.Uint16(l4[4:6])
		pi.sport, pi.dport = id, id
	default:
		return pi, false
	}
	return pi, true
}

// flowKey names a flow from this node's side.
type flowKey struct {
	proto  uint8
	local  netip.AddrPort
	remote netip.AddrPort
}

const (
	// flowTimeout is how long a UDP or ICMP flow this node opened keeps
	// accepting replies after its last outbound packet.
	flowTimeout = 2 * time.Minute
	// maxFlows bounds the flow table; the oldest half is dropped when full.
	maxFlows = 1 << 16
)

// flowTable remembers UDP and ICMP echo flows this node opened, so their
// replies pass the filter.
type flowTable struct {
	mu    sync.Mutex // guards the following fields
	flows map[flowKey]int64
	sweep int64 // unix seconds of the last expiry sweep
}

// noteOutbound records an outbound packet's flow.
func (t *flowTable) noteOutbound(pi *packetInfo, now int64) {
	if pi.proto == protoTCP || pi.fragment {
		return
	}
	if (pi.proto == protoICMP || pi.proto == protoICMPv6) && pi.icmpEcho != 1 {
		return
	}
	k := flowKey{proto: pi.proto, local: netip.AddrPortFrom(pi.src, pi.sport), remote: netip.AddrPortFrom(pi.dst, pi.dport)}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows == nil {
		t.flows = make(map[flowKey]int64)
	}
	if last, ok := t.flows[k]; ok && last == now {
		return
	}
	t.flows[k] = now
	if len(t.flows) >= maxFlows || now-t.sweep > 30 {
		t.sweep = now
		cut := now - int64(flowTimeout/time.Second)
		for k, last := range t.flows {
			if last < cut || len(t.flows) >= maxFlows {
				delete(t.flows, k)
			}
		}
	}
}

// isReply reports whether an inbound packet answers a flow we opened.
func (t *flowTable) isReply(pi *packetInfo, now int64) bool {
	if (pi.proto == protoICMP || pi.proto == protoICMPv6) && pi.icmpEcho != 2 {
		return false
	}
	k := flowKey{proto: pi.proto, local: netip.AddrPortFrom(pi.dst, pi.dport), remote: netip.AddrPortFrom(pi.src, pi.sport)}
	if pi.proto == protoICMP || pi.proto == protoICMPv6 {
		// Echo replies carry the request's identifier in the same field.
		k.local = netip.AddrPortFrom(pi.dst, pi.sport)
		k.remote = netip.AddrPortFrom(pi.src, pi.dport)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	last, ok := t.flows[k]
	return ok && now-last <= int64(flowTimeout/time.Second)
}

// opened reports whether this node sent the outbound packet pi (a UDP
// datagram or an ICMP echo request) within flowTimeout.
func (t *flowTable) opened(pi *packetInfo, now int64) bool {
	k := flowKey{proto: pi.proto, local: netip.AddrPortFrom(pi.src, pi.sport), remote: netip.AddrPortFrom(pi.dst, pi.dport)}
	t.mu.Lock()
	defer t.mu.Unlock()
	last, ok := t.flows[k]
	return ok && now-last <= int64(flowTimeout/time.Second)
}

// icmpErrorOurs reports whether the ICMP error pi is about a packet this
// node sent to the error's sender: the quoted packet went from the error's
// destination to its source, and is TCP (the stack matches it to a
// connection or ignores it) or a UDP or echo flow this node opened.
func (f *packetFilter) icmpErrorOurs(pi *packetInfo) bool {
	q, ok := parseQuoted(pi.icmpQuoted)
	if !ok || q.dst != pi.src || q.src != pi.dst {
		return false
	}
	if q.proto == protoTCP {
		return true
	}
	return f.flows.opened(&q, f.now())
}

// policy is the immutable inbound policy in force, swapped whole on
// Reconfig.
type policy struct {
	open      bool // no filter, shields down: accept everything
	shieldsUp bool
	allow     []uint16 // with shieldsUp, ports still open
	edgeOnly  []uint16 // with shieldsUp, ports still open to edges
	edges     []netip.Addr
	filter    *Filter // nil: no rule check
}

func newPolicy(cfg *Config) *policy {
	p := &policy{shieldsUp: cfg.ShieldsUp, filter: cfg.Filter}
	if cfg.ShieldsUp {
		p.allow = slices.Clone(cfg.AllowInbound)
		p.edgeOnly = slices.Clone(cfg.EdgeInbound)
		p.edges = slices.Clone(cfg.Edges)
	}
	p.open = !p.shieldsUp && p.filter == nil
	return p
}

// acceptNew reports whether the policy lets a packet that opens a new
// inbound flow through.
func (p *policy) acceptNew(pi *packetInfo) bool {
	if p.shieldsUp {
		if pi.proto != protoTCP && pi.proto != protoUDP {
			return false
		}
		if !slices.Contains(p.allow, pi.dport) &&
			!(slices.Contains(p.edgeOnly, pi.dport) && slices.Contains(p.edges, pi.src)) {
			return false
		}
	}
	if p.filter == nil {
		return true
	}
	return p.filter.match(pi)
}

// Allows reports whether f lets a packet of IP protocol proto from src
// open a new flow to dst and port (ignored for ICMP).
func (f *Filter) Allows(src, dst netip.Addr, proto uint8, port uint16) bool {
	return f.match(&packetInfo{proto: proto, src: src, dst: dst, dport: port})
}

func (f *Filter) match(pi *packetInfo) bool {
	for i := range f.Rules {
		if f.Rules[i].match(pi) {
			return true
		}
	}
	return false
}

func (r *FilterRule) match(pi *packetInfo) bool {
	if len(r.Protos) == 0 {
		switch pi.proto {
		case protoTCP, protoUDP, protoICMP, protoICMPv6:
		default:
			return false
		}
	} else if !slices.Contains(r.Protos, pi.proto) {
		return false
	}
	srcOK := false
	for _, p := range r.SrcIPs {
		if p.Contains(pi.src) {
			srcOK = true
			break
		}
	}
	for _, s := range r.SrcSets {
		if srcOK {
			break
		}
		srcOK = s.Contains(pi.src)
	}
	if !srcOK {
		return false
	}
	icmp := pi.proto == protoICMP || pi.proto == protoICMPv6
	for _, pr := range r.DstPorts {
		if pr.Prefix.IsValid() && !pr.Prefix.Contains(pi.dst) {
			continue
		}
		if icmp || (pr.First == 0 && pr.Last == 0) || (pi.dport >= pr.First && pi.dport <= pr.Last) {
			return true
		}
	}
	return false
}

// packetFilter is the stateful inbound filter between WireGuard and the
// stack. Its hooks run on the packet path.
type packetFilter struct {
	pol   atomicPolicy
	flows flowTable
	now   func() int64 // unix seconds
}

// inbound judges a packet from a peer; false drops it.
func (f *packetFilter) inbound(pkt []byte) bool {
	pol := f.pol.Load()
	if pol.open {
		return true
	}
	pi, ok := parsePacket(pkt)
	if !ok {
		return false
	}
	if pi.fragment {
		// Without its first fragment (which is judged) a datagram can
		// never be reassembled.
		return true
	}
	switch pi.proto {
	case protoTCP:
		if !pi.tcpSYNOnly {
			// Part of an existing connection, or answered with a RST by
			// the stack: only SYNs open connections.
			return true
		}
	case protoUDP:
		if f.flows.isReply(&pi, f.now()) {
			return true
		}
	case protoICMP, protoICMPv6:
		switch pi.icmpEcho {
		case 2:
			return f.flows.isReply(&pi, f.now())
		case 0:
			// Errors about our own flows to the sender pass; other
			// control messages (redirects, timestamps, ...) and errors
			// quoting anything else never do.
			return pi.icmpQuoted != nil && f.icmpErrorOurs(&pi)
		}
	}
	return pol.acceptNew(&pi)
}

// outbound records flows this node opens while a filter is in force.
func (f *packetFilter) outbound(pkt []byte) {
	if f.pol.Load().open {
		return
	}
	pi, ok := parsePacket(pkt)
	if !ok || pi.proto == protoTCP {
		// TCP needs no record (see inbound): skip the clock read, which
		// is most of this hook's cost per bulk TCP segment.
		return
	}
	f.flows.noteOutbound(&pi, f.now())
}

// SetFilter replaces the filter of the configuration in force (see
// Config.Filter) and nothing else: a change of the coordinator's filter
// costs no peer comparison.
func (e *Engine) SetFilter(f *Filter) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEngineClosed
	}
	e.cfg.Filter = f
	e.pf.pol.Store(newPolicy(&e.cfg))
	return nil
}
