package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/wire"
)

// Failover between coordinators, with real processes: replicas of one
// coordinator on one PostgreSQL database, devices given every replica's
// URL.

// replicaOf starts another `beam coordinator` on c's database with a copy
// of c's machine key and tokens, as an operator adds a replica.
func replicaOf(t *testing.T, c *cluster) *cluster {
	t.Helper()
	r := &cluster{t: t, bin: c.bin, dir: t.TempDir(), token: c.token, coordArgs: c.coordArgs}
	r.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	r.url = "http://" + r.addr
	copyCoordinatorKeys(t, filepath.Join(c.dir, "coord"), filepath.Join(r.dir, "coord"))
	r.startCoordinator()
	return r
}

// crashCoordinator kills c's coordinator with SIGKILL: no stream is ended
// cleanly, no state is written.
func (c *cluster) crashCoordinator() {
	c.t.Helper()
	if c.coord == nil {
		c.t.Fatal("no coordinator to crash")
	}
	if err := c.coord.Process.Kill(); err != nil {
		c.t.Fatal(err)
	}
	c.coord.Wait()
	c.coord = nil
}

// upOn joins d with the coordinator URLs urls, in that order.
func (d *device) upOn(urls []string, key string) {
	d.c.t.Helper()
	out, errOut, err := d.c.beam(nil, d.args("up", "--coordinator", strings.Join(urls, ","), "--hostname", d.name, "--authkey", key)...)
	if err != nil {
		d.c.t.Fatalf("beam up %s: %v\n%s%s", d.name, err, out, errOut)
	}
}

// streamingFrom returns the URL d's map stream is on ("" if none).
func (d *device) streamingFrom() string {
	st := d.status()
	if !st.CoordinatorOnline {
		return ""
	}
	return st.CoordinatorStream
}

// echoLoop keeps one TCP connection through `beam nc` from d to host:port
// (an echo server) and sends a line every interval, recording when each
// echo came back; stop ends it and returns the longest time without an
// echo and any error the connection met.
type echoLoop struct {
	mu      sync.Mutex
	last    time.Time
	maxGap  time.Duration
	echoes  int
	err     error
	stopped chan struct{}
	done    chan struct{}
}

