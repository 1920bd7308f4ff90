package disco

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"beam.dev/beam/types/key"
	"github.com/google/go-cmp/cmp"
)

var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
}

func TestRoundTrip(t *testing.T) {
	a, b := key.NewDisco(), key.NewDisco()
	node := key.NewNode().Public()
	msgs := []struct {
		name string
		m    Message
	}{
		{"ping", &Ping{TxID: [12]byte{1, 2, 3}, NodeKey: node}},
		{"pong4", &Pong{TxID: [12]byte{9, 8, 7}, Src: netip.MustParseAddrPort("203.0.113.7:41641")}},
		{"pong6", &Pong{TxID: [12]byte{1}, Src: netip.MustParseAddrPort("[2001:db8::1]:5")}},
		{"pong-relay", &Pong{TxID: [12]byte{2}}},
		{"cmm", &CallMeMaybe{Endpoints: []netip.AddrPort{
			netip.MustParseAddrPort("198.51.100.1:1"),
			netip.MustParseAddrPort("[2001:db8::2]:65535"),
		}}},
		{"cmm-empty", &CallMeMaybe{}},
		{"cmm-hard-nat", &CallMeMaybe{
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:40000")},
			HardNAT:   []netip.Addr{netip.MustParseAddr("203.0.113.9")},
		}},
		{"allocate", &Allocate{Peer: b.Public()}},
		{"allocation", &Allocation{VNI: 0xdeadbeef, Peers: [2]key.DiscoPublic{a.Public(), b.Public()}, Addrs: []netip.AddrPort{
			netip.MustParseAddrPort("203.0.113.1:7000"), netip.MustParseAddrPort("[2001:db8::3]:7000"),
		}}},
		{"allocation-no-addrs", &Allocation{VNI: 1, Peers: [2]key.DiscoPublic{a.Public(), b.Public()}}},
		{"bind", &BindRelay{VNI: 7}},
		{"challenge", &Challenge{VNI: 7, Challenge: [32]byte{1, 2, 3, 31: 9}}},
		{"answer", &Answer{VNI: 7, Challenge: [32]byte{4, 31: 5}}},
	}
	for _, tc := range msgs {
		t.Run(tc.name, func(t *testing.T) {
			pkt := AppendPacket(nil, a.Public(), a.Shared(b.Public()), tc.m)
			if !IsPacket(pkt) {
				t.Fatal("IsPacket = false for a disco packet")
			}
			sender, sealed, ok := Sender(pkt)
			if !ok || sender != a.Public() {
				t.Fatalf("Sender = %v, %v; want %v, true", sender, ok, a.Public())
			}
			got, err := Open(b.Shared(sender), sealed)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if diff := cmp.Diff(tc.m, got, cmpAddrs, cmp.Comparer(func(x, y key.NodePublic) bool { return x == y }), cmp.Comparer(func(x, y key.DiscoPublic) bool { return x == y })); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			// A third key cannot open it, nor can the sender's own
			// shared key with someone else.
			c := key.NewDisco()
			if _, err := Open(c.Shared(a.Public()), sealed); !errors.Is(err, ErrOpen) {
				t.Errorf("Open with the wrong key: err = %v, want ErrOpen", err)
			}
			// Flipping any sealed byte breaks it.
			bad := bytes.Clone(sealed)
			bad[len(bad)-1] ^= 1
			if _, err := Open(b.Shared(sender), bad); !errors.Is(err, ErrOpen) {
				t.Errorf("Open of a tampered packet: err = %v, want ErrOpen", err)
			}
		})
	}
}

func TestCallMeMaybeLimit(t *testing.T) {
	m := &CallMeMaybe{}
	for i := range MaxCallMeMaybeEndpoints + 5 {
		m.Endpoints = append(m.Endpoints, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(i+1)))
	}
	got, err := Parse(m.AppendMarshal(nil))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.(*CallMeMaybe).Endpoints); n != MaxCallMeMaybeEndpoints {
		t.Errorf("endpoints after round trip: %d, want %d", n, MaxCallMeMaybeEndpoints)
	}
	long := append(m.AppendMarshal(nil), make([]byte, 5*epLen)...)
	if _, err := Parse(long); !errors.Is(err, ErrMalformed) {
		t.Errorf("Parse of %d endpoints: err = %v, want ErrMalformed", len(long)/epLen, err)
	}
}

