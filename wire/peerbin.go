package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"beam.dev/beam/types/key"
)

// Binary map frames (since version 16). A full map of N peers is N
// records for each of N nodes; as JSON each record is about 455 bytes
// that the coordinator seals and every node parses through reflection.
// Nodes of version 16 or later get the peers of a map frame
// (MapResponse.Peers or PeersChanged) as compact binary records instead,
// and its PeersOnline as raw keys:
// the coordinator encodes a node's record once per change and builds each
// frame by concatenating records, and a node parses a record with no
// reflection and a few allocations. Everything else of the message stays
// JSON. PeersOnline is binary too: after a burst of joins each stream
// gets thousands of online flips, as JSON about 75 bytes each.
//
// The sealed payload of a binary map frame is:
//
//	1B  BinaryMapFrame (0x01; a JSON frame starts with '{')
//	uvarint H | H bytes JSON MapResponse without Peers, PeersChanged and PeersOnline
//	1B  list: ListNone (0), ListPeers (1) or ListPeersChanged (2)
//	uvarint C | C peer records (only if list is not ListNone)
//	uvarint O | O times (32B node key | 1B online: 0 or 1)   PeersOnline
//	uvarint I | I times uvarint(ID<<1 | online)              PeersOnlineByID
//
// The last line, PeersOnline by node ID (Node.ID, at least 1), comes
// only to nodes of version 22 or later (CompactFramesVersion), and only
// when I is not zero: a frame that ends after the keyed states has none.
// A state by ID takes one to four bytes (IDs below 2^27) where a keyed
// one takes 33, and after a burst of joins every stream gets thousands.
//
// A peer record (AppendPeerRecord) is uvarint L | L bytes:
//
//	uvarint flags   which optional fields follow (peerHas*); unknown bits are an error
//	32B  Key
//	32B  DiscoKey                 if peerHasDisco
//	varint ID                     if peerHasID (zigzag)
//	str  Name, DNSName, Hostname, OS   each if its bit is set
//	list Addresses                if peerHasAddresses: uvarint count, then prefixes
//	4B   overlay IPv4             if peerOverlayAddrs (not with peerHasAddresses)
//	list Endpoints                if peerHasEndpoints: uvarint count, then addr ports
//	varint HomeDERP               if peerHasHomeDERP (zigzag)
//	uvarint PeerRelay             if peerHasPeerRelay (at most 65535)
//	time LastSeen, KeyExpiry      each if its bit is set
//	str  User                     if peerHasUser
//	list Tags, UngrantedTags      each if its bit is set: uvarint count, then strs
//	8B   Rev (big-endian)         if peerHasRev
//
// Online, Unknown, Ephemeral and Edge are flag bits alone. Nodes of
// version 22 or later (AppendPeerRecordCompact) may get three more:
// peerOverlayAddrs, the Addresses the coordinator assigns, an IPv4 /32
// and the /128 of OverlayIPv6For it, as the IPv4 address alone;
// peerHostnameIsName, a Hostname equal to Name, which the record then
// leaves out (not with peerHasHostname); and peerDNSNameInFrame, a
// DNSName that is Name + "." + the frame's MapResponse.PeerDNSSuffix
// (its network's domain and a dot), which the record leaves out too
// (not with peerHasDNSName; the frame must have a suffix). Together
// they save about a third of a typical record; a node decodes the same
// Node from either encoding, so Rev and digests are unchanged. A str is
// uvarint length | bytes. A time is varint Unix seconds (zigzag) |
// uvarint nanoseconds (< 1e9), decoded in UTC. An address is a family
// byte: 0 (the zero Addr), 4 (4 bytes), 6 (16 bytes) or 7 (16 bytes,
// then the zone as a str); a prefix is an address then 1 byte bits+1 (0
// for an invalid prefix; none after family 0); an addr port is an
// address then 2B big-endian port. Absent fields decode as their zero
// value (an empty list as nil), as they do from JSON.
//
// A decoded element takes more memory than its encoding (an address 32
// bytes), so the decoder refuses lists longer than a coordinator sends
// (MaxEndpoints, MaxPeerAddresses, MaxTags), the zero address in a list
// and empty tags: a record then decodes to at most a few times its size.
const BinaryMapFrame byte = 0x01

// Bounds on a peer's lists that nodes enforce on binary peer records.
const (
	// MaxPeerAddresses is the most overlay addresses of one peer (the
	// coordinator assigns two: IPv4 and IPv6).
	MaxPeerAddresses = 16
	// MaxTags is the most tags of one node (an auth key's; the
	// coordinator refuses keys with more).
	MaxTags = 256
)

