// Package disco is Beam's path discovery protocol: the ping, pong and
// call-me-maybe messages peers exchange, over direct UDP and through the
// relay, to find and check the paths between them. Messages are sealed
// with NaCl box between the two peers' disco keys, so only the addressee
// can read them and a sender cannot be impersonated.
//
// A disco packet is laid out as:
//
//	8B   magic, derp.DiscoMagic ("BEAM💡")
//	32B  sender's disco public key
//	24B  nonce                          \ NaCl box (secretbox with the
//	16B  Poly1305 tag                   | shared key of the sender's and
//	n B  sealed payload                 / the addressee's disco keys)
//
// The payload, once opened, is
//
//	1B  message type
//	1B  version (0; receivers ignore what they do not understand)
//	... body
//
// and the bodies are (integers big endian):
//
//	Ping        0x01  12B transaction ID | 32B sender's node public key
//	Pong        0x02  12B transaction ID of the ping | 16B IP | 2B port
//	                  (the source address the ping was seen from; an IPv4
//	                  address is written IPv4-mapped)
//	CallMeMaybe 0x03  N × (16B IP | 2B port): the sender's endpoints,
//	                  N at most MaxCallMeMaybeEndpoints. An entry with
//	                  port 0 is not an endpoint: it names a public IP of
//	                  the sender behind a NAT that maps each destination
//	                  to another port (endpoint-dependent, "hard"), whose
//	                  ports the sender asks the addressee to probe (see
//	                  CallMeMaybe.HardNAT). Version 0 receivers skip it.
//
//	Allocate    0x04  32B the other peer's disco key: the sender asks
//	                  the addressee, a peer relay server, for a session
//	                  between itself and that peer
//	Allocation  0x05  4B session ID | 32B disco key A | 32B disco key B |
//	                  N × (16B IP | 2B port): a peer relay server's answer
//	                  to Allocate, sent to both peers; the addresses are
//	                  where they bind (N at most MaxAllocationAddrs)
//	BindRelay   0x06  4B session ID | 32B zeros: a peer asks the relay
//	                  server to bind the source address of this packet to
//	                  the session. The padding makes the request as long
//	                  as the Challenge it draws (servers drop shorter
//	                  ones), so a forged source gets no more bytes than
//	                  the forger sent (as QUIC pads Initial packets)
//	Challenge   0x07  4B session ID | 32B challenge: the server's answer,
//	                  sent to that source address
//	Answer      0x08  4B session ID | 32B challenge: the peer repeats the
//	                  challenge from the same address, which binds it
//
// Ping and Pong bodies may carry further bytes that newer versions define;
// they are ignored. A CallMeMaybe body must be a whole number of entries.
//
// Version history:
//
//	0 (2026-07): first version: Ping, Pong, CallMeMaybe.
//	0 (2026-12): Allocate, Allocation, BindRelay, Challenge and Answer
//	             (UDP peer relays); older receivers drop them as unknown.
//	0 (2026-12): CallMeMaybe entries with port 0 name hard-NAT IPs; the
//	             version stays 0 because older receivers already ignore
//	             such entries (a port-0 address is never pinged).
//	0 (2026-12): BindRelay carries 32B of padding; servers drop unpadded
//	             ones (only the first builds of peer relays sent them).
package disco

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// Message types.
const (
	TypePing        = 0x01
	TypePong        = 0x02
	TypeCallMeMaybe = 0x03
	TypeAllocate    = 0x04
	TypeAllocation  = 0x05
	TypeBindRelay   = 0x06
	TypeChallenge   = 0x07
	TypeAnswer      = 0x08
)

