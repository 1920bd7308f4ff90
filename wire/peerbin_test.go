package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"beam.dev/beam/types/key"
)

// fullNode returns a node with every field set to something other than
// its zero value.
func fullNode() *Node {
	return &Node{
		ID:            12345,
		Key:           key.NewNode().Public(),
		DiscoKey:      key.NewDisco().Public(),
		Name:          "beta",
		DNSName:       "beta.default.beam.internal.",
		Hostname:      "beta-laptop",
		OS:            "linux",
		Addresses:     []netip.Prefix{netip.MustParsePrefix("100.64.0.7/32"), netip.MustParsePrefix("fd7a:115c:a1e0::7/128")},
		Endpoints:     []netip.AddrPort{netip.MustParseAddrPort("198.51.100.4:41641"), netip.MustParseAddrPort("[2001:db8::1]:41641"), netip.MustParseAddrPort("[fe80::1%eth0]:7")},
		HomeDERP:      3,
		PeerRelay:     40000,
		Online:        true,
		Rev:           0x0123456789abcdef,
		Unknown:       true,
		LastSeen:      time.Date(2026, 12, 6, 22, 1, 2, 345678901, time.UTC),
		KeyExpiry:     time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC),
		User:          "alice@example.test",
		Tags:          []string{"tag:server", "tag:prod"},
		UngrantedTags: []string{"tag:old"},
		Ephemeral:     true,
		Edge:          true,
	}
}

// nodeFields lists every field of Node that AppendPeerRecord encodes.
// TestPeerRecordCoversNode fails when Node gains a field not listed here:
// add it to the codec (a new flag bit), to this list and to fullNode.
var nodeFields = []string{
	"ID", "Key", "DiscoKey", "Name", "DNSName", "Hostname", "OS", "Addresses", "Endpoints", "HomeDERP",
	"PeerRelay", "Online", "Rev", "Unknown", "LastSeen", "KeyExpiry", "User", "Tags", "UngrantedTags", "Ephemeral", "Edge",
}

var cmpNode = cmp.Options{cmpopts.EquateEmpty(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b key.NodePublic) bool { return a == b }), cmp.Comparer(func(a, b key.DiscoPublic) bool { return a == b })}

