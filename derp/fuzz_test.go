package derp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"

	"beam.dev/beam/types/key"
)

// FuzzReadFrame feeds arbitrary bytes to the frame reader. Whatever it
// accepts must re-encode to exactly the bytes it consumed, and the message
// parser must not panic on it.
func FuzzReadFrame(f *testing.F) {
	k := key.NewNode().Public().Raw32()
	f.Add(frameBytes(FrameKeepAlive, nil))                           // empty payload
	f.Add(frameBytes(FrameRecvPacket, append(k[:], "wg packet"...))) // packet
	f.Add(frameBytes(FramePeerGone, append(k[:], 1)))                // peer gone, not here
	f.Add(frameBytes(FramePing, []byte("12345678")))                 // ping
	f.Add([]byte{byte(FrameSendPacket), 0xff, 0xff, 0xff, 0xff})     // absurd length
	f.Add([]byte{byte(FramePing), 0, 0, 0, 8, 1, 2})                 // truncated
	f.Add([]byte{0xee, 0, 0, 0, 1, 9})                               // unknown type
	f.Fuzz(func(t *testing.T, in []byte) {
		ft, p, err := ReadFrame(bufio.NewReader(bytes.NewReader(in)), MaxFrameSize, nil)
		if err != nil {
			return
		}
		consumed := in[:FrameHeaderLen+len(p)]
		if got := frameBytes(ft, p); !bytes.Equal(got, consumed) {
			t.Fatalf("re-encoded % x, want % x", got, consumed)
		}
		parseMessage(ft, p)
	})
}

// FuzzClientInfo decodes arbitrary FrameClientInfo payloads the way the
// server does: split, open the box, decode the JSON. Splitting must round
// trip, and a box only opens for the key that sealed it.
func FuzzClientInfo(f *testing.F) {
	server := key.NewMachine()
	node := key.NewNode()
	info, _ := json.Marshal(ClientInfo{Version: ProtocolVersion, CanAckPings: true})
	pub := node.Public().Raw32()
	f.Add(AppendClientInfoPayload(nil, pub, node.SealTo(server.Public(), info))) // valid
	meshInfo, _ := json.Marshal(ClientInfo{Version: ProtocolVersion, Challenge: make([]byte, ChallengeLen), MeshProof: make([]byte, 32), MeshNonce: make([]byte, MeshNonceLen)})
	f.Add(AppendClientInfoPayload(nil, pub, node.SealTo(server.Public(), meshInfo))) // a meshing relay's
	f.Add(pub[:])                                                                    // key, no box
	f.Add([]byte("short"))                                                           // too short
	f.Fuzz(func(t *testing.T, p []byte) {
		k, sealed, err := ParseClientInfoPayload(p)
		if err != nil {
			if len(p) >= 32 {
				t.Fatalf("ParseClientInfoPayload(%d bytes) = %v", len(p), err)
			}
			return
		}
		if got := AppendClientInfoPayload(nil, k, sealed); !bytes.Equal(got, p) {
			t.Fatalf("round trip = % x, want % x", got, p)
		}
		msg, ok := server.OpenFrom(key.NodePublicFromRaw32(k), sealed)
		if !ok {
			return
		}
		if k != pub {
			t.Fatalf("box opened for key %x that did not seal it", k)
		}
		var ci ClientInfo
		if json.Unmarshal(msg, &ci) == nil {
			b, err := json.Marshal(ci)
			if err != nil {
				t.Fatal(err)
			}
			var ci2 ClientInfo
			err = json.Unmarshal(b, &ci2)
			same := ci2.Version == ci.Version && bytes.Equal(ci2.MeshProof, ci.MeshProof) && ci2.CanAckPings == ci.CanAckPings && bytes.Equal(ci2.Challenge, ci.Challenge) && bytes.Equal(ci2.MeshNonce, ci.MeshNonce)
			if err != nil || !same {
				t.Fatalf("client info JSON round trip: %+v -> %+v (%v)", ci, ci2, err)
			}
		}
	})
}

// FuzzSTUN checks that encoding a Binding response then decoding it gives
// back the transaction ID and address, and that parsing arbitrary bytes
// never panics.
func FuzzSTUN(f *testing.F) {
	txID, req := STUNBindingRequest()
	f.Add(req, txID[:], []byte{192, 0, 2, 1}, uint16(3478))
	f.Add([]byte("garbage"), make([]byte, 12), []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(41641))
	f.Add(STUNBindingResponse(txID, netip.MustParseAddrPort("203.0.113.5:9")), txID[:], []byte{203, 0, 113, 5}, uint16(9))
	f.Fuzz(func(t *testing.T, raw, tx, ip []byte, port uint16) {
		ParseSTUNResponse(raw)
		IsSTUN(raw)
		if len(tx) != 12 {
			return
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok || !a.IsValid() {
			return
		}
		a = a.Unmap()
		ap := netip.AddrPortFrom(a, port)
		gotTx, gotAddr, err := ParseSTUNResponse(STUNBindingResponse([12]byte(tx), ap))
		if err != nil {
			t.Fatalf("parse of encoded response for %v: %v", ap, err)
		}
		if gotTx != [12]byte(tx) || gotAddr != ap {
			t.Fatalf("round trip = (%x, %v), want (%x, %v)", gotTx, gotAddr, tx, ap)
		}
	})
}