func startEchoLoop(t *testing.T, d *device, host string, port int, interval time.Duration) *echoLoop {
	t.Helper()
	cmd := exec.Command(d.c.bin, d.args("nc", host, strconv.Itoa(port))...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &echoLoop{last: time.Now(), stopped: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			now := time.Now()
			l.mu.Lock()
			l.maxGap = max(l.maxGap, now.Sub(l.last))
			l.last = now
			l.echoes++
			l.mu.Unlock()
		}
		l.mu.Lock()
		select {
		case <-l.stopped:
		default:
			if l.err == nil {
				l.err = fmt.Errorf("the connection ended: %v", sc.Err())
			}
		}
		l.mu.Unlock()
	})
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.stopped:
				in.Close()
				return
			case <-tick.C:
			}
			if _, err := io.WriteString(in, "echo "+strconv.Itoa(i)+"\n"); err != nil {
				l.mu.Lock()
				if l.err == nil {
					l.err = fmt.Errorf("write: %w", err)
				}
				l.mu.Unlock()
				return
			}
		}
	})
	go func() {
		wg.Wait()
		cmd.Process.Kill()
		cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

// stop ends the loop and returns the longest gap between echoes (the
// time since the last one included), how many came back, and the error.
func (l *echoLoop) stop() (time.Duration, int, error) {
	l.mu.Lock()
	select {
	case <-l.stopped:
	default:
		l.maxGap = max(l.maxGap, time.Since(l.last))
		close(l.stopped)
	}
	l.mu.Unlock()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxGap, l.echoes, l.err
}

// TestCoordinatorKilled runs three `beam coordinator` replicas on one
// PostgreSQL database and a device on each (every device has the three
// URLs, its own coordinator's first), then kills one coordinator with
// SIGKILL: its device is streaming from another within 10 s, sees the
// others online again, and a TCP exchange between devices, one line every
// 100 ms over one connection, never stalls meanwhile (the data plane does
// not depend on a coordinator). A fourth device, given the killed
// coordinator's URL alone, cannot move: once the dead coordinator's
// heartbeat is stale its peers and the admin API show it as unknown, not
// offline; given every URL, it rejoins without an auth key and is online
// again.
func TestCoordinatorKilled(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	c1 := newClusterTB(t, "--db", dsn)
	c2, c3 := replicaOf(t, c1), replicaOf(t, c1)
	key := strings.TrimSpace(c1.mustBeam("admin", "authkey", "create", "--coordinator", c1.url, "--reusable"))
	urls := []string{c1.url, c2.url, c3.url}
	names := []string{"one", "two", "three"}
	var devs []*device
	for i, c := range []*cluster{c1, c2, c3} {
		d := c.device(names[i])
		d.upOn(append(append([]string{}, urls[i:]...), urls[:i]...), key)
		devs = append(devs, d)
	}
	lone := c1.device("lone")
	lone.upOn([]string{c1.url}, key)
	for i, d := range devs {
		if got := d.streamingFrom(); got != urls[i] {
			t.Errorf("%s streams from %q, want its first URL %s", d.name, got, urls[i])
		}
		for j, p := range devs {
			if i != j {
				waitFor(t, 15*time.Second, d.name+" sees "+p.name+" online", func() bool { return hasPeer(d, p.name, true) })
			}
		}
	}

	// Exchanges that cross the coordinator about to die: from its device
	// and to it.
	port := echoServer(t)
	for _, d := range devs[1:] {
		if ok, why := ncEcho(d, "one", port, 20*time.Second); !ok {
			t.Fatalf("%s -> one: no echo before the kill: %s", d.name, why)
		}
	}
	fromOne := startEchoLoop(t, devs[0], "two", port, 100*time.Millisecond)
	toOne := startEchoLoop(t, devs[2], "one", port, 100*time.Millisecond)
	waitFor(t, 10*time.Second, "the echo loops run", func() bool {
		fromOne.mu.Lock()
		defer fromOne.mu.Unlock()
		toOne.mu.Lock()
		defer toOne.mu.Unlock()
		return fromOne.echoes > 3 && toOne.echoes > 3
	})

	c1.crashCoordinator()
	killed := time.Now()
	// Measured: about a second on a loaded machine (the kernel resets the
	// stream at once; the device moves with no backoff).
	waitFor(t, 10*time.Second, "one streams from another coordinator", func() bool {
		u := devs[0].streamingFrom()
		return u != "" && u != c1.url
	})
	t.Logf("one streams from %s %v after the kill", devs[0].streamingFrom(), time.Since(killed).Round(time.Millisecond))
	// A change made now reaches every device, whichever replica it is on.
	c2.mustBeam("admin", "nodes", "rename", "three", "three-b", "--coordinator", c2.url)
	for _, d := range devs[:2] {
		waitFor(t, 15*time.Second, d.name+" sees three's new name", func() bool { return hasPeer(d, "three-b", true) })
	}
	waitFor(t, 15*time.Second, "two sees one online again", func() bool { return hasPeer(devs[1], "one", true) })
	// Past the heartbeat timeout (15 s) of the dead coordinator, lone is
	// unknown and one still online for their peers: one streams
	// elsewhere.
	waitFor(t, 35*time.Second, "two shows lone as unknown", func() bool { return peerState(devs[1], "lone") == "unknown" })
	t.Logf("lone unknown for its peers %v after the kill", time.Since(killed).Round(time.Millisecond))
	for _, d := range devs[1:] {
		// Each coordinator finds the stale beat at its own heartbeat,
		// every 3 s.
		waitFor(t, 10*time.Second, d.name+" shows lone as unknown", func() bool { return peerState(d, "lone") == "unknown" })
		if got := peerState(d, "one"); got != "online" {
			t.Errorf("%s shows one %s after its coordinator died, though one streams from another", d.name, got)
		}
	}
	out := c3.mustBeam("admin", "nodes", "list", "--coordinator", c3.url)
	if !regexp.MustCompile(`(?m)^lone\s.*\sunknown\s`).MatchString(out) {
		t.Errorf("beam admin nodes list does not show lone as unknown:\n%s", out)
	}
	// Given the other replicas' URLs too, lone joins them without an
	// auth key (the lists share a coordinator: the same network) and is
	// online again.
	if out, errOut, err := c2.beam(nil, lone.args("up", "--coordinator", strings.Join(urls, ","))...); err != nil {
		t.Fatalf("beam up lone with every URL: %v\n%s%s", err, out, errOut)
	}
	waitFor(t, 15*time.Second, "two sees lone online again", func() bool { return peerState(devs[1], "lone") == "online" })

	for name, l := range map[string]*echoLoop{"one -> two": fromOne, "three -> one": toOne} {
		gap, n, err := l.stop()
		t.Logf("%s: %d echoes, longest gap %v", name, n, gap.Round(time.Millisecond))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		// One line every 100 ms; a stall of the data plane would show
		// as a gap of seconds (measured: under 500 ms on a loaded machine).
		if gap > 3*time.Second {
			t.Errorf("%s: %v without an echo, want the exchange never to stall", name, gap.Round(time.Millisecond))
		}
	}
}

// peerState returns how d's status shows peer name: online, offline,
// unknown, or "" when it does not list it.
func peerState(d *device, name string) string {
	for _, p := range d.status().Peers {
		if p.Name != name {
			continue
		}
		switch {
		case p.Online && p.Unknown:
			return "online and unknown"
		case p.Online:
			return "online"
		case p.Unknown:
			return "unknown"
		}
		return "offline"
	}
	return ""
}

// adminNodes returns the nodes coordinator c lists: name to addresses.
func adminNodes(c *cluster) (map[string]string, error) {
	out, errOut, err := c.beam(nil, "admin", "nodes", "list", "--json", "--coordinator", c.url)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, errOut)
	}
	var nodes []wire.Node
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, err
	}
	got := map[string]string{}
	for _, n := range nodes {
		var addrs []string
		for _, p := range n.Addresses {
			addrs = append(addrs, p.Addr().String())
		}
		got[n.Name] = "[" + strings.Join(addrs, " ") + "]" // as nodeRows has them
	}
	return got, nil
}

