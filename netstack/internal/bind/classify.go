package bind

import "encoding/binary"

// WireGuard message layout (all integers little endian). Every message
// starts with a 4-byte type whose upper 3 bytes are zero:
//
//	type 1, handshake initiation, 148 bytes:
//	  type(4) sender(4) ephemeral(32) static(32+16) timestamp(12+16) mac1(16) mac2(16)
//	type 2, handshake response, 92 bytes:
//	  type(4) sender(4) receiver(4) ephemeral(32) empty(0+16) mac1(16) mac2(16)
//	type 3, cookie reply, 64 bytes:
//	  type(4) receiver(4) nonce(24) cookie(16+16)
//	type 4, transport data, at least 32 bytes:
//	  type(4) receiver(4) counter(8) payload(n+16)
//
// Phase 2 adds disco messages, told apart by their own magic prefix.
const (
	msgInitiation = 1
	msgResponse   = 2
	msgCookie     = 3
	msgTransport  = 4

	initiationSize   = 148
	responseSize     = 92
	cookieReplySize  = 64
	minTransportSize = 32
)

// packetKind is what the bind makes of a received datagram.
type packetKind uint8

const (
	kindGarbage    packetKind = iota // not WireGuard: dropped silently
	kindInitiation                   // handshake initiation (names no receiver)
	kindReceiver                     // response, cookie reply or data: names our receiver index
)

// classify looks at a datagram's header only and reports what it is and,
// for kindReceiver, the receiver index (our own index) it names. Sizes are
// checked exactly as wireguard-go checks them, so anything classify lets
// through wireguard-go will at least parse.
func classify(b []byte) (kind packetKind, receiver uint32) {
	if len(b) < 4 {
		return kindGarbage, 0
	}
	switch binary.LittleEndian.Uint32(b) {
	case msgInitiation:
		if len(b) == initiationSize {
			return kindInitiation, 0
		}
	case msgResponse:
		if len(b) == responseSize {
			return kindReceiver, binary.LittleEndian.Uint32(b[8:12])
		}
	case msgCookie:
		if len(b) == cookieReplySize {
			return kindReceiver, binary.LittleEndian.Uint32(b[4:8])
		}
	case msgTransport:
		if len(b) >= minTransportSize {
			return kindReceiver, binary.LittleEndian.Uint32(b[4:8])
		}
	}
	return kindGarbage, 0
}

// senderIndex returns the sender index of an outgoing handshake message
// (initiation or response): the index peers will name as receiver in the
// session it sets up. ok is false for other messages.
func senderIndex(b []byte) (idx uint32, ok bool) {
	if len(b) < 8 {
		return 0, false
	}
	switch t := binary.LittleEndian.Uint32(b); {
	case t == msgInitiation && len(b) == initiationSize, t == msgResponse && len(b) == responseSize:
		return binary.LittleEndian.Uint32(b[4:8]), true
	}
	return 0, false
}

// isInitiation reports whether b is a handshake initiation.
func isInitiation(b []byte) bool {
	return len(b) == initiationSize && binary.LittleEndian.Uint32(b) == msgInitiation
}