func TestPeerRecordCoversNode(t *testing.T) {
	typ := reflect.TypeFor[Node]()
	var got []string
	for i := range typ.NumField() {
		got = append(got, typ.Field(i).Name)
	}
	if diff := cmp.Diff(nodeFields, got); diff != "" {
		t.Fatalf("Node's fields differ from those the peer record encodes (-encoded +Node):\n%s", diff)
	}
	// Each field alone round-trips and changes the record, compact or
	// not: none is listed but left out of the codec.
	full := reflect.ValueOf(fullNode()).Elem()
	for _, enc := range []struct {
		name   string
		append func([]byte, *Node) []byte
	}{{"record", AppendPeerRecord}, {"compact", func(b []byte, n *Node) []byte { return AppendPeerRecordCompact(b, n, PeerDNSSuffix(n)) }}} {
		zero := enc.append(nil, &Node{})
		for i := range typ.NumField() {
			name := typ.Field(i).Name
			t.Run(enc.name+"/"+name, func(t *testing.T) {
				var n Node
				reflect.ValueOf(&n).Elem().Field(i).Set(full.Field(i))
				rec := enc.append(nil, &n)
				if bytes.Equal(rec, zero) {
					t.Fatalf("record of a node with only %s set equals the zero node's", name)
				}
				got, err := ParsePeerRecord(rec)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(&n, got, cmpNode); diff != "" {
					t.Errorf("round trip (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestPeerRecordRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 20000) // a record past 16 KB moves its body for a longer length
	tests := []struct {
		name string
		node func() *Node
	}{
		{"zero", func() *Node { return &Node{} }},
		{"full", fullNode},
		{"key only", func() *Node { return &Node{Key: key.NewNode().Public()} }},
		{"negative ID and DERP", func() *Node { return &Node{ID: -7, HomeDERP: -1} }},
		{"extreme ints", func() *Node { return &Node{ID: 1<<63 - 1, HomeDERP: -1 << 62, PeerRelay: 65535} }},
		{"long strings", func() *Node { n := fullNode(); n.Hostname, n.User = long, long[:200]; return n }},
		{"body of 127 bytes", func() *Node { return &Node{Name: strings.Repeat("n", 127-1-32-1)} }},
		{"body of 128 bytes", func() *Node { return &Node{Name: strings.Repeat("n", 128-1-32-1)} }},
		{"body of 16383 bytes", func() *Node { return &Node{Name: strings.Repeat("n", 16383-1-32-2)} }},
		{"body of 16384 bytes", func() *Node { return &Node{Name: strings.Repeat("n", 16384-1-32-2)} }},
		{"unicode", func() *Node { return &Node{Name: "ünï", Tags: []string{"tag:ä"}} }},
		{"odd addresses", func() *Node {
			return &Node{
				Addresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("::ffff:1.2.3.4/128"), netip.PrefixFrom(netip.MustParseAddr("1.2.3.4"), 33)},
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:1.2.3.4]:0"), netip.MustParseAddrPort("1.2.3.4:65535")},
			}
		}},
		{"times", func() *Node {
			return &Node{LastSeen: time.Unix(-5, 999999999).UTC(), KeyExpiry: time.Date(9999, 12, 31, 23, 59, 59, 1, time.UTC)}
		}},
		{"time in another zone", func() *Node {
			return &Node{LastSeen: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.node()
			rec := AppendPeerRecord([]byte("prefix"), n)
			if !bytes.HasPrefix(rec, []byte("prefix")) {
				t.Fatalf("AppendPeerRecord changed the bytes before it")
			}
			rec = rec[len("prefix"):]
			got, err := ParsePeerRecord(rec)
			if err != nil {
				t.Fatal(err)
			}
			// Times compare by instant (they decode in UTC).
			if diff := cmp.Diff(n, got, cmpNode); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			// As JSON decodes it too.
			j, err := json.Marshal(n)
			if err != nil {
				t.Fatal(err)
			}
			var viaJSON Node
			if err := json.Unmarshal(j, &viaJSON); err == nil {
				if diff := cmp.Diff(&viaJSON, got, cmpNode); diff != "" {
					t.Errorf("binary and JSON decode differently (-json +binary):\n%s", diff)
				}
			}
		})
	}
}

func TestPeerRecordSmallerThanJSON(t *testing.T) {
	n := fullNode()
	j, _ := json.Marshal(n)
	rec := AppendPeerRecord(nil, n)
	if len(rec)*2 > len(j) {
		t.Errorf("record is %d bytes, JSON %d; want at most half", len(rec), len(j))
	}
}

func TestDecodeMapFrame(t *testing.T) {
	a, b := fullNode(), &Node{Key: key.NewNode().Public(), Name: "c", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32")}}
	recs := [][]byte{AppendPeerRecord(nil, a), AppendPeerRecord(nil, b)}
	head := []byte(`{"more":true,"peers_removed":["` + b.Key.String() + `"]}`)
	tests := []struct {
		name   string
		list   PeerList
		recs   [][]byte
		online map[key.NodePublic]bool
		check  func(t *testing.T, mr *MapResponse)
	}{
		{"peers", ListPeers, recs, nil, func(t *testing.T, mr *MapResponse) {
			if diff := cmp.Diff([]*Node{a, b}, mr.Peers, cmpNode); diff != "" {
				t.Errorf("Peers (-want +got):\n%s", diff)
			}
			if mr.PeersChanged != nil || mr.PeersOnline != nil {
				t.Errorf("PeersChanged, PeersOnline = %v, %v; want nil", mr.PeersChanged, mr.PeersOnline)
			}
		}},
		{"empty full map", ListPeers, nil, nil, func(t *testing.T, mr *MapResponse) {
			if mr.Peers == nil || len(mr.Peers) != 0 {
				t.Errorf("Peers = %#v, want empty and non-nil", mr.Peers)
			}
		}},
		{"changed and online", ListPeersChanged, recs[1:], map[key.NodePublic]bool{a.Key: true, b.Key: false}, func(t *testing.T, mr *MapResponse) {
			if diff := cmp.Diff([]*Node{b}, mr.PeersChanged, cmpNode); diff != "" {
				t.Errorf("PeersChanged (-want +got):\n%s", diff)
			}
			if mr.Peers != nil {
				t.Errorf("Peers = %v, want nil", mr.Peers)
			}
			if len(mr.PeersOnline) != 2 || !mr.PeersOnline[a.Key] || mr.PeersOnline[b.Key] {
				t.Errorf("PeersOnline = %v, want %v online and %v offline", mr.PeersOnline, a.Key, b.Key)
			}
		}},
		{"online only", ListNone, nil, map[key.NodePublic]bool{a.Key: false}, func(t *testing.T, mr *MapResponse) {
			if on, ok := mr.PeersOnline[a.Key]; len(mr.PeersOnline) != 1 || !ok || on {
				t.Errorf("PeersOnline = %v, want %v offline", mr.PeersOnline, a.Key)
			}
		}},
		{"none", ListNone, nil, nil, func(t *testing.T, mr *MapResponse) {
			if mr.Peers != nil || mr.PeersChanged != nil || mr.PeersOnline != nil {
				t.Errorf("Peers, PeersChanged, PeersOnline = %v, %v, %v; want nil", mr.Peers, mr.PeersChanged, mr.PeersOnline)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mr, err := DecodeMapFrame(AppendBinaryMapFrame(nil, head, tt.list, tt.recs, tt.online))
			if err != nil {
				t.Fatal(err)
			}
			if !mr.More || len(mr.PeersRemoved) != 1 || mr.PeersRemoved[0] != b.Key {
				t.Errorf("head: More %v, PeersRemoved %v; want true, [%v]", mr.More, mr.PeersRemoved, b.Key)
			}
			tt.check(t, mr)
		})
	}
	t.Run("json", func(t *testing.T) {
		mr, err := DecodeMapFrame([]byte(`{"keep_alive":true}`))
		if err != nil || !mr.KeepAlive {
			t.Errorf("DecodeMapFrame(JSON) = %+v, %v; want a keepalive", mr, err)
		}
	})
}

func TestDecodeMapFrameMalformed(t *testing.T) {
	rec := AppendPeerRecord(nil, fullNode())
	good := AppendBinaryMapFrame(nil, []byte(`{}`), ListPeers, [][]byte{rec}, map[key.NodePublic]bool{key.NewNode().Public(): true})
	online := AppendBinaryMapFrame(nil, []byte(`{}`), ListNone, nil, map[key.NodePublic]bool{key.NewNode().Public(): true})
	tests := []struct {
		name string
		b    []byte
	}{
		{"only the type byte", []byte{BinaryMapFrame}},
		{"head past the end", []byte{BinaryMapFrame, 10, '{', '}'}},
		{"head not JSON", append([]byte{BinaryMapFrame, 2, 'x', 'y'}, byte(ListNone))},
		{"head with peers", append(append([]byte{BinaryMapFrame, 12}, `{"peers":[]}`...), byte(ListNone))},
		{"no list byte", []byte{BinaryMapFrame, 2, '{', '}'}},
		{"unknown list", []byte{BinaryMapFrame, 2, '{', '}', 3, 0}},
		{"bytes after a frame without peers", []byte{BinaryMapFrame, 2, '{', '}', 0, 0, 0}},
		{"no online count", []byte{BinaryMapFrame, 2, '{', '}', 0}},
		{"head with online", append(append([]byte{BinaryMapFrame, 19}, `{"peers_online":{}}`...), 0, 0)},
		{"online state 2", append(bytes.Clone(online[:len(online)-1]), 2)},
		{"online count past the end", append(bytes.Clone(online[:len(online)-34]), 2)},
		{"online entry cut short", online[:len(online)-1]},
		{"more records than bytes", []byte{BinaryMapFrame, 2, '{', '}', 1, 200, 1}},
		{"truncated", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"record length past the end", append(append([]byte{BinaryMapFrame, 2, '{', '}', 1, 1}, 0xff, 0x01), make([]byte, 40)...)},
		{"unknown flag", frameWith(func(b []byte) []byte { return append([]byte{0x80, 0x80, 0x80, 0x01}, make([]byte, 32)...) })},
		{"overlong varint", frameWith(func(b []byte) []byte {
			return append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, make([]byte, 32)...)
		})},
		{"short key", frameWith(func(b []byte) []byte { return append([]byte{0}, make([]byte, 31)...) })},
		{"bad family", frameWith(func(b []byte) []byte {
			return append(append([]byte{peerHasAddresses}, make([]byte, 32)...), 1, 5, 1, 2, 3, 4, 33)
		})},
		{"prefix too long", frameWith(func(b []byte) []byte {
			return append(append([]byte{peerHasAddresses}, make([]byte, 32)...), 1, 4, 1, 2, 3, 4, 34)
		})},
		{"empty zone", frameWith(func(b []byte) []byte {
			return append(append(append([]byte{peerHasEndpoints}, make([]byte, 32)...), 1, famIPv6Zo), append(make([]byte, 16), 0, 0, 1)...)
		})},
		{"empty list", frameWith(func(b []byte) []byte {
			return append(append(appendUvarintForTest(nil, peerHasTags), make([]byte, 32)...), 0)
		})},
		{"nanoseconds out of range", frameWith(func(b []byte) []byte {
			return appendUvarintForTest(append(append(appendUvarintForTest(nil, peerHasLastSeen), make([]byte, 32)...), 2), 1e9)
		})},
		{"peer relay out of range", frameWith(func(b []byte) []byte {
			return append(append([]byte{0x80, 0x04}, make([]byte, 32)...), 0x80, 0x80, 0x04)
		})},
		{"string past the record", frameWith(func(b []byte) []byte { return append(append([]byte{peerHasName}, make([]byte, 32)...), 5, 'a') })},
		{"bytes left in the record", frameWith(func(b []byte) []byte { return append(append([]byte{0}, make([]byte, 32)...), 0) })},
		// Lists bounded as the coordinator bounds them, without empty
		// elements: each decoded address takes 32 bytes, for 1 encoded.
		{"zero address in addresses", peerFrame(&Node{Addresses: []netip.Prefix{{}, netip.MustParsePrefix("fd7a:115c:a1e0::7/128")}})},
		{"zero address in endpoints", peerFrame(&Node{Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.Addr{}, 9), netip.MustParseAddrPort("[2001:db8::1]:41641")}})},
		{"empty tag", peerFrame(&Node{Tags: []string{"tag:a", ""}})},
		{"empty ungranted tag", peerFrame(&Node{UngrantedTags: []string{""}})},
		{"too many endpoints", peerFrame(&Node{Endpoints: manyEndpoints(MaxEndpoints + 1)})},
		{"too many addresses", peerFrame(&Node{Addresses: manyPrefixes(MaxPeerAddresses + 1)})},
		{"too many tags", peerFrame(&Node{Tags: manyTags(MaxTags + 1)})},
		{"too many ungranted tags", peerFrame(&Node{UngrantedTags: manyTags(MaxTags + 1)})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mr, err := DecodeMapFrame(tt.b)
			if err == nil {
				t.Fatalf("DecodeMapFrame = %+v, nil; want an error", mr)
			}
			if len(tt.b) > 4 && tt.name != "head not JSON" && !errors.Is(err, ErrBadPeerRecord) {
				t.Errorf("err = %v, want ErrBadPeerRecord", err)
			}
		})
	}
}

// TestDecodeMapFrameAtBounds checks that lists as long as the decoder
// takes (what a coordinator sends at most) decode.
func TestDecodeMapFrameAtBounds(t *testing.T) {
	n := &Node{Endpoints: manyEndpoints(MaxEndpoints), Addresses: manyPrefixes(MaxPeerAddresses), Tags: manyTags(MaxTags), UngrantedTags: manyTags(MaxTags)}
	mr, err := DecodeMapFrame(peerFrame(n))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(n, mr.PeersChanged[0], cmpNode); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// peerFrame returns a frame of n's record alone.
func peerFrame(n *Node) []byte {
	return AppendBinaryMapFrame(nil, []byte(`{}`), ListPeersChanged, [][]byte{AppendPeerRecord(nil, n)}, nil)
}

func manyEndpoints(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), uint16(1000+i))
	}
	return out
}

func manyPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), 32)
	}
	return out
}

