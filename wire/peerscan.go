package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"beam.dev/beam/types/key"
)

// ScannedFrame is a map frame's opened payload read without decoding its
// peers into Nodes, for programs that read thousands of streams and need
// only a few fields of each peer (coordinator/scalebench's fake nodes):
// ScanMapFrame decodes the JSON head alone, and Peers and Online walk the
// binary records and online states in place. A JSON frame (a node below
// BinaryFramesVersion) is decoded whole, and Peers and Online walk what
// it decoded.
type ScannedFrame struct {
	// Head is the message without Peers, PeersChanged and PeersOnline
	// (which Peers and Online give); for a JSON frame, the whole message.
	Head *MapResponse
	// List is the list the frame's peers fill: ListPeers (a full map, or
	// part of one), ListPeersChanged, or ListNone.
	List PeerList

	binary  bool
	count   int
	records []byte // count records, each with its length prefix
	online  []byte // BinaryOnlineSize bytes a state
	byID    []byte // nByID states by ID (AppendOnlineID)
	nByID   int
}

// PeerRef is what ScannedFrame.Peers reads of one peer.
type PeerRef struct {
	Key     key.NodePublic
	ID      NodeID
	Rev     uint64
	Online  bool
	Unknown bool
	// Record is the peer's record without its length prefix
	// (ParsePeerRecord's input once prefixed; see ParsePeerBody), part
	// of the frame; nil for a JSON frame, whose Node is set instead.
	Record []byte
	// Node is the decoded peer of a JSON frame; nil for a binary one.
	Node *Node

	dnsSuffix string // the frame's MapResponse.PeerDNSSuffix
}

// Parse returns the peer as a Node: Node, or Record parsed.
func (r PeerRef) Parse() (*Node, error) {
	if r.Node != nil {
		return r.Node, nil
	}
	return parseWhole(r.Record, (*peerDecoder).body, r.dnsSuffix)
}

// ScanMapFrame splits the opened payload p of a map frame (JSON, or
// binary: BinaryMapFrame) into its head, peer records and online states.
// It checks the frame's framing and each record's length and flags;
// ScannedFrame.Peers checks each record's key and revision as it reads
// them. The frame keeps p.
func ScanMapFrame(p []byte) (*ScannedFrame, error) {
	if len(p) == 0 || p[0] != BinaryMapFrame {
		mr, err := DecodeMapFrame(p)
		if err != nil {
			return nil, err
		}
		f := &ScannedFrame{Head: mr}
		switch {
		case mr.Peers != nil:
			f.List, f.count = ListPeers, len(mr.Peers)
		case mr.PeersChanged != nil:
			f.List, f.count = ListPeersChanged, len(mr.PeersChanged)
		}
		return f, nil
	}
	f := &ScannedFrame{Head: new(MapResponse), binary: true}
	hl, n := binary.Uvarint(p[1:])
	if n <= 0 || hl > uint64(len(p)-1-n) {
		return nil, fmt.Errorf("%w: frame head length", ErrBadPeerRecord)
	}
	if err := json.Unmarshal(p[1+n:1+n+int(hl)], f.Head); err != nil {
		return nil, fmt.Errorf("decode frame head: %w", err)
	}
	if f.Head.Peers != nil || f.Head.PeersChanged != nil || f.Head.PeersOnline != nil {
		return nil, fmt.Errorf("%w: frame head carries peers", ErrBadPeerRecord)
	}
	rest := p[1+n+int(hl):]
	if len(rest) == 0 {
		return nil, fmt.Errorf("%w: frame without a peer list byte", ErrBadPeerRecord)
	}
	f.List, rest = PeerList(rest[0]), rest[1:]
	switch f.List {
	case ListNone:
	case ListPeers, ListPeersChanged:
		count, n := binary.Uvarint(rest)
		if n <= 0 {
			return nil, fmt.Errorf("%w: truncated record count", ErrBadPeerRecord)
		}
		rest = rest[n:]
		// Each record takes at least 34 bytes (length, flags, key).
		if count > uint64(len(rest))/34 {
			return nil, fmt.Errorf("%w: %d records in %d bytes", ErrBadPeerRecord, count, len(rest))
		}
		start := rest
		for i := range count {
			l, n := binary.Uvarint(rest)
			if n <= 0 || l > uint64(len(rest)-n) {
				return nil, fmt.Errorf("%w: peer record %d: length", ErrBadPeerRecord, i)
			}
			rest = rest[n+int(l):]
		}
		f.count, f.records = int(count), start[:len(start)-len(rest)]
	default:
		return nil, fmt.Errorf("%w: unknown peer list %d", ErrBadPeerRecord, f.List)
	}
	var err error
	if f.online, f.byID, f.nByID, err = splitOnline(rest); err != nil {
		return nil, err
	}
	return f, nil
}

