package coordinator_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// faultyStore is a store on PostgreSQL whose feed fails where a test
// says, as a database that drops a connection or times out would.
type faultyStore struct {
	*sqlstore.Store

	mu sync.Mutex
	// listenFailed, if set, is called (and cleared) when the listener
	// next breaks, before it connects again.
	listenFailed func()
	// resyncFails is how many resyncs from now on fail.
	resyncFails int
	// offlineFails is how many writes of stream states with a node going
	// offline fail.
	offlineFails int
	// beatsFail makes every heartbeat fail while set.
	beatsFail bool
	// wroteOnline, if set, gets the ID of each node written online.
	wroteOnline chan wire.NodeID
	// nodeReadsFail and policyReadsFail are how many reads of nodes by
	// ID, and of the policy setting, from now on fail.
	nodeReadsFail, policyReadsFail int
	// onlineHang, if set, holds every write of nodes going online until
	// it is closed, as a database too loaded to answer; onlineHung gets
	// a value as each such write starts.
	onlineHang chan struct{}
	onlineHung chan struct{}
	// beaten, if set, gets a value after each heartbeat that succeeded.
	beaten chan struct{}
	// readByID counts the reads of each node by ID (NodesByID).
	readByID map[wire.NodeID]int
}

func (f *faultyStore) NodesByID(ctx context.Context, ids []wire.NodeID) ([]*coordinator.NodeRecord, map[wire.NodeID]coordinator.Presence, error) {
	f.mu.Lock()
	if f.readByID == nil {
		f.readByID = make(map[wire.NodeID]int)
	}
	for _, id := range ids {
		f.readByID[id]++
	}
	f.mu.Unlock()
	if f.take(&f.nodeReadsFail) {
		return nil, nil, errInjected
	}
	return f.Store.NodesByID(ctx, ids)
}

// reads returns how many times node id was read by ID.
func (f *faultyStore) reads(id wire.NodeID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readByID[id]
}

func (f *faultyStore) Setting(ctx context.Context, name string) ([]byte, error) {
	if name == "policy_hujson" && f.take(&f.policyReadsFail) {
		return nil, errInjected
	}
	return f.Store.Setting(ctx, name)
}

// take reports whether a failure is left in *n, and takes it.
func (f *faultyStore) take(n *int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *n > 0 {
		*n--
		return true
	}
	return false
}

var errInjected = errors.New("injected failure")

func (f *faultyStore) ListenNodes(ctx context.Context, resync func(context.Context) error, changed func(context.Context, []coordinator.Change) error, failed func(error)) error {
	return f.Store.ListenNodes(ctx, func(ctx context.Context) error {
		f.mu.Lock()
		fail := f.resyncFails > 0
		if fail {
			f.resyncFails--
		}
		f.mu.Unlock()
		if fail {
			return errInjected
		}
		return resync(ctx)
	}, changed, func(err error) {
		f.mu.Lock()
		hook := f.listenFailed
		f.listenFailed = nil
		f.mu.Unlock()
		if hook != nil {
			hook()
		}
		failed(err)
	})
}

func (f *faultyStore) SetStreamStates(ctx context.Context, states []coordinator.StreamState) error {
	var online, offline bool
	for _, st := range states {
		online = online || st.Online
		offline = offline || !st.Online
	}
	f.mu.Lock()
	fail := offline && f.offlineFails > 0
	if fail {
		f.offlineFails--
	}
	f.mu.Unlock()
	if fail {
		return errInjected
	}
	f.mu.Lock()
	hang, hung := f.onlineHang, f.onlineHung
	f.mu.Unlock()
	if online && hang != nil {
		select {
		case hung <- struct{}{}:
		default:
		}
		<-hang
	}
	err := f.Store.SetStreamStates(ctx, states)
	f.mu.Lock()
	ch := f.wroteOnline
	f.mu.Unlock()
	if err == nil && ch != nil {
		for _, st := range states {
			if st.Online {
				select {
				case ch <- st.ID:
				default:
				}
			}
		}
	}
	return err
}

