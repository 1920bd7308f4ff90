package scalebench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// progressEvery is how often the waits log their progress.
const progressEvery = 5 * time.Second

// FleetOptions configures a Fleet.
type FleetOptions struct {
	// URL is the coordinator's base URL. Required unless URLs is set.
	URL string
	// URLs, if set, are several coordinators' base URLs (replicas on one
	// database): node i streams from URLs[i%len(URLs)] alone, so node 0
	// streams from URLs[0]. URL is then ignored.
	URLs []string
	// N is the number of nodes, at least 2. Required.
	N int
	// Sources is how many loopback source addresses (127.0.0.1, .2, ...)
	// the nodes connect from, so that no one address reaches the
	// coordinator's per-client connection cap (a quarter of its
	// connection limit). Zero means one per 1,000 nodes.
	Sources int
	// Logger receives the progress of waits every few seconds; nil
	// discards it.
	Logger *slog.Logger
	// FullMapsInFlight bounds how many streams are between opening and
	// having read their full map: a node takes a slot before it sends
	// its stream request and gives it back once its full map is read,
	// so the others open their streams as slots free up. Without the
	// bound the fleet's memory grows with N times the size of a full map
	// whenever it reads more slowly than the coordinator sends (5,000
	// streams took this process past 9 GB on 2 busy cores). The slot is
	// taken before the request, not before the first read: a stream left
	// unread for twice the coordinator's keepalive (60 s) is dead to
	// coordclient, which drops it and opens another, so from about 4,000
	// nodes on the waiting streams were reopened over and over and the
	// run never finished. Zero means 128.
	FullMapsInFlight int
}

// Fleet is N fake nodes of one network. Node 0 is the one whose changes
// Change measures.
//
// Each node's map stream runs on its own goroutine, which alone touches
// that node's state; the fleet-wide counters they move are atomic, and
// every move pokes the fleet so that the wait methods recheck them.
type Fleet struct {
	n       int
	nodes   []*fakeNode
	index   keyIndex // read-only after NewFleet
	changer key.NodePublic
	poked   chan struct{} // cap 1: a counter moved
	// blocks are the blocks of full maps the nodes checked and opened
	// (coordclient.Options.BlockCache).
	blocks *coordclient.BlockCache
	logger *slog.Logger

	cur      atomic.Pointer[epoch]
	mark     atomic.Int64 // the endpoint port of the change in flight; 0 for none
	markSeen atomic.Int64 // nodes that have seen the change in flight
	badFulls atomic.Int64 // full maps without every other node as a peer
	badFull  atomic.Pointer[string]
	runErr   atomic.Pointer[error] // the first error that ended a node's stream for good

	reading chan struct{} // a slot per stream opening or reading its full map (FullMapsInFlight)

	cancel context.CancelFunc // ends the streams; set by Stream
	wg     sync.WaitGroup     // the streams

	// markSeenVia counts markSeen per coordinator (FleetOptions.URLs).
	markSeenVia []atomic.Int64

	// keys are the nodes' keys by index; read-only after NewFleet.
	keys []key.NodePublic
	// revs holds, per node index, the revisions of that node that some
	// node's map gave, each with what it adds to a peers digest
	// (wire.PeerHash): the nodes hold a peer as its index and the number
	// of its revision here, two bytes, instead of a *wire.Node, and hash
	// each revision once for the fleet rather than once per holder. The
	// lists only grow (under revMu).
	revs  []revList
	revMu sync.Mutex

	// ids holds, by node ID (wire.Node.ID), the node's index plus one,
	// learned from the peer records the nodes read, for the online
	// states that name peers by ID (wire.ScannedFrame.OnlineByID). It
	// only grows (copy on write under idMu; entries stored under idMu).
	ids  atomic.Pointer[[]atomic.Int32]
	idMu sync.Mutex
}

// maxLearnedID bounds the node IDs the fleet maps back to nodes.
const maxLearnedID = 1 << 24

// learnID records that node ID id is node i.
func (f *Fleet) learnID(id wire.NodeID, i int) {
	if id <= 0 || id > maxLearnedID {
		return
	}
	if p := f.ids.Load(); p != nil && int(id) < len(*p) && (*p)[id].Load() == int32(i+1) {
		return
	}
	f.idMu.Lock()
	defer f.idMu.Unlock()
	p := f.ids.Load()
	if p == nil || int(id) >= len(*p) {
		grown := make([]atomic.Int32, max(2*int(id), 2*f.n, 1024))
		if p != nil {
			for j := range *p {
				grown[j].Store((*p)[j].Load())
			}
		}
		p = &grown
		f.ids.Store(p)
	}
	(*p)[id].Store(int32(i + 1))
}

