// Package derp implements Beam's relay protocol: the frame codec spoken
// between nodes and relay servers, the relay client, and the STUN client
// helpers used for endpoint discovery.
//
// A relay connection starts as HTTP: the client sends "GET /derp" with
// "Upgrade: DERP" and the server answers "101 Switching Protocols"; from
// then on both sides exchange frames over the raw connection. Networks that
// only pass HTTP can use the WebSocket variant instead: the same frames are
// carried as the payload of binary WebSocket messages on "/derp".
//
// Every frame is
//
//	1B frame type | 4B big-endian payload length | payload
//
// The handshake is:
//
//	server -> client  FrameServerKey   (server's machine public key, challenge)
//	client -> server  FrameClientInfo  (client's node key, sealed ClientInfo)
//	server -> client  FrameServerInfo  (sealed ServerInfo)
//
// The client seals its ClientInfo with its node private key to the
// server's machine key, so a server that can open it knows the client holds
// the private half of the node key it claims. The ClientInfo carries the
// connection's random challenge back, so a box recorded from one
// connection (the relay may run over plain HTTP) proves nothing on another. After the handshake the
// client sends FrameSendPacket frames and receives FrameRecvPacket frames;
// the relay never sees the cleartext of the WireGuard or disco packets it
// carries.
//
// Version history of ProtocolVersion:
//
//	1 (2026-07): first version.
//	2 (2026-11): FrameServerKey carries a challenge that ClientInfo echoes;
//	   a meshing relay sends a MeshProof instead of the mesh key itself.
//	3 (2026-11): the server proves the mesh key back: ServerInfo carries
//	   a MeshProof of its own for a meshing client, which the client
//	   requires, so a relay of one region never forwards to an impostor.
//	4 (2026-12): after the handshake, a mesh connection's bytes travel in
//	   sealed records both ways (meshrecord.go), so nobody on the path of
//	   a plain-HTTP mesh link can add, change or replay frames; both
//	   sides refuse to mesh with a peer older than 4.
//	5 (2026-12): a meshing client adds a fresh random MeshNonce to its
//	   ClientInfo, which the server's ServerMeshProof and both
//	   directions' record keys cover: in 4 the keys came only from what
//	   the server chose, so a recorded server handshake and its records
//	   replayed on a new connection still passed, and the dialing
//	   relay sealed again with the key and nonces it had used before.
//	   Both sides refuse to mesh with a peer older than 5.
package derp

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the version of the relay protocol this package speaks.
// It is sent in ClientInfo and ServerInfo.
const ProtocolVersion = 5

// Magic is the 8-byte prefix of the FrameServerKey payload: "BEAM" followed
// by the UTF-8 bytes of U+1F511 (key emoji).
const Magic = "BEAM\xF0\x9F\x94\x91"

// DiscoMagic is the prefix that marks a disco packet (ping, pong,
// call-me-maybe) as opposed to a WireGuard packet. It is the UTF-8 bytes of
// the string "BEAM💡": "BEAM" followed by U+1F4A1 (light bulb), 8 bytes.
// The relay queues packets that start with it separately from others so
// path discovery keeps working when a client's data queue is full.
const DiscoMagic = "BEAM💡"

// MaxPacketSize is the largest packet a client may send or receive through
// the relay.
const MaxPacketSize = 64 << 10

// MaxFrameSize is the largest frame payload this package reads. It fits the
// largest frame, FrameForwardPacket: two keys plus a MaxPacketSize packet.
const MaxFrameSize = 2*keyLen + MaxPacketSize

// FrameHeaderLen is the length of a frame header: type and payload length.
const FrameHeaderLen = 5

const keyLen = 32

// FrameType is the first byte of a frame.
type FrameType byte