// PeerList says which list of a MapResponse a binary frame's records fill.
type PeerList byte

const (
	ListNone         PeerList = 0
	ListPeers        PeerList = 1 // MapResponse.Peers (a full map)
	ListPeersChanged PeerList = 2 // MapResponse.PeersChanged
)

// BinaryFramesVersion is the first CapabilityVersion whose nodes take
// binary map frames.
const BinaryFramesVersion = 16

// Flag bits of a peer record.
const (
	peerHasDisco = 1 << iota
	peerHasID
	peerHasName
	peerHasDNSName
	peerHasHostname
	peerHasOS
	peerHasAddresses
	peerHasEndpoints
	peerHasHomeDERP
	peerHasPeerRelay
	peerOnline
	peerUnknown
	peerHasLastSeen
	peerHasKeyExpiry
	peerHasUser
	peerHasTags
	peerHasUngrantedTags
	peerEphemeral
	peerEdge
	peerHasRev
	peerOverlayAddrs   // since version 22
	peerHostnameIsName // since version 22
	peerDNSNameInFrame // since version 22

	peerKnownFlags = 1<<iota - 1
)

// CompactFramesVersion is the first CapabilityVersion whose nodes take
// compact peer records (AppendPeerRecordCompact) and online states by
// node ID (AppendOnlineID).
const CompactFramesVersion = 22

// OverlayIPv6For returns the overlay IPv6 address the coordinator
// assigns with the overlay IPv4 address v4: OverlayIPv6 with v4 in its
// low 32 bits.
func OverlayIPv6For(v4 netip.Addr) netip.Addr {
	b := OverlayIPv6.Addr().As16()
	v := v4.As4()
	copy(b[12:], v[:])
	return netip.AddrFrom16(b)
}

// overlayAddrs reports whether addrs are an IPv4 /32 and the IPv6 /128
// of OverlayIPv6For it, and returns the IPv4 address.
func overlayAddrs(addrs []netip.Prefix) (netip.Addr, bool) {
	if len(addrs) != 2 {
		return netip.Addr{}, false
	}
	v4, v6 := addrs[0], addrs[1]
	ok := v4.Addr().Is4() && v4.Bits() == 32 && v6 == netip.PrefixFrom(OverlayIPv6For(v4.Addr()), 128)
	return v4.Addr(), ok
}

// AppendPeerRecord appends n's binary peer record, with its length
// prefix, to b and returns the result.
func AppendPeerRecord(b []byte, n *Node) []byte {
	return appendPeerRecord(b, n, false, "")
}

// AppendPeerRecordCompact is AppendPeerRecord for nodes of
// CompactFramesVersion or later: the coordinator's overlay addresses, a
// Hostname equal to Name, and, if dnsSuffix is not empty, a DNSName of
// Name + "." + dnsSuffix take flag bits of their own. The record must go
// in a frame whose MapResponse.PeerDNSSuffix is dnsSuffix.
func AppendPeerRecordCompact(b []byte, n *Node, dnsSuffix string) []byte {
	return appendPeerRecord(b, n, true, dnsSuffix)
}

// PeerDNSSuffix returns what follows n's Name and a dot in its DNSName,
// or "" if its DNSName is not of that form: the dnsSuffix with which
// AppendPeerRecordCompact leaves n's DNSName out.
func PeerDNSSuffix(n *Node) string {
	if n.Name == "" || len(n.DNSName) <= len(n.Name)+1 || n.DNSName[:len(n.Name)] != n.Name || n.DNSName[len(n.Name)] != '.' {
		return ""
	}
	return n.DNSName[len(n.Name)+1:]
}