const (
	magicLen = len(derp.DiscoMagic)
	keyLen   = 32
	// HeaderLen is the cleartext part of a packet: magic and sender key.
	HeaderLen = magicLen + keyLen
	txIDLen   = 12
	epLen     = 18 // 16B IP + 2B port
	// MaxCallMeMaybeEndpoints bounds the endpoints of a CallMeMaybe.
	MaxCallMeMaybeEndpoints = 32
	payloadHeader           = 2 // type + version
	pingLen                 = txIDLen + keyLen
	pongLen                 = txIDLen + epLen
	vniLen                  = 4
	challengeLen            = 32
	// BindRelayPadding is the zero padding after a BindRelay's session
	// ID: its body is as long as a Challenge's.
	BindRelayPadding = challengeLen
	// MaxAllocationAddrs bounds the addresses of an Allocation.
	MaxAllocationAddrs = 8
	allocationLen      = vniLen + 2*keyLen
)

// ErrMalformed is returned for payloads that are not a message this
// version understands.
var ErrMalformed = errors.New("disco: malformed message")

// ErrOpen is returned for packets that do not open with the given key.
var ErrOpen = errors.New("disco: packet does not open")

// Message is one of Ping, Pong and CallMeMaybe.
type Message interface {
	// AppendMarshal appends the message's payload (type, version, body).
	AppendMarshal(b []byte) []byte
	isMessage()
}

// Ping asks the addressee to answer with a Pong over the same path.
type Ping struct {
	// TxID identifies the ping; the pong repeats it.
	TxID [12]byte
	// NodeKey is the sender's node key, which must belong to the peer
	// that owns the sender's disco key.
	NodeKey key.NodePublic
}

// Pong answers a Ping.
type Pong struct {
	// TxID is the ping's transaction ID.
	TxID [12]byte
	// Src is the address the ping came from, as the answering side saw
	// it (the pinger's public mapping, for a direct path). It is the zero
	// value for a ping that came through the relay.
	Src netip.AddrPort
}

// CallMeMaybe asks the addressee to ping the sender's endpoints now: the
// sender is pinging the addressee's at the same time, so both NATs open.
// It travels through the relay.
type CallMeMaybe struct {
	// Endpoints are the sender's candidate UDP addresses.
	Endpoints []netip.AddrPort
	// HardNAT are public IPs of the sender behind an endpoint-dependent
	// NAT: the sender has opened many ports towards the addressee and
	// asks it to probe random ports of these IPs (birthday probing).
	// Marshaled as entries with port 0, after the endpoints, sharing the
	// MaxCallMeMaybeEndpoints bound.
	HardNAT []netip.Addr
}

// Allocate asks a peer relay server for a session between the sender and
// Peer (see package udprelay).
type Allocate struct {
	// Peer is the other peer's disco key.
	Peer key.DiscoPublic
}

// Allocation is a peer relay server's session for two peers, sent to both.
type Allocation struct {
	// VNI is the session ID the relay's packet header carries.
	VNI uint32
	// Peers are the two peers' disco keys.
	Peers [2]key.DiscoPublic
	// Addrs are the server's addresses the peers bind to.
	Addrs []netip.AddrPort
}

// BindRelay asks a peer relay server to bind the packet's source address
// to the sender's side of session VNI; the server answers with a
// Challenge to that address.
type BindRelay struct {
	VNI uint32
}

// Challenge is a peer relay server's answer to BindRelay.
type Challenge struct {
	VNI       uint32
	Challenge [32]byte
}

// Answer repeats a Challenge from the address it went to, which binds
// that address.
type Answer struct {
	VNI       uint32
	Challenge [32]byte
}

func (*Ping) isMessage()        {}
func (*Pong) isMessage()        {}
func (*CallMeMaybe) isMessage() {}
func (*Allocate) isMessage()    {}
func (*Allocation) isMessage()  {}
func (*BindRelay) isMessage()   {}
func (*Challenge) isMessage()   {}
func (*Answer) isMessage()      {}

// AppendMarshal implements Message.
func (m *Allocate) AppendMarshal(b []byte) []byte {
	b = append(b, TypeAllocate, 0)
	raw := m.Peer.Raw32()
	return append(b, raw[:]...)
}