// byID returns the index of the node of ID id, or -1 if none is known.
func (f *Fleet) byID(id wire.NodeID) int {
	if p := f.ids.Load(); p != nil && id > 0 && int64(id) < int64(len(*p)) {
		return int((*p)[id].Load()) - 1
	}
	return -1
}

// keyIndex finds a node's index by its key: a table of indexes, open
// addressing with linear probing, at most half full, keyed by the first
// eight bytes of a key. Keys are Curve25519 points the fleet made at
// random, so those bytes spread the fleet's keys evenly; a key that is
// not the fleet's probes to an empty slot. Every peer record and online
// state that every node reads takes one lookup: a Go map keyed by the
// 32-byte key hashed and compared the whole key, and at 10,000 nodes
// those lookups were a tenth of the fleet's CPU.
type keyIndex struct {
	keys  []keyWords // by index
	slots []int32    // an index + 1; 0 is empty
	mask  uint64
}

// keyWords is a key as four words, compared as such.
type keyWords [4]uint64

func wordsOf(k key.NodePublic) keyWords {
	raw := k.Raw32()
	return keyWords{
		binary.LittleEndian.Uint64(raw[0:]), binary.LittleEndian.Uint64(raw[8:]),
		binary.LittleEndian.Uint64(raw[16:]), binary.LittleEndian.Uint64(raw[24:]),
	}
}

func newKeyIndex(keys []key.NodePublic) keyIndex {
	size := 1
	for size < 2*len(keys) {
		size *= 2
	}
	x := keyIndex{keys: make([]keyWords, len(keys)), slots: make([]int32, size), mask: uint64(size - 1)}
	for i, k := range keys {
		w := wordsOf(k)
		x.keys[i] = w
		s := w[0] & x.mask
		for x.slots[s] != 0 {
			s = (s + 1) & x.mask
		}
		x.slots[s] = int32(i + 1)
	}
	return x
}

// find returns the index of the node whose key is k.
func (x *keyIndex) find(k key.NodePublic) (int, bool) {
	w := wordsOf(k)
	for s := w[0] & x.mask; ; s = (s + 1) & x.mask {
		i := int(x.slots[s]) - 1
		if i < 0 {
			return 0, false
		}
		if x.keys[i] == w {
			return i, true
		}
	}
}

// revEntry is one revision of a node and its digest hash.
type revEntry struct {
	rev  uint64
	hash wire.DigestSum
}

// revList is the revisions of one node (Fleet.revs). Nodes read the
// lists of their peers at every peer record, in the order of the fleet's
// nodes: the first revision, all that most nodes ever have, sits in the
// fleet's slice itself rather than behind two pointers, one cache line
// for a peer instead of two misses.
type revList struct {
	n     atomic.Uint32 // revisions set: first, then more[n-2]
	first revEntry
	more  atomic.Pointer[[]revEntry] // copy on write under revMu
}

// find returns the number (from 1) of revision rev and its hash, or 0.
func (l *revList) find(rev uint64) (uint16, *wire.DigestSum) {
	n := l.n.Load()
	if n == 0 {
		return 0, nil
	}
	if l.first.rev == rev {
		return 1, &l.first.hash
	}
	if n == 1 {
		return 0, nil
	}
	more := *l.more.Load()
	for j := range more {
		if more[j].rev == rev {
			return uint16(j + 2), &more[j].hash
		}
	}
	return 0, nil
}

// revID returns the number (from 1) of node i's revision rev in f.revs
// and its hash, adding it if new.
func (f *Fleet) revID(i int, rev uint64) (uint16, *wire.DigestSum, error) {
	l := &f.revs[i]
	if id, h := l.find(rev); id != 0 {
		return id, h, nil
	}
	f.revMu.Lock()
	defer f.revMu.Unlock()
	if id, h := l.find(rev); id != 0 {
		return id, h, nil
	}
	e := revEntry{rev, wire.PeerHash(f.keys[i], rev)}
	n := l.n.Load()
	switch {
	case n == 0:
		l.first = e
	case n >= math.MaxUint16:
		return 0, nil, fmt.Errorf("scalebench: node %d has more than %d revisions", i, math.MaxUint16)
	default:
		var list []revEntry
		if p := l.more.Load(); p != nil {
			list = *p
		}
		list = append(slices.Clip(list), e)
		l.more.Store(&list)
	}
	l.n.Store(n + 1)
	id, h := l.find(rev)
	return id, h, nil
}