func appendPeerRecord(b []byte, n *Node, compact bool, dnsSuffix string) []byte {
	var flags uint64
	set := func(bit uint64, on bool) {
		if on {
			flags |= bit
		}
	}
	set(peerHasDisco, !n.DiscoKey.IsZero())
	set(peerHasID, n.ID != 0)
	set(peerHasName, n.Name != "")
	set(peerHasDNSName, n.DNSName != "")
	set(peerHasHostname, n.Hostname != "")
	set(peerHasOS, n.OS != "")
	set(peerHasAddresses, len(n.Addresses) > 0)
	set(peerHasEndpoints, len(n.Endpoints) > 0)
	set(peerHasHomeDERP, n.HomeDERP != 0)
	set(peerHasPeerRelay, n.PeerRelay != 0)
	set(peerOnline, n.Online)
	set(peerUnknown, n.Unknown)
	set(peerHasLastSeen, !n.LastSeen.IsZero())
	set(peerHasKeyExpiry, !n.KeyExpiry.IsZero())
	set(peerHasUser, n.User != "")
	set(peerHasTags, len(n.Tags) > 0)
	set(peerHasUngrantedTags, len(n.UngrantedTags) > 0)
	set(peerEphemeral, n.Ephemeral)
	set(peerEdge, n.Edge)
	set(peerHasRev, n.Rev != 0)
	var v4 netip.Addr
	if compact && dnsSuffix != "" && PeerDNSSuffix(n) == dnsSuffix {
		flags = flags&^peerHasDNSName | peerDNSNameInFrame
	}
	if compact {
		var ok bool
		if v4, ok = overlayAddrs(n.Addresses); ok {
			flags = flags&^peerHasAddresses | peerOverlayAddrs
		}
		if n.Hostname != "" && n.Hostname == n.Name {
			flags = flags&^peerHasHostname | peerHostnameIsName
		}
	}

	// The body goes after room for a 2-byte length, which holds records
	// up to 16 KB; a longer one is moved up.
	start := len(b)
	b = append(b, 0, 0)
	b = binary.AppendUvarint(b, flags)
	k := n.Key.Raw32()
	b = append(b, k[:]...)
	if flags&peerHasDisco != 0 {
		d := n.DiscoKey.Raw32()
		b = append(b, d[:]...)
	}
	if flags&peerHasID != 0 {
		b = binary.AppendVarint(b, int64(n.ID))
	}
	for _, f := range [...]struct {
		bit uint64
		s   string
	}{{peerHasName, n.Name}, {peerHasDNSName, n.DNSName}, {peerHasHostname, n.Hostname}, {peerHasOS, n.OS}} {
		if flags&f.bit != 0 {
			b = appendStr(b, f.s)
		}
	}
	if flags&peerHasAddresses != 0 {
		b = binary.AppendUvarint(b, uint64(len(n.Addresses)))
		for _, p := range n.Addresses {
			b = appendPrefix(b, p)
		}
	}
	if flags&peerOverlayAddrs != 0 {
		v := v4.As4()
		b = append(b, v[:]...)
	}
	if flags&peerHasEndpoints != 0 {
		b = binary.AppendUvarint(b, uint64(len(n.Endpoints)))
		for _, ap := range n.Endpoints {
			b = appendAddr(b, ap.Addr())
			b = binary.BigEndian.AppendUint16(b, ap.Port())
		}
	}
	if flags&peerHasHomeDERP != 0 {
		b = binary.AppendVarint(b, int64(n.HomeDERP))
	}
	if flags&peerHasPeerRelay != 0 {
		b = binary.AppendUvarint(b, uint64(n.PeerRelay))
	}
	if flags&peerHasLastSeen != 0 {
		b = appendTime(b, n.LastSeen)
	}
	if flags&peerHasKeyExpiry != 0 {
		b = appendTime(b, n.KeyExpiry)
	}
	if flags&peerHasUser != 0 {
		b = appendStr(b, n.User)
	}
	if flags&peerHasTags != 0 {
		b = appendStrs(b, n.Tags)
	}
	if flags&peerHasUngrantedTags != 0 {
		b = appendStrs(b, n.UngrantedTags)
	}
	if flags&peerHasRev != 0 {
		b = binary.BigEndian.AppendUint64(b, n.Rev)
	}

	body := len(b) - start - 2
	if body < 1<<14 {
		// A 2-byte uvarint: 7 low bits with the continuation bit, then the rest.
		b[start] = byte(body) | 0x80
		b[start+1] = byte(body >> 7)
		if body < 0x80 {
			// One byte suffices: close the gap.
			b[start] = byte(body)
			copy(b[start+1:], b[start+2:])
			b = b[:len(b)-1]
		}
		return b
	}
	var lenBuf [binary.MaxVarintLen64]byte
	l := binary.PutUvarint(lenBuf[:], uint64(body))
	b = append(b, lenBuf[:l-2]...)
	copy(b[start+l:], b[start+2:start+2+body])
	copy(b[start:], lenBuf[:l])
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStrs(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendStr(b, s)
	}
	return b
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// Address families of the binary encoding.
const (
	famNone   = 0
	famIPv4   = 4
	famIPv6   = 6
	famIPv6Zo = 7 // IPv6 with a zone
)

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(b, famNone)
	case a.Is4():
		v := a.As4()
		return append(append(b, famIPv4), v[:]...)
	case a.Zone() != "":
		v := a.As16()
		b = append(append(b, famIPv6Zo), v[:]...)
		return appendStr(b, a.Zone())
	default:
		v := a.As16()
		return append(append(b, famIPv6), v[:]...)
	}
}

