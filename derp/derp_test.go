package derp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

func frameBytes(t FrameType, payload []byte) []byte {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	if err := WriteFrame(w, t, payload); err != nil {
		panic(err)
	}
	w.Flush()
	return b.Bytes()
}

func TestDiscoMagic(t *testing.T) {
	if got, want := []byte(DiscoMagic), []byte("BEAM\xf0\x9f\x92\xa1"); !bytes.Equal(got, want) {
		t.Fatalf("DiscoMagic = % x, want % x", got, want)
	}
	if !IsDisco([]byte(DiscoMagic + "payload")) {
		t.Error("IsDisco(DiscoMagic+payload) = false, want true")
	}
	if IsDisco([]byte("BEAM")) || IsDisco([]byte{0x01, 0, 0, 0}) {
		t.Error("IsDisco of non-disco bytes = true, want false")
	}
}

func TestReadFrame(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		max     uint32
		wantT   FrameType
		wantP   []byte
		wantErr error
	}{
		{"keepalive", frameBytes(FrameKeepAlive, nil), MaxFrameSize, FrameKeepAlive, []byte{}, nil},
		{"ping", frameBytes(FramePing, []byte("12345678")), MaxFrameSize, FramePing, []byte("12345678"), nil},
		{"max length 0xFFFFFFFF", []byte{byte(FrameSendPacket), 0xff, 0xff, 0xff, 0xff}, MaxFrameSize, FrameSendPacket, nil, ErrFrameTooLarge},
		{"over limit", frameBytes(FrameHealth, make([]byte, 100)), 99, FrameHealth, nil, ErrFrameTooLarge},
		{"truncated payload", frameBytes(FramePing, []byte("12345678"))[:9], MaxFrameSize, FramePing, nil, io.ErrUnexpectedEOF},
		{"truncated header", []byte{byte(FramePing), 0, 0}, MaxFrameSize, 0, nil, io.ErrUnexpectedEOF},
		{"empty", nil, MaxFrameSize, 0, nil, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotT, gotP, err := ReadFrame(bufio.NewReader(bytes.NewReader(tt.in)), tt.max, nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if gotT != tt.wantT || !bytes.Equal(gotP, tt.wantP) {
				t.Fatalf("got (%#x, %q), want (%#x, %q)", gotT, gotP, tt.wantT, tt.wantP)
			}
		})
	}
}