// peerNames returns the names d's status lists (itself included), and
// whether every peer is online.
func peerNames(d *device) ([]string, bool) {
	st := d.status()
	var names []string
	if st.Self != nil {
		names = append(names, st.Self.Name)
	}
	online := true
	for _, p := range st.Peers {
		names = append(names, p.Name)
		online = online && p.Online
	}
	slices.Sort(names)
	return names, online
}

// TestPostgresRestart restarts the PostgreSQL server under two
// coordinator replicas, down for longer than a coordinator's heartbeat
// may lapse, while a node is renamed over and over through both and a new
// device joins, then renames and joins more after: every rename that
// succeeded is kept (the last one wins everywhere), no node is stored
// twice, and every device and both coordinators converge on the same
// nodes, names and addresses, and a policy set afterwards on one
// coordinator reaches every device. A node streaming throughout is shown online
// to its peer all along (never unknown or offline: every heartbeat was
// stale at once, which is not a coordinator dying). A public route a
// device publishes with beam expose while the database is down (retried
// until it succeeds) is stored once and served by the edges of both
// coordinators.
func TestPostgresRestart(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	c1 := newClusterTB(t, "--db", dsn, "--edge-domain", "example.test")
	c2 := replicaOf(t, c1)
	coords := []*cluster{c1, c2}
	urls := c1.url + "," + c2.url
	key := strings.TrimSpace(c1.mustBeam("admin", "authkey", "create", "--coordinator", c1.url, "--reusable"))
	a, b := c1.device("a"), c2.device("b")
	a.upOn([]string{c1.url, c2.url}, key)
	b.upOn([]string{c2.url, c1.url}, key)
	bKey := b.status().Self.Key
	edges := []func(host string) (int, string){startEdgeOn(t, c1, "example.test"), startEdgeOn(t, c2, "example.test")}
	app := startApp(t, "a's app")

	// The load: rename b through one coordinator, then the other, each
	// rename retried (by node key, so a retry of one that was applied is
	// a no-op) until it succeeds.
	var (
		mu        sync.Mutex
		renamed   string // b's name after the last rename that succeeded
		successes int
	)
	stop := make(chan struct{})
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for i := 1; ; i++ {
			name := "b-" + strconv.Itoa(i)
			c := coords[i%2]
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := c.beam(nil, "admin", "nodes", "rename", "nodekey:"+strings.TrimPrefix(bKey, "nodekey:"), name, "--coordinator", c.url); err == nil {
					break
				}
				// A failed attempt (the database is down): again soon.
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			mu.Lock()
			renamed, successes = name, successes+1
			mu.Unlock()
		}
	}()
	waitFor(t, 30*time.Second, "renames before the restart", func() bool { mu.Lock(); defer mu.Unlock(); return successes >= 3 })

	// a's view of b, every half second from the stop on.
	watchDone := make(chan struct{})
	var seen []string
	go func() {
		defer close(watchDone)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			out, _, err := a.c.beam(nil, a.args("status", "--json")...)
			var st apitype.Status
			if err != nil || json.Unmarshal([]byte(out), &st) != nil {
				continue
			}
			for _, p := range st.Peers {
				if p.Key == bKey && !p.Online {
					mu.Lock()
					seen = append(seen, fmt.Sprintf("%s online=%v unknown=%v", p.Name, p.Online, p.Unknown))
					mu.Unlock()
				}
			}
		}
	}()
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// A device joins while the database is down; beam up fails until it
	// is back, and is tried again.
	cdev := c1.device("c")
	joined := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(45 * time.Second)
		for {
			_, errOut, err := cdev.c.beam(nil, cdev.args("up", "--coordinator", urls, "--hostname", "c", "--authkey", key, "--timeout", "20s")...)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					err = fmt.Errorf("%v: %s", err, errOut)
				}
				joined <- err
				return
			}
			<-time.After(200 * time.Millisecond) // beam up failed while the database is down: again
		}
	}()
	// a publishes its app while the database is down; beam expose fails
	// until it is back, and is tried again.
	exposed := make(chan error, 1)
	exposeFailures := 0
	go func() {
		deadline := time.Now().Add(45 * time.Second)
		for {
			_, errOut, err := a.c.beam(nil, a.args("expose", strconv.Itoa(app.port), "--bg")...)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					err = fmt.Errorf("%v: %s", err, errOut)
				}
				exposed <- err
				return
			}
			exposeFailures++
			<-time.After(200 * time.Millisecond) // beam expose failed while the database is down: again
		}
	}()
	// Longer than a heartbeat may lapse (15 s).
	const outage = 17 * time.Second
	waitFor(t, outage+10*time.Second, "the database down for a while", func() bool { return time.Since(stopped) > outage })
	if err := pg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	atRestart := successes
	mu.Unlock()
	waitFor(t, 30*time.Second, "renames after the restart", func() bool { mu.Lock(); defer mu.Unlock(); return successes >= atRestart+3 })
	if err := <-joined; err != nil {
		t.Fatalf("c did not join across the restart: %v", err)
	}
	if err := <-exposed; err != nil {
		t.Fatalf("a's beam expose did not succeed across the restart: %v", err)
	}
	t.Logf("a's beam expose succeeded %v after the database stopped, after %d failed attempts", time.Since(stopped).Round(time.Millisecond), exposeFailures)
	for i, get := range edges {
		waitFor(t, 15*time.Second, fmt.Sprintf("the edge on coordinator %d serves a's route", i+1), func() bool {
			code, body := get("a.example.test")
			return code == http.StatusOK && body == "a's app"
		})
	}
	if got := routeRows(t, dsn); !slices.Equal(got, []string{"a a.example.test http"}) {
		t.Errorf("the database holds routes %q, want a's one http route", got)
	}
	d := c2.device("d")
	d.upOn([]string{c2.url, c1.url}, key)
	close(stop)
	<-loopDone
	<-watchDone
	if len(seen) > 0 {
		t.Errorf("a showed b not online across the restart: %q", seen)
	}
	mu.Lock()
	final := renamed
	mu.Unlock()
	t.Logf("%d renames, the last %s", successes, final)

	want := []string{"a", final, "c", "d"}
	slices.Sort(want)
	rows := nodeRows(t, dsn)
	if got, want := slices.Sorted(maps.Keys(rows)), slices.Sorted(slices.Values(append([]string{"edge", "edge-2"}, want...))); !slices.Equal(got, want) {
		t.Fatalf("the database holds nodes %v, want %v", got, want)
	}
	for _, c := range coords {
		var got map[string]string
		var err error
		waitFor(t, 15*time.Second, "coordinator "+c.url+" lists the database's nodes", func() bool {
			got, err = adminNodes(c)
			if !maps.Equal(got, rows) {
				t.Logf("%s lists %v (%v), the database holds %v", c.url, got, err, rows)
				return false
			}
			return true
		})
	}
	for _, dev := range []*device{a, b, cdev, d} {
		waitFor(t, 20*time.Second, dev.name+" sees every node under its last name, online", func() bool {
			names, online := peerNames(dev)
			return online && slices.Equal(withoutEdges(names), want)
		})
	}
	// The listeners are back too: a policy set on one coordinator after
	// the restart reaches the devices of both (deny all: no peers left).
	deny := writeFile(t, c1.dir, "deny.hujson", `{"acls": []}`)
	c1.mustBeam("admin", "--coordinator", c1.url, "policy", "set", deny)
	for _, dev := range []*device{a, b, cdev, d} {
		waitFor(t, 15*time.Second, dev.name+" sees no peer under a deny-all policy", func() bool {
			names, _ := peerNames(dev)
			return len(withoutEdges(names)) == 1
		})
	}
}