func appendPrefix(b []byte, p netip.Prefix) []byte {
	b = appendAddr(b, p.Addr())
	if !p.Addr().IsValid() {
		return b
	}
	return append(b, byte(p.Bits()+1))
}

// AppendBinaryMapFrame appends a binary map frame payload to b: head is
// the JSON of the message without Peers, PeersChanged and PeersOnline,
// records the peer records (AppendPeerRecord) of list, online the
// message's PeersOnline.
func AppendBinaryMapFrame(b, head []byte, list PeerList, records [][]byte, online map[key.NodePublic]bool) []byte {
	return AppendBinaryMapFrameSegments(b, head, list, len(records), records, online)
}

// AppendBinaryMapFrameSegments is AppendBinaryMapFrame of count records
// held by segs, one after another: a sender that keeps runs of records
// encoded together (the peers of a full map, shared by every node that
// sees them) joins them without splitting them up.
func AppendBinaryMapFrameSegments(b, head []byte, list PeerList, count int, segs [][]byte, online map[key.NodePublic]bool) []byte {
	return AppendBinaryMapFrameOnline(b, head, list, count, segs, len(online), func(b []byte) []byte {
		for k, on := range online {
			b = AppendOnline(b, k, on)
		}
		return b
	})
}

// AppendBinaryMapFrameOnline is AppendBinaryMapFrameSegments with the
// message's PeersOnline, n of them, appended by online (AppendOnline),
// for a sender that holds them other than as a map.
func AppendBinaryMapFrameOnline(b, head []byte, list PeerList, count int, segs [][]byte, n int, online func([]byte) []byte) []byte {
	return AppendBinaryMapFrameStates(b, head, list, count, segs, func(b []byte) []byte {
		b = binary.AppendUvarint(b, uint64(n))
		if n > 0 {
			b = online(b)
		}
		return b
	})
}

// AppendBinaryMapFrameStates is AppendBinaryMapFrameSegments with the
// frame's online states appended by states: the count of keyed ones and
// each (AppendOnline), then for a node of CompactFramesVersion or later
// the count of those by ID and each (AppendOnlineID), if any.
func AppendBinaryMapFrameStates(b, head []byte, list PeerList, count int, segs [][]byte, states func([]byte) []byte) []byte {
	b = append(b, BinaryMapFrame)
	b = binary.AppendUvarint(b, uint64(len(head)))
	b = append(b, head...)
	b = append(b, byte(list))
	if list != ListNone {
		b = binary.AppendUvarint(b, uint64(count))
		for _, r := range segs {
			b = append(b, r...)
		}
	}
	return states(b)
}

// AppendOnline appends one entry of a binary map frame's PeersOnline.
func AppendOnline(b []byte, k key.NodePublic, online bool) []byte {
	raw := k.Raw32()
	b = append(b, raw[:]...)
	if online {
		return append(b, 1)
	}
	return append(b, 0)
}

// AppendOnlineID appends one entry of a binary map frame's
// PeersOnlineByID: the online state of the peer of ID id, which must be
// at least 1.
func AppendOnlineID(b []byte, id NodeID, online bool) []byte {
	v := uint64(id) << 1
	if online {
		v |= 1
	}
	return binary.AppendUvarint(b, v)
}

// BinaryOnlineSize is what each entry of PeersOnline takes in a binary
// map frame, and the most an entry of PeersOnlineByID takes.
const BinaryOnlineSize = 33