func (f *faultyStore) Heartbeat(ctx context.Context) ([]wire.NodeID, bool, error) {
	f.mu.Lock()
	fail := f.beatsFail
	f.mu.Unlock()
	if fail {
		return nil, false, errInjected
	}
	changed, missing, err := f.Store.Heartbeat(ctx)
	f.mu.Lock()
	ch := f.beaten
	f.mu.Unlock()
	if err == nil && ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return changed, missing, err
}

func (f *faultyStore) set(mod func(f *faultyStore)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mod(f)
}

// startFaulty starts a coordinator on dsn whose store is a faultyStore,
// set up by init before the coordinator starts.
func startFaulty(t *testing.T, dsn string, priv key.MachinePrivate, init func(*faultyStore)) (*coord, *faultyStore) {
	t.Helper()
	var fs *faultyStore
	c := startCoordWith(t, dsn, priv, func(o *coordinator.Options) {
		fs = &faultyStore{Store: o.Store.(*sqlstore.Store)}
		if init != nil {
			init(fs)
		}
		o.Store = fs
	})
	return c, fs
}

// onlineNamed reports whether nm has a peer name that is online.
func onlineNamed(name string, online bool) func(*wire.NetMap) bool {
	return func(nm *wire.NetMap) bool {
		p := peerNamed(nm, name)
		return p != nil && p.Online == online
	}
}

// TestFeedFaults: the fan-out between coordinators on one PostgreSQL
// survives the store failing where a database can: a listener that
// breaks and whose resync fails, a stream state write that fails, and
// heartbeats that fail.
func TestFeedFaults(t *testing.T) {
	pg := pgtest.New(t)
	priv := key.NewMachine()
	t.Run("ResyncFails", func(t *testing.T) { resyncFails(t, pg.NewDatabase(t), priv) })
	t.Run("OfflineWriteFails", func(t *testing.T) { offlineWriteFails(t, pg.NewDatabase(t), priv) })
	t.Run("FirstBeatsFail", func(t *testing.T) { firstBeatsFail(t, pg.NewDatabase(t), priv) })
	t.Run("ApplyReadsFail", func(t *testing.T) { applyReadsFail(t, pg.NewDatabase(t), priv) })
	t.Run("OnlineWritesHang", func(t *testing.T) { onlineWritesHang(t, pg.NewDatabase(t), priv) })
}

// onlineWritesHang: a coordinator whose stream state writes hang (a
// database too loaded to answer them in time) still beats, so the other
// coordinators do not take its nodes for unknown. Before, it beat between
// those writes, which with thousands of nodes on a loaded machine held
// its beats back beyond the stale time.
func onlineWritesHang(t *testing.T, dsn string, priv key.MachinePrivate) {
	hang, hung, beaten := make(chan struct{}), make(chan struct{}, 1), make(chan struct{}, 1)
	ca, fa := startFaulty(t, dsn, priv, func(f *faultyStore) {
		f.onlineHang, f.onlineHung = hang, hung
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(hang)
		}
	}
	t.Cleanup(release) // before ca stops (cleanups run last first)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, ca.URL)
	alpha := a.register(t, ak, "alpha").Node.ID
	watch(t, a)
	select {
	case <-hung:
	case <-time.After(fanoutWait):
		t.Fatal("alpha's coordinator did not write its stream state")
	}
	fa.set(func(f *faultyStore) { f.beaten = beaten })
	for i := range 2 {
		select {
		case <-beaten:
		case <-time.After(fanoutWait):
			t.Fatalf("%d heartbeats in %v while a stream state write hangs, want 2", i, fanoutWait)
		}
	}
	release()
	waitOnlineRow(t, dsn, alpha, true)
}