// TestReplicaTimesShort: with --stale-after 6s --unknown-timeout 5s on
// both replicas, a device streaming only from a coordinator that was
// killed shows as unknown to its peer on the other once 6 s of beats are
// missed, and as offline 5 s later: with the defaults (15 s, 2 minutes)
// it would still be unknown 2 minutes on.
func TestReplicaTimesShort(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	c1 := newClusterTB(t, "--db", dsn, "--stale-after", "6s", "--unknown-timeout", "5s")
	c2 := replicaOf(t, c1)
	key := strings.TrimSpace(c1.mustBeam("admin", "authkey", "create", "--coordinator", c1.url, "--reusable"))
	lone, two := c1.device("lone"), c2.device("two")
	lone.upOn([]string{c1.url}, key)
	two.upOn([]string{c2.url}, key)
	waitFor(t, 15*time.Second, "two sees lone online", func() bool { return peerState(two, "lone") == "online" })

	c1.crashCoordinator()
	killed := time.Now()
	// Stale after 6 s, found at a heartbeat of c2 (every 3 s).
	waitFor(t, 20*time.Second, "two shows lone as unknown", func() bool { return peerState(two, "lone") == "unknown" })
	unknownAt := time.Since(killed)
	waitFor(t, 30*time.Second, "two shows lone as offline", func() bool { return peerState(two, "lone") == "offline" })
	offlineAt := time.Since(killed)
	t.Logf("lone unknown %v and offline %v after its coordinator was killed", unknownAt.Round(time.Millisecond), offlineAt.Round(time.Millisecond))
	// The last beat came up to a heartbeat (3 s) before the kill.
	if unknownAt < 3*time.Second {
		t.Errorf("lone unknown %v after the kill, before the 6s stale time less a heartbeat", unknownAt)
	}
	if offlineAt < 8*time.Second {
		t.Errorf("lone offline %v after the kill, before 6s + 5s less a heartbeat", offlineAt)
	}
}

// routeRows returns the public routes stored in the database at dsn, as
// "NODE HOST PROTO", sorted.
func routeRows(t *testing.T, dsn string) []string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	rows, err := conn.Query(t.Context(), `SELECT n.name, r.host, r.proto FROM routes r JOIN nodes n ON n.id = r.node_id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var name, host, proto string
		if err := rows.Scan(&name, &host, &proto); err != nil {
			t.Fatal(err)
		}
		got = append(got, name+" "+host+" "+proto)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

// withoutEdges returns names without those of the edges' nodes (edge,
// edge-2, ...).
func withoutEdges(names []string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return strings.HasPrefix(n, "edge") })
}