// splitOnline splits the online states of a binary map frame, rest, into
// the keyed ones (BinaryOnlineSize bytes each) and those by ID, checking
// their counts and that each entry by ID is one whole uvarint.
func splitOnline(rest []byte) (keyed []byte, byID []byte, nByID int, err error) {
	online, n := binary.Uvarint(rest)
	if n <= 0 {
		return nil, nil, 0, fmt.Errorf("%w: frame without its online count", ErrBadPeerRecord)
	}
	rest = rest[n:]
	if online > uint64(len(rest))/BinaryOnlineSize {
		return nil, nil, 0, fmt.Errorf("%w: %d online states in %d bytes", ErrBadPeerRecord, online, len(rest))
	}
	keyed, rest = rest[:online*BinaryOnlineSize], rest[online*BinaryOnlineSize:]
	for i := 0; i < len(keyed); i += BinaryOnlineSize {
		if keyed[i+32] > 1 {
			return nil, nil, 0, fmt.Errorf("%w: online state %d", ErrBadPeerRecord, keyed[i+32])
		}
	}
	if len(rest) == 0 {
		return keyed, nil, 0, nil
	}
	ids, n := binary.Uvarint(rest)
	if n <= 0 || ids == 0 || ids > uint64(len(rest)-n) {
		return nil, nil, 0, fmt.Errorf("%w: %d online states by ID in %d bytes", ErrBadPeerRecord, ids, len(rest)-max(n, 0))
	}
	byID = rest[n:]
	for i, p := uint64(0), byID; i < ids; i++ {
		v, n := binary.Uvarint(p)
		if n <= 0 || v>>1 == 0 {
			return nil, nil, 0, fmt.Errorf("%w: online state by ID %d", ErrBadPeerRecord, i)
		}
		p = p[n:]
		if i == ids-1 && len(p) > 0 {
			return nil, nil, 0, fmt.Errorf("%w: %d bytes after the online states", ErrBadPeerRecord, len(p))
		}
	}
	return keyed, byID, int(ids), nil
}

// eachOnlineID calls fn with each state of byID (splitOnline checked).
func eachOnlineID(byID []byte, fn func(id NodeID, online bool)) {
	for len(byID) > 0 {
		v, n := binary.Uvarint(byID)
		byID = byID[n:]
		fn(NodeID(v>>1), v&1 == 1)
	}
}

// ErrBadPeerRecord is the error (wrapped) of a malformed binary map frame
// or peer record.
var ErrBadPeerRecord = errors.New("wire: malformed binary peer record")

// DecodeMapFrame decodes the opened payload of a map frame: JSON, or
// binary (BinaryMapFrame).
func DecodeMapFrame(p []byte) (*MapResponse, error) {
	var mr MapResponse
	if len(p) == 0 || p[0] != BinaryMapFrame {
		if err := json.Unmarshal(p, &mr); err != nil {
			return nil, err
		}
		mr.PeerDNSSuffix = ""
		return &mr, nil
	}
	hl, n := binary.Uvarint(p[1:])
	if n <= 0 || hl > uint64(len(p)-1-n) {
		return nil, fmt.Errorf("%w: frame head length", ErrBadPeerRecord)
	}
	head := p[1+n : 1+n+int(hl)]
	rest := p[1+n+int(hl):]
	if err := json.Unmarshal(head, &mr); err != nil {
		return nil, fmt.Errorf("decode frame head: %w", err)
	}
	if mr.Peers != nil || mr.PeersChanged != nil || mr.PeersOnline != nil {
		return nil, fmt.Errorf("%w: frame head carries peers", ErrBadPeerRecord)
	}
	if len(rest) == 0 {
		return nil, fmt.Errorf("%w: frame without a peer list byte", ErrBadPeerRecord)
	}
	list := PeerList(rest[0])
	rest = rest[1:]
	switch list {
	case ListNone, ListPeers, ListPeersChanged:
	default:
		return nil, fmt.Errorf("%w: unknown peer list %d", ErrBadPeerRecord, list)
	}
	// Records may name their DNSName by the frame's suffix.
	d := peerDecoder{dnsSuffix: mr.PeerDNSSuffix}
	mr.PeerDNSSuffix = ""
	if list != ListNone {
		// One string holds every string of the frame's peers.
		d.s = string(rest)
		count, err := d.uvarint()
		if err != nil {
			return nil, err
		}
		// Each record takes at least 34 bytes (length, flags, key).
		if count > uint64(len(d.s)-d.i)/34 {
			return nil, fmt.Errorf("%w: %d records in %d bytes", ErrBadPeerRecord, count, len(d.s)-d.i)
		}
		nodes := make([]*Node, count)
		for i := range nodes {
			if nodes[i], err = d.record(); err != nil {
				return nil, fmt.Errorf("peer record %d: %w", i, err)
			}
		}
		if list == ListPeers {
			mr.Peers = nodes
		} else {
			mr.PeersChanged = nodes
		}
		rest = rest[d.i:]
	}
	keyed, byID, nByID, err := splitOnline(rest)
	if err != nil {
		return nil, err
	}
	if len(keyed) > 0 {
		mr.PeersOnline = make(map[key.NodePublic]bool, len(keyed)/BinaryOnlineSize)
		for ; len(keyed) > 0; keyed = keyed[BinaryOnlineSize:] {
			mr.PeersOnline[key.NodePublicFromRaw32([32]byte(keyed[:32]))] = keyed[32] == 1
		}
	}
	if nByID > 0 {
		mr.PeersOnlineByID = make(map[NodeID]bool, nByID)
		eachOnlineID(byID, func(id NodeID, on bool) { mr.PeersOnlineByID[id] = on })
	}
	return &mr, nil
}