func TestReadFrameUsesBuffer(t *testing.T) {
	buf := make([]byte, 0, 64)
	_, p, err := ReadFrame(bufio.NewReader(bytes.NewReader(frameBytes(FrameHealth, []byte("hi")))), MaxFrameSize, buf)
	if err != nil {
		t.Fatal(err)
	}
	if &p[0] != &buf[:1][0] {
		t.Error("payload was not read into the given buffer")
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	w := bufio.NewWriter(io.Discard)
	if err := WriteFrame(w, FrameSendPacket, make([]byte, MaxFrameSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
}

func TestParseMessage(t *testing.T) {
	k := key.NewNode().Public()
	kr := k.Raw32()
	var restart [8]byte
	binary.BigEndian.PutUint32(restart[0:], 1500)
	binary.BigEndian.PutUint32(restart[4:], 60000)
	tests := []struct {
		name string
		t    FrameType
		p    []byte
		want ReceivedMessage
	}{
		{"packet", FrameRecvPacket, append(kr[:], "data"...), ReceivedPacket{Source: k, Data: []byte("data")}},
		{"keepalive", FrameKeepAlive, nil, KeepAliveMessage{}},
		{"peer gone", FramePeerGone, append(kr[:], byte(PeerGoneNotHere)), PeerGoneMessage{Peer: k, Reason: PeerGoneNotHere}},
		{"peer present", FramePeerPresent, kr[:], PeerPresentMessage{Peer: k}},
		{"ping", FramePing, []byte("abcdefgh"), PingMessage([8]byte([]byte("abcdefgh")))},
		{"pong", FramePong, []byte("abcdefgh"), PongMessage([8]byte([]byte("abcdefgh")))},
		{"health", FrameHealth, []byte("bad"), HealthMessage{Problem: "bad"}},
		{"restarting", FrameRestarting, restart[:], ServerRestartingMessage{ReconnectIn: 1500 * time.Millisecond, TryFor: time.Minute}},
		{"unknown", FrameType(0xee), []byte("x"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMessage(tt.t, tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if rp, ok := got.(ReceivedPacket); ok {
				want := tt.want.(ReceivedPacket)
				if rp.Source != want.Source || !bytes.Equal(rp.Data, want.Data) {
					t.Fatalf("got %+v, want %+v", rp, want)
				}
				return
			}
			if got != tt.want {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
	for _, ft := range []FrameType{FrameRecvPacket, FramePeerGone, FramePeerPresent, FramePing, FramePong} {
		if _, err := parseMessage(ft, []byte{1, 2}); !errors.Is(err, ErrShortFrame) {
			t.Errorf("parseMessage(%#x, short) err = %v, want ErrShortFrame", ft, err)
		}
	}
}

func TestServerKeyPayload(t *testing.T) {
	m := key.NewMachine().Public()
	raw := m.Raw32()
	ch := []byte("0123456789abcdef")
	p := append(append([]byte(Magic), raw[:]...), ch...)
	got, gotCh, err := ParseServerKeyPayload(append(p, "later"...))
	if err != nil || got != raw || string(gotCh) != string(ch) {
		t.Fatalf("ParseServerKeyPayload = %x, %q, %v; want %x, %q", got, gotCh, err, raw, ch)
	}
	if _, _, err := ParseServerKeyPayload(append([]byte("NOTMAGIC"), p[len(Magic):]...)); err == nil {
		t.Error("bad magic accepted")
	}
	// A version 1 frame (no challenge) and shorter ones are refused.
	for _, short := range [][]byte{[]byte(Magic), p[:len(Magic)+32], p[:len(p)-1]} {
		if _, _, err := ParseServerKeyPayload(short); !errors.Is(err, ErrShortFrame) {
			t.Errorf("%d-byte payload err = %v, want ErrShortFrame", len(short), err)
		}
	}
}

func TestSTUNRoundTrip(t *testing.T) {
	for _, s := range []string{"192.0.2.1:3478", "[2001:db8::1]:41641", "203.0.113.9:1"} {
		ap := netip.MustParseAddrPort(s)
		txID, req := STUNBindingRequest()
		if !IsSTUN(req) {
			t.Fatalf("IsSTUN(request) = false")
		}
		gotTx, gotAddr, err := ParseSTUNResponse(STUNBindingResponse(txID, ap))
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if gotTx != txID || gotAddr != ap {
			t.Fatalf("got (%x, %v), want (%x, %v)", gotTx, gotAddr, txID, ap)
		}
	}
	// A request is not a response.
	_, req := STUNBindingRequest()
	if _, _, err := ParseSTUNResponse(req); !errors.Is(err, ErrNotSTUN) {
		t.Errorf("ParseSTUNResponse(request) err = %v, want ErrNotSTUN", err)
	}
	// A WireGuard handshake initiation is not STUN.
	wg := make([]byte, 148)
	wg[0] = 1
	if IsSTUN(wg) {
		t.Error("IsSTUN(WireGuard packet) = true")
	}
	// A flipped bit breaks the fingerprint.
	txID, _ := STUNBindingRequest()
	resp := STUNBindingResponse(txID, netip.MustParseAddrPort("192.0.2.1:1"))
	resp[len(resp)-1] ^= 1
	if _, _, err := ParseSTUNResponse(resp); !errors.Is(err, ErrNotSTUN) {
		t.Errorf("corrupt fingerprint err = %v, want ErrNotSTUN", err)
	}
}