func TestParseErrors(t *testing.T) {
	for name, p := range map[string][]byte{
		"empty":        nil,
		"type only":    {TypePing},
		"short ping":   append([]byte{TypePing, 0}, make([]byte, pingLen-1)...),
		"short pong":   append([]byte{TypePong, 0}, make([]byte, pongLen-1)...),
		"partial cmm":  append([]byte{TypeCallMeMaybe, 0}, make([]byte, epLen+1)...),
		"unknown type": {0x7f, 0, 1, 2},
	} {
		if m, err := Parse(p); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse = %v, %v; want ErrMalformed", name, m, err)
		}
	}
	if _, _, ok := Sender(append([]byte("BEAM💡"), make([]byte, keyLen)...)); ok {
		t.Error("Sender accepted a packet with no sealed part")
	}
}

// FuzzParse checks that no payload makes Parse panic and that whatever
// parses marshals back to something that parses the same.
func FuzzParse(f *testing.F) {
	node := key.NewNode().Public()
	// A ping, a pong of an IPv4 source, a call-me-maybe of two
	// endpoints, a truncated ping, an unknown type, a version 1 pong
	// with extra bytes.
	f.Add((&Ping{TxID: [12]byte{1}, NodeKey: node}).AppendMarshal(nil))
	f.Add((&Pong{TxID: [12]byte{2}, Src: netip.MustParseAddrPort("192.0.2.1:7")}).AppendMarshal(nil))
	f.Add((&CallMeMaybe{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:7"), netip.MustParseAddrPort("[2001:db8::1]:9")}}).AppendMarshal(nil))
	f.Add([]byte{TypePing, 0, 1, 2, 3})
	// An allocation with one address, a challenge.
	f.Add((&Allocation{VNI: 9, Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:7")}}).AppendMarshal(nil))
	f.Add((&Challenge{VNI: 9, Challenge: [32]byte{1}}).AppendMarshal(nil))
	f.Add([]byte{0x09, 0})
	f.Add(append((&Pong{TxID: [12]byte{3}}).AppendMarshal(nil)[:1], append([]byte{1}, make([]byte, pongLen+4)...)...))
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := Parse(p)
		if err != nil {
			return
		}
		m2, err := Parse(m.AppendMarshal(nil))
		if err != nil {
			t.Fatalf("re-parse of %#v: %v", m, err)
		}
		if diff := cmp.Diff(m, m2, cmpAddrs, cmp.Comparer(func(x, y key.NodePublic) bool { return x == y }), cmp.Comparer(func(x, y key.DiscoPublic) bool { return x == y })); diff != "" {
			t.Fatalf("re-parse differs (-first +second):\n%s", diff)
		}
	})
}

// FuzzOpen feeds arbitrary packets to the receive side: splitting and
// opening must never panic, and nothing but a packet sealed with the right
// key opens.
func FuzzOpen(f *testing.F) {
	a, b := key.NewDisco(), key.NewDisco()
	shared := b.Shared(a.Public())
	f.Add(AppendPacket(nil, a.Public(), a.Shared(b.Public()), &Ping{TxID: [12]byte{1}}))
	f.Add(AppendPacket(nil, a.Public(), a.Shared(key.NewDisco().Public()), &Ping{TxID: [12]byte{1}}))
	f.Add([]byte("BEAM💡"))
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		sender, sealed, ok := Sender(pkt)
		if !ok {
			return
		}
		_ = sender
		if _, err := Open(shared, sealed); err == nil {
			// Only a box sealed with a and b's shared key opens; the
			// fuzzer cannot forge one.
			if _, ok := a.Shared(b.Public()).Open(sealed); !ok {
				t.Fatal("opened a packet the true shared key does not open")
			}
		}
	})
}