// ParsePeerRecord parses one peer record (AppendPeerRecord), which must
// fill b exactly.
func ParsePeerRecord(b []byte) (*Node, error) {
	return parseWhole(b, (*peerDecoder).record, "")
}

// ParsePeerRecordIn is ParsePeerRecord of a record of a frame whose
// MapResponse.PeerDNSSuffix is dnsSuffix.
func ParsePeerRecordIn(b []byte, dnsSuffix string) (*Node, error) {
	return parseWhole(b, (*peerDecoder).record, dnsSuffix)
}

// parseWhole parses b with parse, which must use all of it, in a frame
// of dnsSuffix (MapResponse.PeerDNSSuffix).
func parseWhole(b []byte, parse func(*peerDecoder) (*Node, error), dnsSuffix string) (*Node, error) {
	d := peerDecoder{s: string(b), dnsSuffix: dnsSuffix}
	n, err := parse(&d)
	if err != nil {
		return nil, err
	}
	if d.i != len(d.s) {
		return nil, fmt.Errorf("%w: %d bytes after the record", ErrBadPeerRecord, len(d.s)-d.i)
	}
	return n, nil
}

// peerDecoder parses peer records from s. Strings it returns are
// substrings of s, and slices are carved from chunks shared by several
// records (each capped, so appending to one copies it), so a frame of
// many peers costs a few allocations beyond one per Node.
type peerDecoder struct {
	s string
	i int // next byte
	// dnsSuffix is the frame's MapResponse.PeerDNSSuffix: the DNSName of
	// a record with peerDNSNameInFrame is its Name, a dot and this.
	dnsSuffix string

	prefixes []netip.Prefix
	ports    []netip.AddrPort
	strs     []string
}

// decodeChunk is how many elements the decoder's shared slices get at a time.
const decodeChunk = 256

func (d *peerDecoder) errf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadPeerRecord}, args...)...)
}

func (d *peerDecoder) uvarint() (uint64, error) {
	var x uint64
	for shift := uint(0); ; shift += 7 {
		if d.i >= len(d.s) {
			return 0, d.errf("truncated varint")
		}
		c := d.s[d.i]
		d.i++
		if shift == 63 && c > 1 {
			return 0, d.errf("varint overflows")
		}
		x |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return x, nil
		}
	}
}

func (d *peerDecoder) varint() (int64, error) {
	u, err := d.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x, err
}

func (d *peerDecoder) take(n uint64) (string, error) {
	if n > uint64(len(d.s)-d.i) {
		return "", d.errf("%d bytes wanted, %d left", n, len(d.s)-d.i)
	}
	s := d.s[d.i : d.i+int(n)]
	d.i += int(n)
	return s, nil
}

func (d *peerDecoder) str() (string, error) {
	n, err := d.uvarint()
	if err != nil {
		return "", err
	}
	return d.take(n)
}

func (d *peerDecoder) readByte() (byte, error) {
	if d.i >= len(d.s) {
		return 0, d.errf("truncated")
	}
	d.i++
	return d.s[d.i-1], nil
}

// count reads a list length of at most most, each element taking at
// least min bytes.
func (d *peerDecoder) count(min, most int) (int, error) {
	n, err := d.uvarint()
	if err != nil {
		return 0, err
	}
	if n > uint64(most) {
		return 0, d.errf("list of %d, more than %d", n, most)
	}
	if n == 0 || n > uint64(len(d.s)-d.i)/uint64(min) {
		return 0, d.errf("list of %d in %d bytes", n, len(d.s)-d.i)
	}
	return int(n), nil
}

// Least encoded sizes of list elements: an IPv4 prefix (family, 4 bytes,
// bits), an IPv4 endpoint (family, 4 bytes, port), a tag (length, a byte).
const (
	minPrefixLen   = 1 + 4 + 1
	minEndpointLen = 1 + 4 + 2
	minTagLen      = 2
)