func manyTags(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("tag:t%d", i)
	}
	return out
}

// frameWith returns a frame of one record whose body body returns.
func frameWith(body func([]byte) []byte) []byte {
	b := body(nil)
	rec := append(appendUvarintForTest(nil, uint64(len(b))), b...)
	return AppendBinaryMapFrame(nil, []byte(`{}`), ListPeersChanged, [][]byte{rec}, nil)
}

func appendUvarintForTest(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// FuzzDecodeMapFrame checks that decoding any bytes never panics, and
// that what decodes encodes to a frame that decodes the same.
func FuzzDecodeMapFrame(f *testing.F) {
	// Seeds: a full map frame of two peers, a delta of one, a frame
	// without peers, and a JSON frame.
	f.Add(AppendBinaryMapFrame(nil, []byte(`{"more":true}`), ListPeers, [][]byte{AppendPeerRecord(nil, fullNode()), AppendPeerRecord(nil, &Node{ID: 1})}, nil))
	f.Add(AppendBinaryMapFrame(nil, []byte(`{"peers_removed":[]}`), ListPeersChanged, [][]byte{AppendPeerRecord(nil, &Node{Name: "a", Tags: []string{"x"}})},
		map[key.NodePublic]bool{key.NewNode().Public(): true}))
	f.Add(AppendBinaryMapFrame(nil, []byte(`{"keep_alive":true}`), ListNone, nil, map[key.NodePublic]bool{{}: false}))
	f.Add([]byte(`{"peers":[{"id":1}]}`))
	// Compact records and online states by ID (version 22).
	f.Add(AppendBinaryMapFrameStates(nil, []byte(`{"peer_dns_suffix":"default.beam.internal."}`), ListPeersChanged, 2,
		[][]byte{AppendPeerRecordCompact(nil, assignedNode(), "default.beam.internal."), AppendPeerRecordCompact(nil, &Node{Name: "n", Hostname: "n"}, "x.")},
		func(b []byte) []byte {
			b = AppendOnline(append(b, 1), key.NewNode().Public(), true)
			return AppendOnlineID(AppendOnlineID(append(b, 2), 7, true), 300, false)
		}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Scanning never panics either.
		sf, serr := ScanMapFrame(b)
		if serr == nil {
			sf.Peers(func(ref PeerRef) error {
				_, err := ref.Parse()
				return err
			})
			sf.Online(func(key.NodePublic, bool) {})
			sf.OnlineByID(func(NodeID, bool) {})
		}
		mr, err := DecodeMapFrame(b)
		if err != nil || len(b) == 0 || b[0] != BinaryMapFrame {
			return
		}
		// What decodes scans the same: each peer's key, ID and node, and
		// the online states by ID.
		if serr != nil {
			t.Fatalf("frame decodes but does not scan: %v", serr)
		}
		var scanned []*Node
		if err := sf.Peers(func(ref PeerRef) error {
			n, err := ref.Parse()
			if err == nil && (ref.Key != n.Key || ref.ID != n.ID || ref.Rev != n.Rev) {
				t.Errorf("scanned key, ID, rev %v %d %d; parsed %v %d %d", ref.Key, ref.ID, ref.Rev, n.Key, n.ID, n.Rev)
			}
			scanned = append(scanned, n)
			return err
		}); err != nil {
			t.Fatalf("frame decodes but its peers do not scan: %v", err)
		}
		if diff := cmp.Diff(append(mr.Peers, mr.PeersChanged...), scanned, cmpNode); diff != "" {
			t.Errorf("scanned peers differ (-decoded +scanned):\n%s", diff)
		}
		byID := map[NodeID]bool{}
		sf.OnlineByID(func(id NodeID, on bool) { byID[id] = on })
		if diff := cmp.Diff(mr.PeersOnlineByID, byID, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("scanned online states by ID differ (-decoded +scanned):\n%s", diff)
		}
		list, nodes := ListNone, []*Node(nil)
		switch {
		case mr.Peers != nil:
			list, nodes = ListPeers, mr.Peers
		case mr.PeersChanged != nil:
			list, nodes = ListPeersChanged, mr.PeersChanged
		}
		head := *mr
		head.Peers, head.PeersChanged, head.PeersOnline, head.PeersOnlineByID = nil, nil, nil, nil
		hj, err := json.Marshal(&head)
		if err != nil {
			return // a head JSON decodes but does not encode (out-of-range time)
		}
		// The compact frame names a suffix, the peers' DNS names' where
		// they have one.
		suffix := "s."
		for _, n := range nodes {
			if sf := PeerDNSSuffix(n); sf != "" {
				suffix = sf
				break
			}
		}
		head.PeerDNSSuffix = suffix
		hjCompact, err := json.Marshal(&head)
		if err != nil {
			return
		}
		// Re-encoded as the older versions' frame (without the states by
		// ID) and as a compact one, it decodes the same.
		for _, compact := range []bool{false, true} {
			recs := make([][]byte, len(nodes))
			for i, n := range nodes {
				if compact {
					recs[i] = AppendPeerRecordCompact(nil, n, suffix)
				} else {
					recs[i] = AppendPeerRecord(nil, n)
				}
			}
			h := hj
			if compact {
				h = hjCompact
			}
			again, err := DecodeMapFrame(AppendBinaryMapFrameStates(nil, h, list, len(recs), recs, func(b []byte) []byte {
				b = appendUvarintForTest(b, uint64(len(mr.PeersOnline)))
				for k, on := range mr.PeersOnline {
					b = AppendOnline(b, k, on)
				}
				if compact && len(mr.PeersOnlineByID) > 0 {
					b = appendUvarintForTest(b, uint64(len(mr.PeersOnlineByID)))
					for id, on := range mr.PeersOnlineByID {
						b = AppendOnlineID(b, id, on)
					}
				}
				return b
			}))
			if err != nil {
				t.Fatalf("re-encoded frame (compact %v) does not decode: %v", compact, err)
			}
			if diff := cmp.Diff(nodes, append(again.Peers, again.PeersChanged...), cmpNode); diff != "" {
				t.Errorf("peers differ after re-encoding, compact %v (-first +second):\n%s", compact, diff)
			}
			if diff := cmp.Diff(mr.PeersOnline, again.PeersOnline, cmpNode); diff != "" {
				t.Errorf("online states differ after re-encoding, compact %v (-first +second):\n%s", compact, diff)
			}
			if compact {
				if diff := cmp.Diff(mr.PeersOnlineByID, again.PeersOnlineByID, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("online states by ID differ after re-encoding (-first +second):\n%s", diff)
				}
			}
		}
	})
}

func BenchmarkPeerRecord(b *testing.B) {
	n := fullNode()
	n.Tags, n.UngrantedTags, n.DiscoKey = nil, nil, key.NewDisco().Public()
	const peers = 64
	recs := make([][]byte, peers)
	for i := range recs {
		recs[i] = AppendPeerRecord(nil, n)
	}
	frame := AppendBinaryMapFrame(nil, []byte(`{}`), ListPeers, recs, nil)
	nodes := make([]*Node, peers)
	for i := range nodes {
		nodes[i] = n
	}
	jframe, _ := json.Marshal(&MapResponse{Peers: nodes})
	b.Run("encode", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf = AppendPeerRecord(buf[:0], n)
		}
	})
	b.Run("decode-binary-frame", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := DecodeMapFrame(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-json-frame", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(jframe)))
		for b.Loop() {
			if _, err := DecodeMapFrame(jframe); err != nil {
				b.Fatal(err)
			}
		}
	})
}
