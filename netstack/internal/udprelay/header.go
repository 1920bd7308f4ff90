package udprelay

import "encoding/binary"

// The peer relay header, in front of every datagram to and from a relay
// server's socket:
//
//	1B  0xBE: a peer relay packet (never the first byte of WireGuard (1-4),
//	    STUN (0x00, 0x01) or disco ('B'))
//	1B  type: TypeData or TypeControl
//	2B  zero
//	4B  session ID (VNI), big endian
//
// A TypeData payload is whatever the two peers send each other (WireGuard,
// or disco sealed between them); the server forwards it unchanged, header
// and all. A TypeControl payload is a disco packet between a peer and the
// server (BindRelay, Challenge, Answer).
const (
	// HeaderLen is the length of the peer relay header.
	HeaderLen = 8
	magic     = 0xBE
	// TypeData marks a packet between the two peers of a session.
	TypeData = 0x00
	// TypeControl marks a disco packet between a peer and the server.
	TypeControl = 0x01
)

// AppendHeader appends a peer relay header of type typ for session vni.
func AppendHeader(b []byte, typ byte, vni uint32) []byte {
	b = append(b, magic, typ, 0, 0)
	return binary.BigEndian.AppendUint32(b, vni)
}

// ParseHeader reads the header of pkt; ok is false if pkt is not a peer
// relay packet.
func ParseHeader(pkt []byte) (typ byte, vni uint32, ok bool) {
	if !IsPacket(pkt) {
		return 0, 0, false
	}
	return pkt[1], binary.BigEndian.Uint32(pkt[4:8]), true
}

// IsPacket reports whether pkt starts with a well-formed peer relay header.
func IsPacket(pkt []byte) bool {
	return len(pkt) >= HeaderLen && pkt[0] == magic && pkt[1] <= TypeControl && pkt[2] == 0 && pkt[3] == 0
}