// revHash is what node i at revision number id adds to a digest.
func (f *Fleet) revHash(i int, id uint16) *wire.DigestSum {
	l := &f.revs[i]
	if id == 1 {
		return &l.first.hash
	}
	return &(*l.more.Load())[id-2].hash
}

// epoch is one generation of streams: the first ones, then the ones after
// each restart of the coordinator.
type epoch struct {
	full    atomic.Int64 // nodes whose stream has delivered a full map in this epoch
	settled atomic.Int64 // of those, nodes that see all N-1 peers online
	// resumed counts the nodes whose first full map of the epoch was a
	// resumed one (wire.MapResponse.PeersKept).
	resumed atomic.Int64
}

// fakeNode is one node. Apart from the client and its byte counter, its
// fields belong to the goroutine that runs its stream.
type fakeNode struct {
	f      *Fleet
	i      int
	name   string
	via    int // the index of the node's coordinator in FleetOptions.URLs
	client *coordclient.Client
	hc     *http.Client
	read   atomic.Int64 // bytes read from the coordinator, on every connection

	fullIn    *epoch // the epoch of the last full map
	settledIn *epoch // the epoch this node is counted settled in, or nil
	online    []uint64
	nOnline   int
	lastMark  int64
	stream    *gatedBody // the body of the current stream

	// The peers the node holds to resume its stream, as coordclient's
	// client would (coordclient.MessageHandler): held[j] is the number
	// of node j's revision in f.revs, 0 if not held; valid says they
	// are those of a whole map.
	held   []uint16
	nHeld  int
	digest wire.PeersDigest
	valid  bool
}

// NewFleet makes the nodes' keys and clients. It does no I/O.
func NewFleet(opts FleetOptions) (*Fleet, error) {
	urls := opts.URLs
	if len(urls) == 0 {
		urls = []string{opts.URL}
	}
	if urls[0] == "" || opts.N < 2 {
		return nil, errors.New("scalebench: FleetOptions.URL and N >= 2 are required")
	}
	sources := opts.Sources
	if sources <= 0 {
		sources = (opts.N + 999) / 1000
	}
	sources = min(sources, 250)
	f := &Fleet{
		n:      opts.N,
		nodes:  make([]*fakeNode, opts.N),
		poked:  make(chan struct{}, 1),
		logger: opts.Logger,
		blocks: &coordclient.BlockCache{},

		markSeenVia: make([]atomic.Int64, len(urls)),
		keys:        make([]key.NodePublic, opts.N),
		revs:        make([]revList, opts.N),
	}
	inFlight := opts.FullMapsInFlight
	if inFlight <= 0 {
		inFlight = 128
	}
	f.reading = make(chan struct{}, inFlight)
	if f.logger == nil {
		f.logger = slog.New(slog.DiscardHandler)
	}
	f.cur.Store(&epoch{})
	for i := range f.nodes {
		nd := &fakeNode{f: f, i: i, name: fmt.Sprintf("n%d", i), via: i % len(urls), online: make([]uint64, (opts.N+63)/64), held: make([]uint16, opts.N)}
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%sources))}
		dialer := &net.Dialer{LocalAddr: src}
		nd.hc = &http.Client{Transport: &gatedTransport{nd: nd, base: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dialer.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &countingConn{Conn: c, n: &nd.read}, nil
			},
			MaxIdleConnsPerHost: 2,
			DisableCompression:  true,
		}}}
		priv := key.NewNode()
		c, err := coordclient.New(coordclient.Options{
			ServerURL:   urls[nd.via],
			PrivateKey:  priv,
			DiscoKey:    key.NewDisco().Public(),
			HTTPClient:  nd.hc,
			OnConnState: nd.onConnState,
			// The fleet stands for N nodes on N machines: each checks
			// and opens the blocks of its full map, which one process
			// needs to do once per block (see coordclient.BlockCache).
			BlockCache: f.blocks,
		})
		if err != nil {
			return nil, err
		}
		nd.client = c
		f.nodes[i] = nd
		f.keys[i] = c.NodeKey()
	}
	f.index = newKeyIndex(f.keys)
	f.changer = f.nodes[0].client.NodeKey()
	return f, nil
}

