package coordinator_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// rawStream is a map stream read frame by frame, without coordclient's
// reassembly, so tests see what the coordinator puts on the wire.
type rawStream struct {
	t      testing.TB
	priv   key.NodePrivate
	mk     key.MachinePublic
	body   io.ReadCloser
	cancel context.CancelFunc
	// binary counts the frames read that were binary map frames
	// (wire.BinaryMapFrame), frames all frames but keepalives.
	binary, frames int
	// version is the protocol version the stream announced; ids the keys
	// of the peers it was sent, by ID, to resolve online states by ID
	// (wire.MapResponse.PeersOnlineByID) as coordclient does.
	version int
	ids     map[wire.NodeID]key.NodePublic
}

// openRawStream opens the map stream of the registered node priv,
// announcing protocol version.
func openRawStream(t testing.TB, c *coord, priv key.NodePrivate, version int) *rawStream {
	t.Helper()
	mk := c.priv.Public()
	clear, err := json.Marshal(&wire.MapRequest{Version: version, NodeKey: priv.Public(), Stream: true, Epoch: c.epoch(t), Timestamp: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(mk, clear)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+"/machine/map", bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open map stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("open map stream: status %s", resp.Status)
	}
	rs := &rawStream{t: t, priv: priv, mk: mk, body: resp.Body, cancel: cancel, version: version}
	t.Cleanup(rs.close)
	return rs
}

func (rs *rawStream) close() {
	rs.cancel()
	rs.body.Close()
}

// next returns the next message that is not a keepalive, its frames
// joined if it was split (wire.MapResponse.More), and its size on the
// wire. Its online states by ID are resolved into PeersOnline with the
// peers the stream was sent.
func (rs *rawStream) next() (*wire.MapResponse, int) {
	rs.t.Helper()
	mr, size := rs.nextFrame()
	for more := mr.More; more; {
		part, n := rs.nextFrame()
		more = part.More
		mr.Merge(part)
		size += n
	}
	if rs.ids == nil {
		rs.ids = make(map[wire.NodeID]key.NodePublic)
	}
	for _, p := range append(mr.Peers, mr.PeersChanged...) {
		rs.ids[p.ID] = p.Key
	}
	for id, on := range mr.PeersOnlineByID {
		k, ok := rs.ids[id]
		if !ok {
			rs.t.Fatalf("online state of ID %d, a peer not sent", id)
		}
		if mr.PeersOnline == nil {
			mr.PeersOnline = make(map[key.NodePublic]bool)
		}
		mr.PeersOnline[k] = on
	}
	mr.PeersOnlineByID = nil
	return mr, size
}

// checkEncoding checks that the binary map frame p is encoded as nodes
// of rs.version take it: no online states by ID, and every record as
// wire.AppendPeerRecord makes it, before wire.CompactFramesVersion; the
// compact records after (but for peers of another DNS suffix than the
// frame's).
func (rs *rawStream) checkEncoding(p []byte) {
	rs.t.Helper()
	f, err := wire.ScanMapFrame(p)
	if err != nil {
		rs.t.Fatalf("scan frame: %v", err)
	}
	compact := rs.version >= wire.CompactFramesVersion
	if !compact {
		f.OnlineByID(func(id wire.NodeID, _ bool) {
			rs.t.Errorf("version %d stream: online state by ID %d", rs.version, id)
		})
	}
	err = f.Peers(func(ref wire.PeerRef) error {
		n, err := ref.Parse()
		if err != nil {
			return err
		}
		want := wire.AppendPeerRecord(nil, n)
		if sfx := wire.PeerDNSSuffix(n); compact && (sfx == "" || sfx == f.Head.PeerDNSSuffix) {
			want = wire.AppendPeerRecordCompact(nil, n, sfx)
		}
		if got := binary.AppendUvarint(nil, uint64(len(ref.Record))); !bytes.Equal(append(got, ref.Record...), want) {
			rs.t.Errorf("version %d stream: record of %s is\n%x\nwant\n%x", rs.version, n.Name, append(got, ref.Record...), want)
		}
		return nil
	})
	if err != nil {
		rs.t.Fatalf("scan peers: %v", err)
	}
}

// nextFrame returns the next frame that is not a keepalive, and its size
// on the wire.
func (rs *rawStream) nextFrame() (*wire.MapResponse, int) {
	rs.t.Helper()
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(rs.body, hdr[:]); err != nil {
			rs.t.Fatalf("read frame: %v", err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || n > wire.MaxFrameSize {
			rs.t.Fatalf("frame size %d out of range", n)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(rs.body, buf); err != nil {
			rs.t.Fatalf("read frame: %v", err)
		}
		clear, ok := rs.priv.OpenFrom(rs.mk, buf)
		if !ok {
			rs.t.Fatal("frame does not open")
		}
		mr, err := wire.DecodeMapFrame(clear)
		if err != nil {
			rs.t.Fatalf("decode frame: %v", err)
		}
		if mr.KeepAlive {
			continue
		}
		rs.frames++
		if clear[0] == wire.BinaryMapFrame {
			rs.binary++
			rs.checkEncoding(clear)
		}
		return mr, 4 + int(n)
	}
}

// registerMany registers n nodes named prefix0, prefix1, ... and returns
// their keys.
func registerMany(t testing.TB, c *coord, ak, prefix string, n int) []key.NodePrivate {
	t.Helper()
	privs := make([]key.NodePrivate, n)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				nd := newNode(t, c.URL)
				nd.register(t, ak, fmt.Sprintf("%s%d", prefix, i))
				privs[i] = nd.priv
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return privs
}

// TestDeltaBytesIndependentOfN checks that what one change costs a
// streaming node on the wire does not grow with the size of its network:
// a join, a peer coming online, its endpoints and its going offline cost
// the same few hundred bytes among 100 nodes and among 2,000.
func TestDeltaBytesIndependentOfN(t *testing.T) {
	type costs struct{ join, online, endpoints, offline int }
	measure := func(t *testing.T, n int) costs {
		c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
		ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
		registerMany(t, c, ak, "n", n)
		obs := newNode(t, c.URL)
		obs.register(t, ak, "observer")
		rs := openRawStream(t, c, obs.priv, wire.CapabilityVersion)
		var peers int
		for {
			mr, _ := rs.next()
			peers += len(mr.Peers)
			if !mr.More {
				break
			}
		}
		if peers != n {
			t.Fatalf("full map has %d peers, want %d", peers, n)
		}

		var got costs
		newcomer := newNode(t, c.URL)
		newcomer.register(t, ak, "newcomer")
		mr, size := rs.next()
		if len(mr.PeersChanged) != 1 || mr.PeersChanged[0].Name != "newcomer" {
			t.Fatalf("join delta = %+v, want the newcomer only", mr)
		}
		got.join = size

		// The newcomer streams (online), reports endpoints, and stops (offline).
		ctx, cancel := context.WithCancel(t.Context())
		runDone := make(chan struct{})
		go func() {
			defer close(runDone)
			newcomer.Run(ctx, func(*wire.NetMap) {})
		}()
		defer func() { cancel(); <-runDone }()
		mr, got.online = rs.next()
		if !mr.PeersOnline[newcomer.NodeKey()] || len(mr.PeersChanged)+len(mr.PeersRemoved) > 0 {
			t.Fatalf("online delta = %+v, want the newcomer online only", mr)
		}
		eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641")}
		newcomer.SetEndpoints(eps, 1)
		mr, got.endpoints = rs.next()
		if len(mr.PeersChanged) != 1 || len(mr.PeersChanged[0].Endpoints) != 1 {
			t.Fatalf("endpoints delta = %+v, want the newcomer with its endpoint", mr)
		}
		cancel()
		<-runDone
		mr, got.offline = rs.next()
		if on, ok := mr.PeersOnline[newcomer.NodeKey()]; !ok || on {
			t.Fatalf("offline delta = %+v, want the newcomer offline", mr)
		}
		return got
	}
	small := measure(t, 100)
	large := measure(t, 2000)
	t.Logf("bytes per change at 100 nodes %+v, at 2000 %+v", small, large)
	// The same messages; only the numbers in them (IDs, addresses) may
	// be a few digits longer.
	const slack = 32
	for _, c := range []struct {
		what         string
		small, large int
	}{{"join", small.join, large.join}, {"endpoints", small.endpoints, large.endpoints}, {"online", small.online, large.online}, {"offline", small.offline, large.offline}} {
		if c.large > c.small+slack {
			t.Errorf("%s delta: %d bytes at 2000 nodes, %d at 100; want no growth", c.what, c.large, c.small)
		}
	}
}

// TestFullMapSplitAcrossFrames checks that a full map larger than a frame
// reaches a node that takes frames in pieces as several frames that join
// into the whole map, and that coordclient hands the node the whole map;
// a node of an older protocol version gets it in one frame.
func TestFullMapSplitAcrossFrames(t *testing.T) {
	defer coordinator.SetFrameSplitAtForTest(4 << 10)()
	const n = 40
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	registerMany(t, c, ak, "peer", n)

	for _, tc := range []struct {
		name       string
		version    int
		wantFrames func(int) bool
	}{
		{"current", wire.CapabilityVersion, func(f int) bool { return f > 1 }},
		{"version 12", 12, func(f int) bool { return f == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nd := newNode(t, c.URL)
			nd.register(t, ak, "reader-"+fmt.Sprint(tc.version))
			rs := openRawStream(t, c, nd.priv, tc.version)
			var whole *wire.MapResponse
			frames := 0
			for {
				mr, size := rs.nextFrame()
				frames++
				if size > 4<<10+64 && tc.version >= 13 {
					t.Errorf("frame %d is %d bytes, want at most the split size and its seal", frames, size)
				}
				if whole == nil {
					whole = mr
				} else {
					whole.Merge(mr)
				}
				if !mr.More {
					break
				}
			}
			if !tc.wantFrames(frames) {
				t.Errorf("full map came in %d frames", frames)
			}
			nm := (*wire.NetMap)(nil).Apply(whole, time.Now())
			if nm.Self == nil || nm.Self.Name != "reader-"+fmt.Sprint(tc.version) || len(nm.Peers) < n || nm.DNS == nil || !whole.PacketFilterSet {
				t.Fatalf("joined map: self %v, %d peers (want at least %d), dns %v, filter set %v", nm.Self, len(nm.Peers), n, nm.DNS, whole.PacketFilterSet)
			}
			for i := range n {
				if peerNamed(nm, fmt.Sprintf("peer%d", i)) == nil {
					t.Fatalf("joined map lacks peer%d", i)
				}
			}
		})
	}

	// coordclient joins the frames before it hands the map over.
	nd := newNode(t, c.URL)
	nd.register(t, ak, "client")
	w := watch(t, nd)
	nm := w.waitFor("full map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	if len(nm.Peers) < n {
		t.Fatalf("coordclient's first netmap has %d peers, want at least %d", len(nm.Peers), n)
	}
}

// TestStreamsConverge opens many streams at once while every node keeps
// changing its endpoints, and checks that every node ends with every
// peer online at its last endpoint: no change is lost to the race
// between a stream catching up and new changes being marked for it.
func TestStreamsConverge(t *testing.T) {
	const n, rounds = 40, 6
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = newNode(t, c.URL)
		nodes[i].register(t, ak, fmt.Sprintf("c%d", i))
	}
	watchers := make([]*watcher, n)
	for i, nd := range nodes {
		watchers[i] = watch(t, nd)
	}
	port := func(i, round int) uint16 { return uint16(20000 + 100*i + round) }
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Go(func() {
			for r := range rounds {
				nd.SetEndpoints([]netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port(i, r))}, 1)
				time.Sleep(time.Duration(10+i%7*5) * time.Millisecond) // changes spread over the streams' batching
			}
		})
	}
	wg.Wait()
	for i, w := range watchers {
		w.waitFor(fmt.Sprintf("c%d sees every peer online at its last endpoint", i), 30*time.Second, func(nm *wire.NetMap) bool {
			if len(nm.Peers) != n-1 {
				return false
			}
			for _, p := range nm.Peers {
				var j int
				fmt.Sscanf(p.Name, "c%d", &j)
				if !p.Online || len(p.Endpoints) != 1 || p.Endpoints[0].Port() != port(j, rounds-1) {
					return false
				}
			}
			return true
		})
	}
}