func (d *peerDecoder) key32() ([32]byte, error) {
	var k [32]byte
	s, err := d.take(32)
	copy(k[:], s)
	return k, err
}

func (d *peerDecoder) addr() (netip.Addr, error) {
	fam, err := d.readByte()
	if err != nil {
		return netip.Addr{}, err
	}
	switch fam {
	case famNone:
		return netip.Addr{}, nil
	case famIPv4:
		s, err := d.take(4)
		if err != nil {
			return netip.Addr{}, err
		}
		return netip.AddrFrom4([4]byte{s[0], s[1], s[2], s[3]}), nil
	case famIPv6, famIPv6Zo:
		s, err := d.take(16)
		if err != nil {
			return netip.Addr{}, err
		}
		var v [16]byte
		copy(v[:], s)
		a := netip.AddrFrom16(v)
		if fam == famIPv6Zo {
			zone, err := d.str()
			if err != nil {
				return netip.Addr{}, err
			}
			if zone == "" {
				return netip.Addr{}, d.errf("empty zone")
			}
			a = a.WithZone(zone)
		}
		return a, nil
	}
	return netip.Addr{}, d.errf("unknown address family %d", fam)
}

// prefix reads a prefix of a list: not the zero one.
func (d *peerDecoder) prefix() (netip.Prefix, error) {
	a, err := d.addr()
	if err != nil {
		return netip.Prefix{}, err
	}
	if !a.IsValid() {
		return netip.Prefix{}, d.errf("empty address in a list")
	}
	bits, err := d.readByte()
	if err != nil {
		return netip.Prefix{}, err
	}
	if int(bits)-1 > a.BitLen() {
		return netip.Prefix{}, d.errf("prefix length %d for %d-bit address", int(bits)-1, a.BitLen())
	}
	return netip.PrefixFrom(a, int(bits)-1), nil
}

func (d *peerDecoder) time() (time.Time, error) {
	sec, err := d.varint()
	if err != nil {
		return time.Time{}, err
	}
	nsec, err := d.uvarint()
	if err != nil {
		return time.Time{}, err
	}
	if nsec >= 1e9 {
		return time.Time{}, d.errf("%d nanoseconds", nsec)
	}
	return time.Unix(sec, int64(nsec)).UTC(), nil
}

// strList reads a list of tags: at most MaxTags, none empty.
func (d *peerDecoder) strList() ([]string, error) {
	n, err := d.count(minTagLen, MaxTags)
	if err != nil {
		return nil, err
	}
	if len(d.strs) < n {
		d.strs = make([]string, max(n, decodeChunk))
	}
	out := d.strs[:n:n]
	d.strs = d.strs[n:]
	for i := range out {
		if out[i], err = d.str(); err != nil {
			return nil, err
		}
		if out[i] == "" {
			return nil, d.errf("empty tag")
		}
	}
	return out, nil
}

// record parses one length-prefixed record.
func (d *peerDecoder) record() (*Node, error) {
	l, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if l > uint64(len(d.s)-d.i) {
		return nil, d.errf("record of %d bytes, %d left", l, len(d.s)-d.i)
	}
	end := d.i + int(l)
	// Parse within the record alone.
	outer := d.s
	d.s = d.s[:end]
	n, err := d.body()
	d.s = outer
	if err != nil {
		return nil, err
	}
	if d.i != end {
		return nil, d.errf("%d bytes left in the record", end-d.i)
	}
	return n, nil
}