// AppendMarshal implements Message. Addresses beyond MaxAllocationAddrs
// are left out.
func (m *Allocation) AppendMarshal(b []byte) []byte {
	b = append(b, TypeAllocation, 0)
	b = binary.BigEndian.AppendUint32(b, m.VNI)
	for _, k := range m.Peers {
		raw := k.Raw32()
		b = append(b, raw[:]...)
	}
	for i, ap := range m.Addrs {
		if i == MaxAllocationAddrs {
			break
		}
		b = appendAddrPort(b, ap)
	}
	return b
}

// AppendMarshal implements Message.
func (m *BindRelay) AppendMarshal(b []byte) []byte {
	b = append(b, TypeBindRelay, 0)
	b = binary.BigEndian.AppendUint32(b, m.VNI)
	return append(b, make([]byte, BindRelayPadding)...)
}

// AppendMarshal implements Message.
func (m *Challenge) AppendMarshal(b []byte) []byte {
	b = append(b, TypeChallenge, 0)
	b = binary.BigEndian.AppendUint32(b, m.VNI)
	return append(b, m.Challenge[:]...)
}

// AppendMarshal implements Message.
func (m *Answer) AppendMarshal(b []byte) []byte {
	b = append(b, TypeAnswer, 0)
	b = binary.BigEndian.AppendUint32(b, m.VNI)
	return append(b, m.Challenge[:]...)
}

// AppendMarshal implements Message.
func (m *Ping) AppendMarshal(b []byte) []byte {
	b = append(b, TypePing, 0)
	b = append(b, m.TxID[:]...)
	raw := m.NodeKey.Raw32()
	return append(b, raw[:]...)
}

// AppendMarshal implements Message.
func (m *Pong) AppendMarshal(b []byte) []byte {
	b = append(b, TypePong, 0)
	b = append(b, m.TxID[:]...)
	return appendAddrPort(b, m.Src)
}

// AppendMarshal implements Message. Endpoints beyond
// MaxCallMeMaybeEndpoints are left out.
func (m *CallMeMaybe) AppendMarshal(b []byte) []byte {
	b = append(b, TypeCallMeMaybe, 0)
	n := 0
	for _, ep := range m.Endpoints {
		if n == MaxCallMeMaybeEndpoints {
			return b
		}
		if ep.Port() == 0 {
			continue // would read as a hard-NAT IP
		}
		b = appendAddrPort(b, ep)
		n++
	}
	for _, ip := range m.HardNAT {
		if n == MaxCallMeMaybeEndpoints {
			return b
		}
		if !ip.IsValid() || ip.IsUnspecified() {
			continue
		}
		b = appendAddrPort(b, netip.AddrPortFrom(ip, 0))
		n++
	}
	return b
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	var ip [16]byte
	if ap.Addr().IsValid() {
		ip = ap.Addr().As16()
	}
	b = append(b, ip[:]...)
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func parseAddrPort(b []byte) netip.AddrPort {
	ip := netip.AddrFrom16([16]byte(b[:16])).Unmap()
	port := binary.BigEndian.Uint16(b[16:18])
	if ip == netip.IPv6Unspecified() && port == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, port)
}

