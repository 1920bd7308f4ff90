package coordinator_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// onlineLog runs a node's map stream and records, for every netmap after
// the first, whether peer name was online in it.
type onlineLog struct {
	mu     sync.Mutex
	cond   *sync.Cond
	states map[string][]bool // by peer name, one per netmap
	maps   int
}

func logOnline(t *testing.T, n *node) *onlineLog {
	l := &onlineLog{states: make(map[string][]bool)}
	l.cond = sync.NewCond(&l.mu)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx, func(nm *wire.NetMap) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.maps++
			for _, p := range nm.Peers {
				l.states[p.Name] = append(l.states[p.Name], p.Online)
			}
			l.cond.Broadcast()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// wait waits until the last netmap shows peer name online (or not).
func (l *onlineLog) wait(t *testing.T, name string, online bool, d time.Duration) {
	t.Helper()
	timer := time.AfterFunc(d, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(d)
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if s := l.states[name]; len(s) > 0 && s[len(s)-1] == online {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not online=%v within %v", name, online, d)
		}
		l.cond.Wait()
	}
}

// offlineSince returns in how many of the netmaps from index from on
// peer name was offline.
func (l *onlineLog) offlineSince(name string, from int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, on := range l.states[name][min(from, len(l.states[name])):] {
		if !on {
			n++
		}
	}
	return n
}

func (l *onlineLog) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.states[name])
}

// TestOnlineGraceAcrossRestart checks that nodes streaming when the
// coordinator shuts down stay online for their peers across its restart:
// one that comes back never shows offline, one that does not goes offline
// once the grace is over, not before.
func TestOnlineGraceAcrossRestart(t *testing.T) {
	defer coordinator.SetOnlineGraceForTest(graceForTest)()
	graceAcross(t, "restart", startCoord(t, nil), nil, (*coord).stop)
}

// TestOnlineGraceAcrossRestartPostgres is TestOnlineGraceAcrossRestart
// with the only coordinator on PostgreSQL, where the store keeps the
// stream states: the shutdown leaves them, and records its stop, for the
// next start.
func TestOnlineGraceAcrossRestartPostgres(t *testing.T) {
	defer coordinator.SetOnlineGraceForTest(graceForTest)()
	pg := pgtest.New(t)
	graceAcross(t, "restart", startCoordOn(t, pg.NewDatabase(t), key.NewMachine()), nil, (*coord).stop)
}

// crash stops the coordinator as a crash would: its store gets nothing
// more (closed first), and its connections are cut without trailers.
func (c *coord) crash() {
	c.Store.Close()
	c.hs.Close()
	<-c.done
	c.Server.Close()
	c.hs = nil
}

// TestOnlineGraceAfterCrash checks that after a crash the nodes the
// coordinator last recorded as streaming get the grace too: one that
// comes back (on its own backoff) never shows offline to its peer, one
// that does not goes offline once the grace is over.
func TestOnlineGraceAfterCrash(t *testing.T) {
	defer coordinator.SetOnlineGraceForTest(graceForTest)()
	defer coordinator.SetOnlineRecordEveryForTest(50 * time.Millisecond)()
	// The coordinator records the three as streaming before it crashes.
	recorded := func(t *testing.T, c *coord) {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(30 * time.Second)
		for {
			rec, err := c.Store.Setting(t.Context(), coordinator.OnlineSettingForTest)
			if err == nil && len(rec) == 8+3*8 {
				return
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("no record of 3 streaming nodes within 30 s (last %d bytes, %v)", len(rec), err)
			}
		}
	}
	graceAcross(t, "crash", startCoord(t, nil), recorded, (*coord).crash)
}

// graceForTest is the online grace of the grace tests: the nodes that
// come back do so within 1.5 s.
const graceForTest = 4 * time.Second

// graceAcross streams nodes a, b and gone from coordinator c, waits for
// before (nil: nothing), ends it with end, stops gone for good and starts
// the coordinator again: the admin view shows gone and b online at once,
// gone goes offline for a once the grace is over, not before, and b,
// which comes back, never shows offline to a.
func graceAcross(t *testing.T, what string, c *coord, before func(*testing.T, *coord), end func(*coord)) {
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b, gone := newNode(t, c.URL), newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "a")
	b.register(t, ak, "b")
	gone.register(t, ak, "gone")
	la := logOnline(t, a)
	logOnline(t, b)
	goneCtx, goneCancel := context.WithCancel(t.Context())
	goneDone := make(chan struct{})
	go func() {
		defer close(goneDone)
		gone.Run(goneCtx, func(*wire.NetMap) {})
	}()
	defer func() { goneCancel(); <-goneDone }()
	la.wait(t, "b", true, 30*time.Second)
	la.wait(t, "gone", true, 30*time.Second)
	if before != nil {
		before(t, c)
	}

	from := la.count("b")
	start := time.Now() // the grace may count from the end
	end(c)
	goneCancel() // does not come back
	<-goneDone
	c.start()
	nodes, err := c.Server.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if (n.Name == "gone" || n.Name == "b") && (!n.Online || n.Unknown) {
			t.Errorf("right after the %s the admin view shows %s online=%v unknown=%v, want online", what, n.Name, n.Online, n.Unknown)
		}
	}
	// a is back when its netmaps show b again (a new stream's map).
	la.wait(t, "gone", false, 30*time.Second)
	if took := time.Since(start); took < graceForTest {
		t.Errorf("gone went offline %v after the %s, before the grace of %v ended", took, what, graceForTest)
	}
	nodes, err = c.Server.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "gone" && (n.Online || n.Unknown) {
			t.Errorf("after the grace the admin view shows gone online=%v unknown=%v, want offline", n.Online, n.Unknown)
		}
	}
	if n := la.offlineSince("b", from); n > 0 {
		t.Errorf("b, which came back, showed offline in %d of a's netmaps after the %s", n, what)
	}
	if la.count("b") == from {
		t.Errorf("a had no netmap after the %s", what)
	}
}

// TestOldOnlineRecordKeepsLastSeen: a coordinator started more than
// maxOnlineRecordAge after its shutdown gives no grace, but the nodes that
// streamed at the shutdown were last seen then (the shutdown writes no
// last seen): before, they kept the last seen of their stream's start.
func TestOldOnlineRecordKeepsLastSeen(t *testing.T) {
	var ahead atomic.Int64
	c := startCoord(t, func(o *coordinator.Options) {
		o.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "a")
	b.register(t, ak, "b")
	la := logOnline(t, a)
	logOnline(t, b)
	la.wait(t, "b", true, 30*time.Second)
	lastSeen := func() time.Time {
		t.Helper()
		nodes, err := c.Server.Nodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == "b" {
				return n.LastSeen
			}
		}
		t.Fatal("no node b")
		return time.Time{}
	}
	time.Sleep(1500 * time.Millisecond) // the shutdown comes well after the stream's start
	stopped := time.Now()
	c.stop()
	ahead.Store(int64(11 * time.Minute)) // started 11 minutes later
	c.start()
	if got := lastSeen(); got.Before(stopped.Add(-time.Second)) {
		t.Errorf("b's last seen after a start past the record's age: %v, want about the shutdown (%v)", got, stopped)
	}
	// And it is written to the store.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs, err := c.Store.Nodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var got time.Time
		for _, r := range recs {
			if r.Node.Name == "b" {
				got = r.Node.LastSeen
			}
		}
		if !got.Before(stopped.Add(-time.Second)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's last seen in the store 10 s after the start: %v, want about the shutdown (%v)", got, stopped)
		}
		<-tick.C
	}
}