// N is the number of nodes.
func (f *Fleet) N() int { return f.n }

// Register registers every node with authKey, parallel at a time, and
// returns how long it took.
func (f *Fleet) Register(ctx context.Context, authKey string, parallel int) (time.Duration, error) {
	start := time.Now()
	work := make(chan *fakeNode)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Go(func() {
			for nd := range work {
				if _, err := nd.client.Register(ctx, coordclient.RegisterParams{AuthKey: authKey, Hostname: nd.name, OS: "linux"}); err != nil {
					select {
					case errc <- fmt.Errorf("scalebench: register %s: %w", nd.name, err):
					default:
					}
				}
			}
		})
	}
	func() {
		defer close(work)
		for _, nd := range f.nodes {
			select {
			case work <- nd:
			case err := <-errc:
				errc <- err
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errc:
		return 0, err
	default:
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("scalebench: register: %w", ctx.Err())
	}
	return time.Since(start), nil
}

// Stream opens every node's map stream at once; each reconnects as a
// real node does (coordclient's backoff) until Close.
func (f *Fleet) Stream() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	for _, nd := range f.nodes {
		f.wg.Go(func() {
			err := nd.client.RunScanned(ctx, nd)
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("scalebench: %s: %w", nd.name, err)
				f.runErr.CompareAndSwap(nil, &err)
				f.poke()
			}
		})
	}
}

// Close ends the streams and waits for them.
func (f *Fleet) Close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	for _, nd := range f.nodes {
		nd.hc.CloseIdleConnections()
	}
}

// NextEpoch starts counting full maps and settled nodes afresh, for the
// streams that follow a restart of the coordinator.
func (f *Fleet) NextEpoch() {
	f.cur.Store(&epoch{})
	f.poke()
}

// WaitFullMaps waits until every node's stream has delivered a full map
// in the current epoch, each with every other node as a peer.
func (f *Fleet) WaitFullMaps(ctx context.Context) error {
	ep := f.cur.Load()
	if err := f.waitFor(ctx, "full maps", func() int64 { return ep.full.Load() }, int64(f.n)); err != nil {
		return err
	}
	if n := f.badFulls.Load(); n > 0 {
		return fmt.Errorf("scalebench: %d full maps lacked peers, such as %s", n, *f.badFull.Load())
	}
	return nil
}

// Resumed is how many nodes' first full map of the current epoch resumed
// the peers they held (after a restart: their digest matched).
func (f *Fleet) Resumed() int { return int(f.cur.Load().resumed.Load()) }

// WaitSettled waits until every node has a full map of the current epoch
// and sees all its peers online.
func (f *Fleet) WaitSettled(ctx context.Context) error {
	ep := f.cur.Load()
	return f.waitFor(ctx, "nodes that see every peer online", func() int64 { return ep.settled.Load() }, int64(f.n))
}

// Change gives node 0 a new endpoint (port) and waits until every other
// node's stream has delivered it. It returns the time from the change
// (SetEndpoints, which sends it after coordclient's short coalescing
// delay) until the last node had it, and the bytes each other node read
// from the coordinator in that time, on average. port must differ from
// the last change's.
func (f *Fleet) Change(ctx context.Context, port uint16) (time.Duration, float64, error) {
	before := f.otherBytes()
	f.markSeen.Store(0)
	f.mark.Store(int64(port))
	start := time.Now()
	f.nodes[0].client.SetEndpoints([]netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port)}, 0)
	err := f.waitFor(ctx, "nodes that saw the change", func() int64 { return f.markSeen.Load() }, int64(f.n-1))
	took := time.Since(start)
	f.mark.Store(0)
	if err != nil {
		return 0, 0, err
	}
	return took, float64(f.otherBytes()-before) / float64(f.n-1), nil
}

// Bytes is what every node has read from the coordinator so far.
func (f *Fleet) Bytes() int64 {
	return f.nodes[0].read.Load() + f.otherBytes()
}

// otherBytes is what every node but node 0 has read so far.
func (f *Fleet) otherBytes() int64 {
	var sum int64
	for _, nd := range f.nodes[1:] {
		sum += nd.read.Load()
	}
	return sum
}

func (f *Fleet) poke() {
	select {
	case f.poked <- struct{}{}:
	default:
	}
}