// Count is the number of peers in List.
func (f *ScannedFrame) Count() int { return f.count }

// OnlineCount is the number of online states (PeersOnline and
// PeersOnlineByID).
func (f *ScannedFrame) OnlineCount() int {
	if !f.binary {
		return len(f.Head.PeersOnline)
	}
	return len(f.online)/BinaryOnlineSize + f.nByID
}

// Peers calls fn with each peer of List in order, reading a binary
// record's flags, key and revision alone; ref.Record is valid only during
// the call. It stops at the first malformed record, or the first error fn
// returns, and returns it.
func (f *ScannedFrame) Peers(fn func(ref PeerRef) error) error {
	if !f.binary {
		nodes := f.Head.Peers
		if f.List == ListPeersChanged {
			nodes = f.Head.PeersChanged
		}
		for _, p := range nodes {
			if p == nil {
				continue
			}
			if err := fn(PeerRef{Key: p.Key, Rev: p.Rev, Online: p.Online, Unknown: p.Unknown, Node: p}); err != nil {
				return err
			}
		}
		return nil
	}
	rest := f.records
	for i := range f.count {
		l, n := binary.Uvarint(rest) // checked by ScanMapFrame
		rec := rest[n : n+int(l)]
		rest = rest[n+int(l):]
		flags, n := binary.Uvarint(rec)
		if n <= 0 || flags&^peerKnownFlags != 0 || len(rec)-n < 32 {
			return fmt.Errorf("%w: peer record %d: flags or key", ErrBadPeerRecord, i)
		}
		ref := PeerRef{
			Key:     key.NodePublicFromRaw32([32]byte(rec[n : n+32])),
			Online:  flags&peerOnline != 0,
			Unknown: flags&peerUnknown != 0,
			Record:  rec,

			dnsSuffix: f.Head.PeerDNSSuffix,
		}
		if flags&peerHasID != 0 {
			// ID follows the key, and the disco key if any.
			at := n + 32
			if flags&peerHasDisco != 0 {
				at += 32
			}
			var v int64
			m := 0
			if at < len(rec) {
				var u uint64
				u, m = binary.Uvarint(rec[at:])
				v = int64(u>>1) ^ -int64(u&1) // zigzag
			}
			if m <= 0 {
				return fmt.Errorf("%w: peer record %d: ID", ErrBadPeerRecord, i)
			}
			ref.ID = NodeID(v)
		}
		if flags&peerHasRev != 0 {
			// Rev is a record's last field.
			if len(rec)-n-32 < 8 {
				return fmt.Errorf("%w: peer record %d: revision", ErrBadPeerRecord, i)
			}
			ref.Rev = binary.BigEndian.Uint64(rec[len(rec)-8:])
		}
		if err := fn(ref); err != nil {
			return err
		}
	}
	return nil
}

// Online calls fn with each online state of the frame given by key
// (PeersOnline); OnlineByID gives the others.
func (f *ScannedFrame) Online(fn func(k key.NodePublic, online bool)) {
	if !f.binary {
		for k, on := range f.Head.PeersOnline {
			fn(k, on)
		}
		return
	}
	for rest := f.online; len(rest) > 0; rest = rest[BinaryOnlineSize:] {
		fn(key.NodePublicFromRaw32([32]byte(rest[:32])), rest[32] == 1)
	}
}

// OnlineByID calls fn with each online state of the frame given by the
// peer's ID (PeersOnlineByID, since CompactFramesVersion): the ID of a
// peer the node holds (PeerRef.ID).
func (f *ScannedFrame) OnlineByID(fn func(id NodeID, online bool)) {
	eachOnlineID(f.byID, fn)
}

// ParsePeerBody parses a peer record without its length prefix, such as
// PeerRef.Record, of a frame without a PeerDNSSuffix (else see
// PeerRef.Parse).
func ParsePeerBody(rec []byte) (*Node, error) {
	return parseWhole(rec, (*peerDecoder).body, "")
}