// TestChangeJustBeforeTakeArrives makes a change at the moment a stream
// is about to take what was marked for it (a mark landing between the
// stream reading the change count and taking its marks was once lost
// for good) and checks that the node still gets it. Renames change
// neither membership nor policy, so the stream takes them as one-peer
// deltas, not full recomputes.
func TestChangeJustBeforeTakeArrives(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "alpha")
	newNode(t, c.URL).register(t, ak, "bravo")
	newNode(t, c.URL).register(t, ak, "charlie")
	wa := watch(t, a)
	wa.waitFor("bravo and charlie", wait, func(nm *wire.NetMap) bool {
		return peerNamed(nm, "bravo") != nil && peerNamed(nm, "charlie") != nil
	})

	// A first rename settles the compiled policy, so the next ones are
	// one-peer changes.
	if _, err := c.Server.RenameNode(context.Background(), "charlie", "charlie-1"); err != nil {
		t.Fatal(err)
	}
	wa.waitFor("charlie-1", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "charlie-1") != nil })

	var once sync.Once
	renamed := make(chan error, 1)
	defer coordinator.SetStreamHookForTest(func(nk key.NodePublic) {
		if nk == a.NodeKey() {
			once.Do(func() {
				_, err := c.Server.RenameNode(context.Background(), "bravo", "bravo-2")
				renamed <- err
			})
		}
	})()
	// Wake alpha's stream with one change; the hook renames bravo just
	// before the stream takes its marks.
	if _, err := c.Server.RenameNode(context.Background(), "charlie-1", "charlie-2"); err != nil {
		t.Fatal(err)
	}
	if err := <-renamed; err != nil {
		t.Fatalf("rename bravo: %v", err)
	}
	wa.waitFor("both renames", wait, func(nm *wire.NetMap) bool {
		return peerNamed(nm, "charlie-2") != nil && peerNamed(nm, "bravo-2") != nil
	})
}