func (d *peerDecoder) body() (*Node, error) {
	flags, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if flags&^peerKnownFlags != 0 {
		return nil, d.errf("unknown flags %#x", flags&^peerKnownFlags)
	}
	if flags&(peerHasAddresses|peerOverlayAddrs) == peerHasAddresses|peerOverlayAddrs ||
		flags&(peerHasHostname|peerHostnameIsName) == peerHasHostname|peerHostnameIsName {
		return nil, d.errf("a field twice (flags %#x)", flags)
	}
	if flags&(peerHostnameIsName|peerDNSNameInFrame) != 0 && flags&peerHasName == 0 {
		return nil, d.errf("host or DNS name of no name")
	}
	if flags&peerDNSNameInFrame != 0 && (flags&peerHasDNSName != 0 || d.dnsSuffix == "") {
		return nil, d.errf("DNS name twice, or of a frame without a suffix")
	}
	n := &Node{
		Online:    flags&peerOnline != 0,
		Unknown:   flags&peerUnknown != 0,
		Ephemeral: flags&peerEphemeral != 0,
		Edge:      flags&peerEdge != 0,
	}
	k, err := d.key32()
	if err != nil {
		return nil, err
	}
	n.Key = key.NodePublicFromRaw32(k)
	if flags&peerHasDisco != 0 {
		if k, err = d.key32(); err != nil {
			return nil, err
		}
		n.DiscoKey = key.DiscoPublicFromRaw32(k)
	}
	if flags&peerHasID != 0 {
		id, err := d.varint()
		if err != nil {
			return nil, err
		}
		n.ID = NodeID(id)
	}
	for _, f := range [...]struct {
		bit uint64
		s   *string
	}{{peerHasName, &n.Name}, {peerHasDNSName, &n.DNSName}, {peerHasHostname, &n.Hostname}, {peerHasOS, &n.OS}} {
		if flags&f.bit != 0 {
			if *f.s, err = d.str(); err != nil {
				return nil, err
			}
		}
	}
	if flags&peerHostnameIsName != 0 {
		n.Hostname = n.Name
	}
	if flags&peerDNSNameInFrame != 0 {
		n.DNSName = n.Name + "." + d.dnsSuffix
	}
	if flags&peerHasAddresses != 0 {
		c, err := d.count(minPrefixLen, MaxPeerAddresses)
		if err != nil {
			return nil, err
		}
		if len(d.prefixes) < c {
			d.prefixes = make([]netip.Prefix, max(c, decodeChunk))
		}
		n.Addresses = d.prefixes[:c:c]
		d.prefixes = d.prefixes[c:]
		for i := range n.Addresses {
			if n.Addresses[i], err = d.prefix(); err != nil {
				return nil, err
			}
		}
	}
	if flags&peerOverlayAddrs != 0 {
		s, err := d.take(4)
		if err != nil {
			return nil, err
		}
		if len(d.prefixes) < 2 {
			d.prefixes = make([]netip.Prefix, decodeChunk)
		}
		n.Addresses = d.prefixes[:2:2]
		d.prefixes = d.prefixes[2:]
		v4 := netip.AddrFrom4([4]byte{s[0], s[1], s[2], s[3]})
		n.Addresses[0], n.Addresses[1] = netip.PrefixFrom(v4, 32), netip.PrefixFrom(OverlayIPv6For(v4), 128)
	}
	if flags&peerHasEndpoints != 0 {
		c, err := d.count(minEndpointLen, MaxEndpoints)
		if err != nil {
			return nil, err
		}
		if len(d.ports) < c {
			d.ports = make([]netip.AddrPort, max(c, decodeChunk))
		}
		n.Endpoints = d.ports[:c:c]
		d.ports = d.ports[c:]
		for i := range n.Endpoints {
			a, err := d.addr()
			if err != nil {
				return nil, err
			}
			if !a.IsValid() {
				return nil, d.errf("empty address in a list")
			}
			p, err := d.take(2)
			if err != nil {
				return nil, err
			}
			n.Endpoints[i] = netip.AddrPortFrom(a, uint16(p[0])<<8|uint16(p[1]))
		}
	}
	if flags&peerHasHomeDERP != 0 {
		v, err := d.varint()
		if err != nil {
			return nil, err
		}
		if v < math.MinInt || v > math.MaxInt {
			return nil, d.errf("home DERP %d", v)
		}
		n.HomeDERP = int(v)
	}
	if flags&peerHasPeerRelay != 0 {
		v, err := d.uvarint()
		if err != nil {
			return nil, err
		}
		if v > math.MaxUint16 {
			return nil, d.errf("peer relay port %d", v)
		}
		n.PeerRelay = uint16(v)
	}
	if flags&peerHasLastSeen != 0 {
		if n.LastSeen, err = d.time(); err != nil {
			return nil, err
		}
	}
	if flags&peerHasKeyExpiry != 0 {
		if n.KeyExpiry, err = d.time(); err != nil {
			return nil, err
		}
	}
	if flags&peerHasUser != 0 {
		if n.User, err = d.str(); err != nil {
			return nil, err
		}
	}
	if flags&peerHasTags != 0 {
		if n.Tags, err = d.strList(); err != nil {
			return nil, err
		}
	}
	if flags&peerHasUngrantedTags != 0 {
		if n.UngrantedTags, err = d.strList(); err != nil {
			return nil, err
		}
	}
	if flags&peerHasRev != 0 {
		r, err := d.take(8)
		if err != nil {
			return nil, err
		}
		n.Rev = binary.BigEndian.Uint64([]byte(r))
	}
	return n, nil
}
