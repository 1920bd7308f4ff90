package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/types/key"
)

// assignedNode returns a node as the coordinator registers it: the
// overlay addresses it assigns, and a host name that is its name.
func assignedNode() *Node {
	n := fullNode()
	v4 := netip.MustParseAddr("100.64.3.7")
	n.Addresses = []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(OverlayIPv6For(v4), 128)}
	n.Hostname = n.Name
	return n
}

// TestPeerRecordCompact checks that a compact record decodes to the same
// node as the record of older versions, that it leaves out the assigned
// addresses and a host name equal to the name, and that it is the same
// record where neither holds.
func TestPeerRecordCompact(t *testing.T) {
	other := func(f func(n *Node)) func() *Node {
		return func() *Node { n := assignedNode(); f(n); return n }
	}
	const suffix = "default.beam.internal."
	tests := []struct {
		name  string
		node  func() *Node
		saved int // bytes the compact record saves at least
	}{
		{"assigned", assignedNode, 18 + len("beta") + len("beta."+suffix)}, // the flag bits take a byte more
		{"DNS name only", other(func(n *Node) { n.Hostname, n.Addresses = "", nil }), len("beta." + suffix)},
		{"DNS name in another domain", other(func(n *Node) { n.Hostname, n.Addresses, n.DNSName = "", nil, "beta.other.test." }), 0},
		{"DNS name of another name", other(func(n *Node) { n.Hostname, n.Addresses, n.DNSName = "", nil, "gamma."+suffix }), 0},
		{"addresses only", other(func(n *Node) { n.Hostname, n.DNSName = "beta-laptop", "" }), 18},
		{"host name only", other(func(n *Node) { n.Addresses, n.DNSName = n.Addresses[:1], "" }), len("beta")},
		{"IPv6 of another IPv4", other(func(n *Node) {
			n.Addresses[1] = netip.PrefixFrom(OverlayIPv6For(netip.MustParseAddr("100.64.3.8")), 128)
			n.Hostname, n.DNSName = "", ""
		}), 0},
		{"addresses swapped", other(func(n *Node) {
			n.Addresses[0], n.Addresses[1] = n.Addresses[1], n.Addresses[0]
			n.Hostname, n.DNSName = "", ""
		}), 0},
		{"IPv4 not a host", other(func(n *Node) {
			n.Addresses[0] = netip.PrefixFrom(n.Addresses[0].Addr(), 24)
			n.Hostname, n.DNSName = "", ""
		}), 0},
		{"no name, a host name", other(func(n *Node) { n.Name, n.Hostname, n.Addresses, n.DNSName = "", "h", nil, ".x." }), 0},
		{"zero", func() *Node { return &Node{} }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.node()
			old, rec := AppendPeerRecord(nil, n), AppendPeerRecordCompact(nil, n, suffix)
			if tt.saved == 0 && !bytes.Equal(old, rec) {
				t.Errorf("compact record differs where nothing is left out:\n%x\n%x", old, rec)
			}
			if len(old)-len(rec) < tt.saved {
				t.Errorf("compact record %d bytes, older %d; want %d saved at least", len(rec), len(old), tt.saved)
			}
			got, err := ParsePeerRecordIn(rec, suffix)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(n, got, cmpNode); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			// A DNS name left out needs the frame's suffix.
			if _, err := ParsePeerRecord(rec); (err != nil) != (PeerDNSSuffix(n) == suffix) {
				t.Errorf("parsed without the frame's suffix: %v", err)
			}
		})
	}
	// In a frame, the head's suffix completes the DNS name.
	n := assignedNode()
	p := AppendBinaryMapFrame(nil, []byte(`{"peer_dns_suffix":"`+suffix+`"}`), ListPeers, [][]byte{AppendPeerRecordCompact(nil, n, suffix)}, nil)
	mr, err := DecodeMapFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*Node{n}, mr.Peers, cmpNode); diff != "" {
		t.Errorf("decoded frame (-want +got):\n%s", diff)
	}
	if mr.PeerDNSSuffix != "" {
		t.Errorf("PeerDNSSuffix = %q after decoding, want it cleared", mr.PeerDNSSuffix)
	}
	f, err := ScanMapFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Peers(func(ref PeerRef) error {
		got, err := ref.Parse()
		if err != nil {
			return err
		}
		if diff := cmp.Diff(n, got, cmpNode); diff != "" {
			t.Errorf("scanned peer (-want +got):\n%s", diff)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestOnlineByID checks that a frame's online states by ID decode and
// scan alongside keyed ones, and that a frame without them is the frame
// of older versions.
func TestOnlineByID(t *testing.T) {
	a := key.NewNode().Public()
	rec := AppendPeerRecordCompact(nil, assignedNode(), "")
	states := func(keyed map[key.NodePublic]bool, ids []NodeID, on []bool) func([]byte) []byte {
		return func(b []byte) []byte {
			b = appendUvarintForTest(b, uint64(len(keyed)))
			for k, v := range keyed {
				b = AppendOnline(b, k, v)
			}
			if len(ids) > 0 {
				b = appendUvarintForTest(b, uint64(len(ids)))
				for i, id := range ids {
					b = AppendOnlineID(b, id, on[i])
				}
			}
			return b
		}
	}
	ids := []NodeID{1, 63, 64, 12345, 1<<63 - 1}
	on := []bool{true, false, true, true, false}
	p := AppendBinaryMapFrameStates(nil, []byte(`{}`), ListPeersChanged, 1, [][]byte{rec}, states(map[key.NodePublic]bool{a: true}, ids, on))
	mr, err := DecodeMapFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(mr.PeersOnline) != 1 || !mr.PeersOnline[a] {
		t.Errorf("PeersOnline = %v, want %v online", mr.PeersOnline, a)
	}
	want := map[NodeID]bool{}
	for i, id := range ids {
		want[id] = on[i]
	}
	if diff := cmp.Diff(want, mr.PeersOnlineByID); diff != "" {
		t.Errorf("PeersOnlineByID (-want +got):\n%s", diff)
	}
	f, err := ScanMapFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.OnlineCount() != 1+len(ids) {
		t.Errorf("OnlineCount = %d, want %d", f.OnlineCount(), 1+len(ids))
	}
	scanned := map[NodeID]bool{}
	f.OnlineByID(func(id NodeID, on bool) { scanned[id] = on })
	if diff := cmp.Diff(want, scanned); diff != "" {
		t.Errorf("OnlineByID (-want +got):\n%s", diff)
	}
	if err := f.Peers(func(ref PeerRef) error {
		if ref.ID != assignedNode().ID {
			t.Errorf("PeerRef.ID = %d, want %d", ref.ID, assignedNode().ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Without states by ID, the frame is the older versions' one.
	keyed := map[key.NodePublic]bool{a: false}
	if got, old := AppendBinaryMapFrameStates(nil, []byte(`{}`), ListNone, 0, nil, states(keyed, nil, nil)), AppendBinaryMapFrame(nil, []byte(`{}`), ListNone, nil, keyed); !bytes.Equal(got, old) {
		t.Errorf("frame without states by ID:\n%x\nwant\n%x", got, old)
	}
}

// TestCompactMalformed checks that the decoder and the scan refuse
// malformed compact records and online states by ID.
func TestCompactMalformed(t *testing.T) {
	k := make([]byte, 32)
	withStates := func(tail ...byte) []byte {
		return append(AppendBinaryMapFrame(nil, []byte(`{}`), ListNone, nil, nil), tail...)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"states by ID: count zero", withStates(0)},
		{"states by ID: count past the end", withStates(3, 2, 4)},
		{"states by ID: ID zero", withStates(1, 1)},
		{"states by ID: truncated", withStates(1, 0x80)},
		{"states by ID: trailing byte", withStates(1, 2, 2)},
		{"keyed states cut short before those by ID", withStates(1, 2)[:len(withStates())-1]},
		{"both address encodings", frameWith(func([]byte) []byte {
			return append(append(appendUvarintForTest(nil, peerHasAddresses|peerOverlayAddrs), k...), 1, 4, 100, 64, 0, 1, 33, 100, 64, 0, 1)
		})},
		{"assigned addresses cut short", frameWith(func([]byte) []byte {
			return append(append(appendUvarintForTest(nil, peerOverlayAddrs), k...), 100, 64, 0)
		})},
		{"host name twice", frameWith(func([]byte) []byte {
			return append(append(appendUvarintForTest(nil, peerHasName|peerHasHostname|peerHostnameIsName), k...), 1, 'a', 1, 'b')
		})},
		{"host name of no name", frameWith(func([]byte) []byte {
			return append(appendUvarintForTest(nil, peerHostnameIsName), k...)
		})},
		{"DNS name of no name", frameWith(func([]byte) []byte {
			return append(appendUvarintForTest(nil, peerDNSNameInFrame), k...)
		})},
		{"DNS name in a frame without a suffix", frameWith(func([]byte) []byte {
			return append(append(appendUvarintForTest(nil, peerHasName|peerDNSNameInFrame), k...), 1, 'a')
		})},
		{"DNS name twice", func() []byte {
			b := append(append(appendUvarintForTest(nil, peerHasName|peerHasDNSName|peerDNSNameInFrame), k...), 1, 'a', 1, 'b')
			rec := append(appendUvarintForTest(nil, uint64(len(b))), b...)
			return AppendBinaryMapFrame(nil, []byte(`{"peer_dns_suffix":"x."}`), ListPeersChanged, [][]byte{rec}, nil)
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if mr, err := DecodeMapFrame(tt.b); !errors.Is(err, ErrBadPeerRecord) {
				t.Errorf("DecodeMapFrame = %+v, %v; want ErrBadPeerRecord", mr, err)
			}
			f, err := ScanMapFrame(tt.b)
			if err == nil {
				err = f.Peers(func(ref PeerRef) error {
					_, err := ref.Parse()
					return err
				})
			}
			if !errors.Is(err, ErrBadPeerRecord) {
				t.Errorf("scan: %v; want ErrBadPeerRecord", err)
			}
		})
	}
}