// TestBinaryAndJSONStreams checks that a node of the current version
// (compact binary map frames), one of version 21 (binary map frames as
// they were before compact ones, byte for byte: rawStream.checkEncoding)
// and one of version 15 (JSON) get the same full map, split across
// frames, and the same deltas: a peer joining, coming online and
// changing its endpoints.
func TestBinaryAndJSONStreams(t *testing.T) {
	defer coordinator.SetFrameSplitAtForTest(2 << 10)() // a full map in several frames of compact records too
	const n = 60
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	registerMany(t, c, ak, "peer", n)
	type reader struct {
		name    string
		version int
		binary  bool
		rs      *rawStream
	}
	readers := []*reader{{name: "binary", version: wire.CapabilityVersion, binary: true}, {name: "json", version: 15},
		{name: "binary21", version: wire.CompactFramesVersion - 1, binary: true}}
	privs := make([]key.NodePrivate, len(readers))
	for i, r := range readers {
		nd := newNode(t, c.URL)
		nd.register(t, ak, "reader-"+r.name)
		privs[i] = nd.priv
	}
	for i, r := range readers {
		r.rs = openRawStream(t, c, privs[i], r.version)
	}
	// peersJSON returns nodes as JSON, ordered by name, to compare every
	// field as a node would see it.
	peersJSON := func(t *testing.T, nodes []*wire.Node) string {
		t.Helper()
		nodes = slices.Clone(nodes)
		slices.SortFunc(nodes, func(a, b *wire.Node) int { return strings.Compare(a.Name, b.Name) })
		b, err := json.MarshalIndent(nodes, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Full maps: the same peers, several frames, binary only for the
	// current version.
	var fulls []string
	for _, r := range readers {
		mr, _ := r.rs.next()
		// Every peer and the other readers.
		if len(mr.Peers) != n+len(readers)-1 {
			t.Fatalf("%s: full map has %d peers, want %d", r.name, len(mr.Peers), n+len(readers)-1)
		}
		mr.Peers = slices.DeleteFunc(mr.Peers, func(p *wire.Node) bool { return strings.HasPrefix(p.Name, "reader-") })
		if mr.Self == nil || mr.Self.Name != "reader-"+r.name || mr.DNS == nil || !mr.PacketFilterSet {
			t.Errorf("%s: full map lacks self, DNS or filter: %+v", r.name, mr)
		}
		if r.rs.frames < 3 {
			t.Errorf("%s: full map came in %d frames, want it split", r.name, r.rs.frames)
		}
		if want := map[bool]int{true: r.rs.frames, false: 0}[r.binary]; r.rs.binary != want {
			t.Errorf("%s: %d of %d frames binary, want %d", r.name, r.rs.binary, r.rs.frames, want)
		}
		fulls = append(fulls, peersJSON(t, mr.Peers))
	}
	for i := range fulls {
		if diff := cmp.Diff(fulls[1], fulls[i]); diff != "" {
			t.Errorf("full maps differ (-json +%s):\n%s", readers[i].name, diff)
		}
	}

	// A join, then the newcomer online and its endpoints.
	newcomer := newNode(t, c.URL)
	newcomer.register(t, ak, "newcomer")
	for _, r := range readers {
		mr, _ := r.rs.next()
		for len(mr.PeersChanged) == 0 && len(mr.PeersOnline) > 0 {
			mr, _ = r.rs.next() // the other readers coming online
		}
		if len(mr.PeersChanged) != 1 || mr.PeersChanged[0].Name != "newcomer" {
			t.Fatalf("%s: join delta = %+v, want the newcomer", r.name, mr)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		newcomer.Run(ctx, func(*wire.NetMap) {})
	}()
	defer func() { cancel(); <-runDone }()
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641"), netip.MustParseAddrPort("[2001:db8::7]:41641")}
	newcomer.SetEndpoints(eps, 1)
	var deltas []string
	for _, r := range readers {
		// Changes arrive as the stream batches them: read until the
		// newcomer is online with its endpoints.
		binary0 := r.rs.binary
		var got *wire.Node
		online := false
		for got == nil || !online || len(got.Endpoints) != len(eps) {
			mr, _ := r.rs.next()
			if mr.Peers != nil {
				t.Fatalf("%s: a delta with a full peer list", r.name)
			}
			for _, p := range mr.PeersChanged {
				if p.Name != "newcomer" {
					t.Fatalf("%s: delta changes %s, want only the newcomer", r.name, p.Name)
				}
				got, online = p, p.Online
			}
			if on, ok := mr.PeersOnline[newcomer.NodeKey()]; ok {
				online = on
			}
		}
		if r.binary && r.rs.binary == binary0 {
			t.Errorf("%s: the endpoints delta was not a binary frame", r.name)
		}
		got.Online = online
		deltas = append(deltas, peersJSON(t, []*wire.Node{got}))
	}
	for i := range deltas {
		if diff := cmp.Diff(deltas[1], deltas[i]); diff != "" {
			t.Errorf("deltas differ (-json +%s):\n%s", readers[i].name, diff)
		}
	}
}