// applyReadsFail: a change another coordinator made reaches a
// coordinator whose first read of it fails (a query error on a pool
// connection while its listener stays up): before, a removed node stayed
// in its members and maps for good, and a policy was never enforced.
func applyReadsFail(t *testing.T, dsn string, priv key.MachinePrivate) {
	ca, cb, fb, wb := alphaBravo(t, dsn, priv)

	fb.set(func(f *faultyStore) { f.policyReadsFail = 1 })
	if err := ca.Server.SetPolicy(t.Context(), []byte(`{"acls":[]}`)); err != nil {
		t.Fatal(err)
	}
	wb.waitFor("bravo loses alpha to a policy whose first read failed", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") == nil })
	if err := ca.Server.SetPolicy(t.Context(), []byte(`{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}`)); err != nil {
		t.Fatal(err)
	}
	wb.waitFor("bravo sees alpha again", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })

	fb.set(func(f *faultyStore) { f.nodeReadsFail = 1 })
	if err := ca.Server.RemoveNode(t.Context(), "alpha"); err != nil {
		t.Fatal(err)
	}
	wb.waitFor("bravo loses alpha, removed, whose first read failed", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") == nil })
	if got, err := cb.Server.Nodes(t.Context()); err != nil || slices.ContainsFunc(got, func(n *wire.Node) bool { return n.Name == "alpha" }) {
		t.Errorf("the other coordinator still lists the removed alpha (%v)", err)
	}
	for _, n := range []*int{&fb.nodeReadsFail, &fb.policyReadsFail} {
		if fb.take(n) {
			t.Errorf("an injected read failure was never taken")
		}
	}
}

// alphaBravo starts coordinator ca on dsn with node alpha and the
// faulty coordinator cb with node bravo, whose netmaps wb watches, and
// waits until bravo sees alpha.
func alphaBravo(t *testing.T, dsn string, priv key.MachinePrivate) (ca, cb *coord, fb *faultyStore, wb *watcher) {
	ca = startCoordOn(t, dsn, priv)
	cb, fb = startFaulty(t, dsn, priv, nil)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, ca.URL), newNode(t, cb.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "bravo")
	wb = watch(t, b)
	wb.waitFor("bravo sees alpha", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	return ca, cb, fb, wb
}

// resyncFails: a change made while a coordinator's listener
// was disconnected reaches it even when its first resync after the
// reconnection fails: the listener connects and resyncs again.
func resyncFails(t *testing.T, dsn string, priv key.MachinePrivate) {
	ca, _, fb, wb := alphaBravo(t, dsn, priv)

	renamed := make(chan error, 1)
	fb.set(func(f *faultyStore) {
		// While cb's listener is down (before it connects again), alpha
		// is renamed on ca; cb hears of it only by a resync, whose
		// first try fails.
		f.listenFailed = func() {
			_, err := ca.Server.RenameNode(context.Background(), "alpha", "alpha-renamed")
			renamed <- err
		}
		f.resyncFails = 1
	})
	terminateListeners(t, dsn)
	select {
	case err := <-renamed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(fanoutWait):
		t.Fatal("the listener did not break after its backend was terminated")
	}
	wb.waitFor("bravo sees the rename made while its coordinator's listener was down", fanoutWait, func(nm *wire.NetMap) bool {
		return peerNamed(nm, "alpha-renamed") != nil && peerNamed(nm, "alpha") == nil
	})
	fb.mu.Lock()
	left := fb.resyncFails
	fb.mu.Unlock()
	if left != 0 {
		t.Errorf("%d injected resync failures left, want 0", left)
	}
}

// terminateListeners ends the connections of every coordinator's
// listener on dsn's database, as a restart or failover would.
func terminateListeners(t *testing.T, dsn string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'beam listener'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no listener connection to terminate")
	}
}

// offlineWriteFails: a node whose "offline" write failed once is
// shown offline by the other coordinators all the same, as the write is
// retried.
func offlineWriteFails(t *testing.T, dsn string, priv key.MachinePrivate) {
	ca, _ := startFaulty(t, dsn, priv, func(f *faultyStore) { f.offlineFails = 1 })
	cb := startCoordOn(t, dsn, priv)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, ca.URL), newNode(t, cb.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "bravo")
	wa, wb := watch(t, a), watch(t, b)
	wb.waitFor("bravo sees alpha online", fanoutWait, onlineNamed("alpha", true))
	wa.stop()
	wb.waitFor("bravo sees alpha offline, its first offline write failed", fanoutWait, onlineNamed("alpha", false))
}