// waitFor waits until count() reaches want, a node's stream fails for
// good, or ctx is done.
func (f *Fleet) waitFor(ctx context.Context, what string, count func() int64, want int64) error {
	return f.wait(ctx, what, count, want, nil)
}

// wait is waitFor that also checks whenever tick fires (nil: never).
func (f *Fleet) wait(ctx context.Context, what string, count func() int64, want int64, tick <-chan time.Time) error {
	progress := time.NewTicker(progressEvery)
	defer progress.Stop()
	start := time.Now()
	for {
		if p := f.runErr.Load(); p != nil {
			return *p
		}
		got := count()
		if got >= want {
			return nil
		}
		select {
		case <-f.poked:
		case <-tick:
		case <-progress.C:
			f.logger.Info("waiting", "for", what, "have", got, "want", want, "since", time.Since(start).Round(time.Millisecond))
		case <-ctx.Done():
			return fmt.Errorf("scalebench: %s: %d of %d: %w", what, count(), want, ctx.Err())
		}
	}
}

// onConnState runs on the node's stream goroutine.
func (nd *fakeNode) onConnState(connected bool) {
	if !connected {
		nd.resettle(false)
	}
}

// Digest is the digest of the peers held (coordclient.MessageHandler).
func (nd *fakeNode) Digest() (wire.PeersDigest, bool) { return nd.digest, nd.valid }

// Forget drops the peers held (coordclient.MessageHandler).
func (nd *fakeNode) Forget() {
	clear(nd.held)
	nd.nHeld, nd.digest, nd.valid = 0, wire.PeersDigest{}, false
}

// hold holds node j at revision rev, or, with rev 0 and drop, no longer.
func (nd *fakeNode) hold(j int, rev uint64, drop bool) error {
	f := nd.f
	if old := nd.held[j]; old != 0 {
		nd.digest.Count--
		nd.digest.Sum.Sub(*f.revHash(j, old))
		nd.held[j] = 0
		nd.nHeld--
	}
	if drop {
		return nil
	}
	id, h, err := f.revID(j, rev)
	if err != nil {
		return err
	}
	nd.held[j] = id
	nd.nHeld++
	nd.digest.Count++
	nd.digest.Sum.Add(*h)
	return nil
}