// Frame types. Each comment gives the payload layout.
const (
	// FrameServerKey is the first frame the server sends:
	//	8B Magic | 32B server machine public key | 16B challenge
	FrameServerKey = FrameType(0x01)
	// FrameClientInfo is the client's reply to FrameServerKey:
	//	32B client node public key | sealed box
	// The box is key.NodePrivate.SealTo(serverKey, JSON(ClientInfo)):
	//	24B nonce | 16B Poly1305 tag | ciphertext
	FrameClientInfo = FrameType(0x02)
	// FrameServerInfo completes the handshake:
	//	sealed box (key.MachinePrivate.SealTo(clientKey, JSON(ServerInfo)))
	FrameServerInfo = FrameType(0x03)
	// FrameSendPacket is sent by a client to relay a packet:
	//	32B destination node public key | packet bytes
	FrameSendPacket = FrameType(0x04)
	// FrameRecvPacket carries a relayed packet to its destination:
	//	32B source node public key | packet bytes
	FrameRecvPacket = FrameType(0x05)
	// FrameKeepAlive is sent by the server on idle connections:
	//	no payload
	FrameKeepAlive = FrameType(0x06)
	// FrameNotePreferred tells the server whether this is the client's
	// home relay:
	//	1B 0x01 preferred, 0x00 not
	FrameNotePreferred = FrameType(0x07)
	// FramePeerGone tells a client that a peer it sent to is gone:
	//	32B node public key | 1B PeerGoneReason
	// Mesh watchers get it for every client that leaves the server.
	FramePeerGone = FrameType(0x08)
	// FramePeerPresent tells a mesh watcher that a client connected:
	//	32B node public key
	FramePeerPresent = FrameType(0x09)
	// FrameForwardPacket relays a packet between meshed servers; only
	// clients that presented the mesh key may send it:
	//	32B source node public key | 32B destination node public key | packet bytes
	FrameForwardPacket = FrameType(0x0a)
	// FrameWatchConns asks the server (mesh clients only) to send
	// FramePeerPresent for every connected client now and whenever one
	// connects, and FramePeerGone when one leaves:
	//	no payload
	FrameWatchConns = FrameType(0x10)
	// FramePing asks the other side for a FramePong with the same data:
	//	8B opaque data
	FramePing = FrameType(0x12)
	// FramePong answers a FramePing:
	//	8B data copied from the ping
	FramePong = FrameType(0x13)
	// FrameHealth carries a problem the server sees with this connection;
	// an empty payload means the problem is gone:
	//	UTF-8 text
	FrameHealth = FrameType(0x14)
	// FrameRestarting tells the client the server is going away:
	//	4B reconnect-in milliseconds | 4B try-for milliseconds
	FrameRestarting = FrameType(0x15)
)

// PeerGoneReason says why a FramePeerGone was sent.
type PeerGoneReason byte

// Reasons carried in FramePeerGone.
const (
	// PeerGoneDisconnected means the peer was connected and left.
	PeerGoneDisconnected = PeerGoneReason(0x00)
	// PeerGoneNotHere means the server does not know the peer at all.
	PeerGoneNotHere = PeerGoneReason(0x01)
)

// ClientInfo is the JSON sealed inside FrameClientInfo.
type ClientInfo struct {
	// Version is the client's ProtocolVersion.
	Version int `json:"version"`
	// MeshProof proves a relay-to-relay connection knows the region's
	// mesh key without revealing it (see MeshProof); empty for ordinary
	// clients.
	MeshProof []byte `json:"mesh_proof,omitempty"`
	// CanAckPings reports whether the client answers FramePing.
	CanAckPings bool `json:"can_ack_pings,omitempty"`
	// Challenge is the challenge of this connection's FrameServerKey.
	Challenge []byte `json:"challenge,omitempty"`
	// MeshNonce is a meshing client's fresh random contribution to the
	// connection (MeshNonceLen bytes, new for every connection): the
	// server's ServerMeshProof and the record keys (MeshRecordKeys)
	// cover it, so a server handshake or records recorded from another
	// connection do not pass on this one, and no two connections share
	// a record key. Empty for ordinary clients.
	MeshNonce []byte `json:"mesh_nonce,omitempty"`
}

// ChallengeLen is the length of the FrameServerKey challenge.
const ChallengeLen = 16

// MeshNonceLen is the length of ClientInfo.MeshNonce.
const MeshNonceLen = 32

// MeshProof is HMAC-SHA256 under meshKey of the connection's challenge,
// the server's machine key and the client's node key. The mesh key never
// crosses the wire, so a server that is not what the client thinks it is
// (over plain HTTP) learns nothing it can reuse, and a proof relayed to
// another server, or to another connection, does not verify there.
func MeshProof(meshKey string, challenge []byte, server, client [32]byte) []byte {
	return meshMAC("beam derp mesh v1", meshKey, challenge, nil, server, client)
}

// ServerMeshProof is the server's answer to a meshing client's
// MeshProof: the same MAC under another label, so neither side can turn
// the other's proof into its own. A client that meshes requires it, so an
// impostor in the path of a plain-HTTP mesh link (which does not know the
// mesh key) cannot pose as the region's other relay and swallow the
// packets forwarded to it.
//
// It also covers the client's MeshNonce, fresh for every connection (the
// challenge alone is the server's choice): a server handshake recorded
// from one connection and played back to the client on another does not
// prove anything there.
func ServerMeshProof(meshKey string, challenge, clientNonce []byte, server, client [32]byte) []byte {
	return meshMAC("beam derp mesh server v2", meshKey, challenge, clientNonce, server, client)
}

// meshMAC is HMAC-SHA256 under meshKey of label, challenge, nonce, server
// and client. challenge and nonce are of fixed lengths (ChallengeLen,
// MeshNonceLen, or nonce empty where a label never has one), so the
// concatenation is unambiguous.
func meshMAC(label, meshKey string, challenge, nonce []byte, server, client [32]byte) []byte {
	m := hmac.New(sha256.New, []byte(meshKey))
	m.Write([]byte(label))
	m.Write(challenge)
	m.Write(nonce)
	m.Write(server[:])
	m.Write(client[:])
	return m.Sum(nil)
}