// firstBeatsFail: a coordinator whose first heartbeats failed has its
// nodes' stream states dropped by another coordinator (with no beat on
// record, it is a dead coordinator for the other); once it beats, it
// writes them again and its nodes are online again for the other.
//
// Its start recorded one beat when it claimed the replicas' secrets: its
// nodes are then unknown to the others once that beat is stale, and
// offline after the unknown timeout; the other coordinator's times are
// short here.
func firstBeatsFail(t *testing.T, dsn string, priv key.MachinePrivate) {
	wrote := make(chan wire.NodeID, 10)
	ca, fa := startFaulty(t, dsn, priv, func(f *faultyStore) {
		f.beatsFail = true
		f.wroteOnline = wrote
	})
	cb := &coord{t: t, dsn: dsn, priv: priv, addr: "127.0.0.1:0",
		storeOpts: sqlstore.Options{StaleAfter: 6 * time.Second, UnknownTimeout: 5 * time.Second}}
	cb.start()
	t.Cleanup(cb.stop)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, ca.URL), newNode(t, cb.URL)
	alpha := a.register(t, ak, "alpha").Node.ID
	b.register(t, ak, "bravo")
	watch(t, a)
	wb := watch(t, b)
	select {
	case id := <-wrote:
		if id != alpha {
			t.Fatalf("online write for node %d, want alpha's (%d)", id, alpha)
		}
	case <-time.After(fanoutWait):
		t.Fatal("alpha's coordinator did not record its stream")
	}
	waitOnlineRow(t, dsn, alpha, false)
	wb.waitFor("bravo sees alpha offline: its coordinator beat only at its start", fanoutWait, onlineNamed("alpha", false))
	fa.set(func(f *faultyStore) { f.beatsFail = false })
	wb.waitFor("bravo sees alpha online once its coordinator beats", fanoutWait, onlineNamed("alpha", true))
}

// waitOnlineRow waits until the node id has a stream state (want) or
// none in dsn's database.
func waitOnlineRow(t *testing.T, dsn string, id wire.NodeID, want bool) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(fanoutWait)
	for {
		var has bool
		if err := conn.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM node_online WHERE node_id = $1)`, int64(id)).Scan(&has); err != nil {
			t.Fatal(err)
		}
		if has == want {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("node %d's stream state: present %v after %v, want %v", id, has, fanoutWait, want)
		}
	}
}

// TestStreamStateNotReread: a node that starts streaming from one
// coordinator shows online on another, which takes that from the
// notification and reads nothing; before, each stream starting cost a
// read of the node's row (and the database a query) on every other
// coordinator. Its stream ending writes its last seen time, which the
// other reads with the node, offline.
func TestStreamStateNotReread(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	ca := startCoordOn(t, dsn, priv)
	cb, fb := startFaulty(t, dsn, priv, nil)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, ca.URL), newNode(t, cb.URL)
	alpha := a.register(t, ak, "alpha").Node.ID
	b.register(t, ak, "bravo")
	wb := watch(t, b)
	alphaIs := func(online bool) func(*wire.NetMap) bool {
		return func(nm *wire.NetMap) bool {
			p := peerNamed(nm, "alpha")
			return p != nil && p.Online == online
		}
	}
	wb.waitFor("bravo sees alpha offline", fanoutWait, alphaIs(false))
	// Charlie, registered after alpha, reaches bravo's coordinator
	// through a notification after alpha's, if it got one (it may have
	// read alpha as bravo's registration clashed with it).
	newNode(t, ca.URL).register(t, ak, "charlie")
	wb.waitFor("bravo sees charlie", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "charlie") != nil })
	before := fb.reads(alpha)
	wa := watch(t, a)
	wb.waitFor("bravo sees alpha online", fanoutWait, alphaIs(true))
	if n := fb.reads(alpha) - before; n != 0 {
		t.Errorf("bravo's coordinator read alpha %d times for its stream starting, want 0", n)
	}
	wa.stop()
	wb.waitFor("bravo sees alpha offline again", fanoutWait, alphaIs(false))
}