// Parse decodes a payload (type, version, body).
func Parse(p []byte) (Message, error) {
	if len(p) < payloadHeader {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(p))
	}
	t, body := p[0], p[payloadHeader:]
	switch t {
	case TypePing:
		if len(body) < pingLen {
			return nil, fmt.Errorf("%w: short ping", ErrMalformed)
		}
		m := &Ping{TxID: [12]byte(body[:txIDLen])}
		m.NodeKey = key.NodePublicFromRaw32([32]byte(body[txIDLen:pingLen]))
		return m, nil
	case TypePong:
		if len(body) < pongLen {
			return nil, fmt.Errorf("%w: short pong", ErrMalformed)
		}
		m := &Pong{TxID: [12]byte(body[:txIDLen])}
		m.Src = parseAddrPort(body[txIDLen:pongLen])
		return m, nil
	case TypeCallMeMaybe:
		if len(body)%epLen != 0 || len(body)/epLen > MaxCallMeMaybeEndpoints {
			return nil, fmt.Errorf("%w: call-me-maybe of %d bytes", ErrMalformed, len(body))
		}
		m := &CallMeMaybe{}
		for ; len(body) > 0; body = body[epLen:] {
			switch ap := parseAddrPort(body); {
			case !ap.IsValid():
			case ap.Port() == 0:
				m.HardNAT = append(m.HardNAT, ap.Addr())
			default:
				m.Endpoints = append(m.Endpoints, ap)
			}
		}
		return m, nil
	case TypeAllocate:
		if len(body) < keyLen {
			return nil, fmt.Errorf("%w: short allocate", ErrMalformed)
		}
		return &Allocate{Peer: key.DiscoPublicFromRaw32([32]byte(body[:keyLen]))}, nil
	case TypeAllocation:
		if len(body) < allocationLen || (len(body)-allocationLen)%epLen != 0 || (len(body)-allocationLen)/epLen > MaxAllocationAddrs {
			return nil, fmt.Errorf("%w: allocation of %d bytes", ErrMalformed, len(body))
		}
		m := &Allocation{VNI: binary.BigEndian.Uint32(body)}
		m.Peers[0] = key.DiscoPublicFromRaw32([32]byte(body[vniLen : vniLen+keyLen]))
		m.Peers[1] = key.DiscoPublicFromRaw32([32]byte(body[vniLen+keyLen : allocationLen]))
		for body = body[allocationLen:]; len(body) > 0; body = body[epLen:] {
			if ap := parseAddrPort(body); ap.IsValid() && ap.Port() != 0 {
				m.Addrs = append(m.Addrs, ap)
			}
		}
		return m, nil
	case TypeBindRelay:
		if len(body) < vniLen {
			return nil, fmt.Errorf("%w: short bind", ErrMalformed)
		}
		return &BindRelay{VNI: binary.BigEndian.Uint32(body)}, nil
	case TypeChallenge, TypeAnswer:
		if len(body) < vniLen+challengeLen {
			return nil, fmt.Errorf("%w: short challenge", ErrMalformed)
		}
		vni, ch := binary.BigEndian.Uint32(body), [32]byte(body[vniLen:vniLen+challengeLen])
		if t == TypeChallenge {
			return &Challenge{VNI: vni, Challenge: ch}, nil
		}
		return &Answer{VNI: vni, Challenge: ch}, nil
	}
	return nil, fmt.Errorf("%w: unknown type %#x", ErrMalformed, t)
}

// IsPacket reports whether pkt starts with the disco magic.
func IsPacket(pkt []byte) bool { return derp.IsDisco(pkt) }

// Sender returns the sender's disco key of a disco packet and the sealed
// part; ok is false if pkt is too short or lacks the magic.
func Sender(pkt []byte) (sender key.DiscoPublic, sealed []byte, ok bool) {
	if len(pkt) < HeaderLen+key.SealOverhead || !IsPacket(pkt) {
		return key.DiscoPublic{}, nil, false
	}
	return key.DiscoPublicFromRaw32([32]byte(pkt[magicLen:HeaderLen])), pkt[HeaderLen:], true
}

// AppendPacket appends a disco packet carrying m from the disco key from,
// sealed with shared (the shared key of from's private half and the
// addressee's public key).
func AppendPacket(b []byte, from key.DiscoPublic, shared key.DiscoShared, m Message) []byte {
	b = append(b, derp.DiscoMagic...)
	raw := from.Raw32()
	b = append(b, raw[:]...)
	var buf [payloadHeader + MaxCallMeMaybeEndpoints*epLen]byte
	return append(b, shared.Seal(m.AppendMarshal(buf[:0]))...)
}

// Open opens the sealed part of a packet (as returned by Sender) with
// shared and parses its message.
func Open(shared key.DiscoShared, sealed []byte) (Message, error) {
	p, ok := shared.Open(sealed)
	if !ok {
		return nil, ErrOpen
	}
	return Parse(p)
}