// Message takes one whole message of the node's stream
// (coordclient.MessageHandler). It holds the peers as coordclient's
// client does for RunResponses (a full map replaces them, PeersChanged
// and PeersRemoved change them, a resumed map keeps them), scanning each
// binary peer record for its key, revision and online flag alone, and
// keeps the online state of every peer. A first message must hold every
// other node as a peer: badFulls counts those that do not.
func (nd *fakeNode) Message(frames []*wire.ScannedFrame, first bool) error {
	f := nd.f
	head := frames[0].Head
	hasPeers := false
	for _, fr := range frames {
		hasPeers = hasPeers || fr.List == wire.ListPeers
	}
	if head.PeersKept {
		if !first || !nd.valid || hasPeers {
			nd.Forget()
			return errors.New("map message keeps peers the node did not offer")
		}
		// Every peer held, online but for PeersOffline.
		clear(nd.online)
		nd.nOnline = 0
		for j, id := range nd.held {
			if id != 0 {
				nd.setOnline(j, true)
			}
		}
		for _, k := range head.PeersOffline {
			nd.setPeer(k, false)
		}
	} else if hasPeers || first {
		nd.Forget()
		nd.valid = true
		clear(nd.online)
		nd.nOnline = 0
	}
	unknown := 0
	// The lists in the order coordclient applies a joined message:
	// Peers, then PeersChanged, then PeersRemoved, then PeersOnline.
	for _, list := range []wire.PeerList{wire.ListPeers, wire.ListPeersChanged} {
		for _, fr := range frames {
			if fr.List != list {
				continue
			}
			err := fr.Peers(func(p wire.PeerRef) error {
				j, ok := f.index.find(p.Key)
				if !ok || j == nd.i {
					unknown++
					return nil
				}
				f.learnID(p.ID, j)
				if nd.valid {
					if err := nd.hold(j, p.Rev, false); err != nil {
						return err
					}
				}
				nd.setOnline(j, p.Online)
				if list == wire.ListPeersChanged && p.Key == f.changer {
					return nd.checkMark(p)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	for _, fr := range frames {
		for _, k := range fr.Head.PeersRemoved {
			if j, ok := f.index.find(k); ok {
				if nd.valid {
					nd.hold(j, 0, true)
				}
				nd.setOnline(j, false)
			}
		}
	}
	for _, fr := range frames {
		fr.Online(nd.setPeer)
		fr.OnlineByID(func(id wire.NodeID, on bool) {
			if j := f.byID(id); j >= 0 && j != nd.i {
				nd.setOnline(j, on)
			}
		})
	}
	if first {
		if nd.stream != nil {
			nd.stream.release()
		}
		ep := f.cur.Load()
		if nd.nHeld != f.n-1 || unknown > 0 {
			msg := fmt.Sprintf("%s: %d peers of the fleet, %d others, want %d of the fleet", nd.name, nd.nHeld, unknown, f.n-1)
			f.badFull.CompareAndSwap(nil, &msg)
			f.badFulls.Add(1)
		}
		if nd.fullIn != ep {
			nd.fullIn = ep
			ep.full.Add(1)
			if head.PeersKept {
				ep.resumed.Add(1)
			}
			f.poke()
		}
	}
	nd.resettle(true)
	return nil
}

// checkMark counts the change in flight (Fleet.Change) as seen if the
// changer's record p has its endpoint.
func (nd *fakeNode) checkMark(p wire.PeerRef) error {
	f := nd.f
	mark := f.mark.Load()
	if mark == 0 || nd.lastMark == mark {
		return nil
	}
	n, err := p.Parse()
	if err != nil {
		return err
	}
	for _, ep := range n.Endpoints {
		if int64(ep.Port()) == mark {
			nd.lastMark = mark
			f.markSeen.Add(1)
			f.markSeenVia[nd.via].Add(1)
			f.poke()
			break
		}
	}
	return nil
}

// setPeer records peer k's online state.
func (nd *fakeNode) setPeer(k key.NodePublic, on bool) {
	if i, ok := nd.f.index.find(k); ok {
		nd.setOnline(i, on)
	}
}

// setOnline records node i's online state.
func (nd *fakeNode) setOnline(i int, on bool) {
	w, bit := i/64, uint64(1)<<(i%64)
	was := nd.online[w]&bit != 0
	switch {
	case on && !was:
		nd.online[w] |= bit
		nd.nOnline++
	case !on && was:
		nd.online[w] &^= bit
		nd.nOnline--
	}
}

// resettle moves the node in or out of its epoch's settled count;
// streaming false means its stream just ended.
func (nd *fakeNode) resettle(streaming bool) {
	f := nd.f
	settled := streaming && nd.fullIn == f.cur.Load() && nd.nOnline == f.n-1
	if nd.settledIn != nil && (!settled || nd.settledIn != nd.fullIn) {
		nd.settledIn.settled.Add(-1)
		nd.settledIn = nil
		f.poke()
	}
	if settled && nd.settledIn == nil {
		nd.settledIn = nd.fullIn
		nd.settledIn.settled.Add(1)
		f.poke()
	}
}

// gatedTransport makes a node's map requests (wire.PathMap) wait for one
// of the fleet's reading slots before they are sent, and hands the map
// streams among the answers (those that carry wire.HeaderKeepAlive) to a
// gatedBody, which gives the slot back once the full map is read;
// other answers give it back at once. RoundTrip runs on the goroutine
// that makes the request: for a stream, the node's stream goroutine.
type gatedTransport struct {
	nd   *fakeNode
	base *http.Transport
}

func (t *gatedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path != wire.PathMap {
		return t.base.RoundTrip(req)
	}
	f := t.nd.f
	select {
	case f.reading <- struct{}{}:
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.Header.Get(wire.HeaderKeepAlive) == "" {
		<-f.reading
		return resp, err
	}
	g := &gatedBody{ReadCloser: resp.Body, f: f, held: true}
	t.nd.stream = g
	resp.Body = g
	return resp, nil
}

func (t *gatedTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// gatedBody is a map stream's body, holding a reading slot until release
// (the full map read) or Close gives it back. Only the stream's
// goroutine uses it.
type gatedBody struct {
	io.ReadCloser
	f    *Fleet
	held bool
}

func (g *gatedBody) release() {
	if g.held {
		<-g.f.reading
		g.held = false
	}
}

func (g *gatedBody) Close() error {
	g.release()
	return g.ReadCloser.Close()
}

// countingConn counts the bytes read from it.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}