// ServerInfo is the JSON sealed inside FrameServerInfo.
type ServerInfo struct {
	// Version is the server's ProtocolVersion.
	Version int `json:"version"`
	// TokenBucketBytesPerSecond is the client's send rate limit, 0 if none.
	TokenBucketBytesPerSecond int `json:"token_bucket_bytes_per_second,omitempty"`
	// TokenBucketBytesBurst is the client's burst allowance, 0 if none.
	TokenBucketBytesBurst int `json:"token_bucket_bytes_burst,omitempty"`
	// MeshProof is the server's ServerMeshProof for a meshing client;
	// empty for ordinary clients.
	MeshProof []byte `json:"mesh_proof,omitempty"`
}

// Errors returned by the frame codec.
var (
	// ErrFrameTooLarge is returned for a frame whose declared length
	// exceeds the reader's limit. Nothing is allocated for it.
	ErrFrameTooLarge = errors.New("derp: frame too large")
	// ErrShortFrame is returned for a frame whose payload is too short for
	// its type.
	ErrShortFrame = errors.New("derp: frame payload too short")
)

// WriteFrameHeader writes a frame header to w.
func WriteFrameHeader(w *bufio.Writer, t FrameType, n uint32) error {
	var hdr [FrameHeaderLen]byte
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:], n)
	_, err := w.Write(hdr[:])
	return err
}

// WriteFrame writes a frame whose payload is the concatenation of parts. It
// does not flush w.
func WriteFrame(w *bufio.Writer, t FrameType, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxFrameSize {
		return fmt.Errorf("write frame type %#x: %w: %d bytes", byte(t), ErrFrameTooLarge, n)
	}
	if err := WriteFrameHeader(w, t, uint32(n)); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// ReadFrameHeader reads a frame header from r.
func ReadFrameHeader(r *bufio.Reader) (t FrameType, n uint32, err error) {
	var hdr [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, err
	}
	return FrameType(hdr[0]), binary.BigEndian.Uint32(hdr[1:]), nil
}

// ReadFrame reads one frame from r. A payload longer than maxSize is an
// ErrFrameTooLarge error, reported before anything is allocated for it. The
// payload is read into buf when it fits and into a new slice otherwise; a
// payload cut short by EOF is io.ErrUnexpectedEOF.
func ReadFrame(r *bufio.Reader, maxSize uint32, buf []byte) (t FrameType, payload []byte, err error) {
	t, n, err := ReadFrameHeader(r)
	if err != nil {
		return 0, nil, err
	}
	if n > maxSize {
		return t, nil, fmt.Errorf("frame type %#x: %w: %d > %d bytes", byte(t), ErrFrameTooLarge, n, maxSize)
	}
	if int(n) <= cap(buf) {
		payload = buf[:n]
	} else {
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, fmt.Errorf("frame type %#x payload: %w", byte(t), err)
	}
	return t, payload, nil
}

// AppendClientInfoPayload appends the FrameClientInfo payload for a client
// key and its sealed ClientInfo.
func AppendClientInfoPayload(b []byte, clientKey [32]byte, sealed []byte) []byte {
	b = append(b, clientKey[:]...)
	return append(b, sealed...)
}

// ParseClientInfoPayload splits a FrameClientInfo payload into the
// client's claimed node key and the sealed box. It does not open the box.
func ParseClientInfoPayload(p []byte) (clientKey [32]byte, sealed []byte, err error) {
	if len(p) < keyLen {
		return clientKey, nil, fmt.Errorf("client info: %w", ErrShortFrame)
	}
	copy(clientKey[:], p)
	return clientKey, p[keyLen:], nil
}

// ParseServerKeyPayload checks the magic of a FrameServerKey payload and
// returns the server's machine public key and the connection's challenge
// (which aliases p). Bytes after the challenge are ignored.
func ParseServerKeyPayload(p []byte) (k [32]byte, challenge []byte, err error) {
	if len(p) < len(Magic)+keyLen+ChallengeLen {
		return k, nil, fmt.Errorf("server key: %w", ErrShortFrame)
	}
	if string(p[:len(Magic)]) != Magic {
		return k, nil, errors.New("derp: server key frame has bad magic")
	}
	copy(k[:], p[len(Magic):])
	return k, p[len(Magic)+keyLen : len(Magic)+keyLen+ChallengeLen], nil
}

// IsDisco reports whether pkt is a disco packet (starts with DiscoMagic).
func IsDisco(pkt []byte) bool {
	return len(pkt) >= len(DiscoMagic) && string(pkt[:len(DiscoMagic)]) == DiscoMagic
}
