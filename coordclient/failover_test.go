package coordclient

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// replica is a fake coordinator among several sharing one machine key.
type replica struct {
	name string
	fc   *fakeCoord
	hs   *httptest.Server

	mu    sync.Mutex
	hosts []string // the Host header of each stream request
}

// startReplica serves a fake coordinator named name with machine key priv
// on ln (nil: a new loopback port). Its streams send a full map whose
// Self is named for the replica, then keepalives until the client or the
// server goes.
func startReplica(t *testing.T, name string, priv key.MachinePrivate, ln net.Listener) *replica {
	t.Helper()
	r := &replica{name: name}
	r.fc = &fakeCoord{t: t, priv: priv, keepMS: "200"}
	r.fc.onStream = func(w http.ResponseWriter, req *http.Request, nk key.NodePublic) {
		r.mu.Lock()
		r.hosts = append(r.hosts, req.Host)
		r.mu.Unlock()
		r.fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: name}})
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-req.Context().Done():
				return
			case <-tick.C:
				r.fc.frame(w, nk, &wire.MapResponse{KeepAlive: true})
			}
		}
	}
	r.hs = httptest.NewUnstartedServer(r.fc)
	if ln != nil {
		r.hs.Listener.Close()
		r.hs.Listener = ln
	}
	r.hs.Start()
	t.Cleanup(r.kill)
	return r
}

// kill stops the replica as a crash would: its connections close at once.
func (r *replica) kill() {
	r.hs.CloseClientConnections()
	r.hs.Close()
}

// streams returns how many streams the replica opened.
func (r *replica) streams() int {
	r.fc.mu.Lock()
	defer r.fc.mu.Unlock()
	return r.fc.streams
}

// selfNames runs cl and sends the Self name of every full map on the
// returned channel; Run ends with the test.
func selfNames(t *testing.T, cl *Client) <-chan string {
	ch := make(chan string, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl.RunResponses(ctx, func(mr *wire.MapResponse, first bool) {
			if first && mr.Self != nil {
				ch <- mr.Self.Name
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

// nextSelf waits for the next full map and returns its Self name and how
// long it took.
func nextSelf(t *testing.T, ch <-chan string, within time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case name := <-ch:
		return name, time.Since(start)
	case <-time.After(within):
		t.Fatalf("no full map within %v", within)
		return "", 0
	}
}

// failoverBound is how soon a client must be streaming from another
// coordinator after its own died: well under a second when measured
// (a refused connection costs nothing, the jitter at most 300 ms); the
// bound leaves room for a loaded machine.
const failoverBound = 5 * time.Second

// TestFailoverToNextCoordinator: with several URLs the client streams
// from the first it can reach, skips one that refuses connections, and
// when its coordinator dies moves to the next at once, with no backoff.
func TestFailoverToNextCoordinator(t *testing.T) {
	priv := key.NewMachine()
	dead := startReplica(t, "dead", priv, nil)
	dead.kill() // its port now refuses connections
	b := startReplica(t, "b", priv, nil)
	c := startReplica(t, "c", priv, nil)
	cl, err := New(Options{ServerURL: strings.Join([]string{dead.hs.URL, b.hs.URL, c.hs.URL + "/"}, ","), PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	ch := selfNames(t, cl)
	if name, _ := nextSelf(t, ch, failoverBound); name != "b" {
		t.Fatalf("first stream from %q, want b (the first URL refuses connections)", name)
	}
	if got := cl.ServerURL(); got != b.hs.URL {
		t.Errorf("ServerURL = %q, want %q", got, b.hs.URL)
	}
	b.kill()
	name, took := nextSelf(t, ch, failoverBound)
	if name != "c" {
		t.Fatalf("after b died, stream from %q, want c", name)
	}
	t.Logf("moved from b to c in %v", took.Round(time.Millisecond))
	if got := c.streams(); got != 1 {
		t.Errorf("c opened %d streams, want 1", got)
	}
}

// TestFailoverFromSilentStream: a stream that goes silent (its
// coordinator's machine gone without closing the connection) is dead
// a margin after its keepalive, and the client moves to the next URL, not
// back to the silent one.
func TestFailoverFromSilentStream(t *testing.T) {
	priv := key.NewMachine()
	silent := &fakeCoord{t: t, priv: priv, keepMS: "100"}
	silent.onStream = func(w http.ResponseWriter, req *http.Request, nk key.NodePublic) {
		silent.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "silent"}})
		<-req.Context().Done()
	}
	hs := httptest.NewServer(silent)
	t.Cleanup(hs.Close)
	b := startReplica(t, "b", priv, nil)
	cl, err := New(Options{ServerURL: hs.URL + "," + b.hs.URL, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	ch := selfNames(t, cl)
	if name, _ := nextSelf(t, ch, failoverBound); name != "silent" {
		t.Fatalf("first stream from %q, want silent", name)
	}
	// The keepalive is 100 ms: dead after 200 ms (the margin is at most
	// the keepalive interval).
	name, took := nextSelf(t, ch, failoverBound)
	if name != "b" {
		t.Fatalf("after the silence, stream from %q, want b", name)
	}
	if took > 2*time.Second {
		t.Errorf("moved after %v of silence, want about 200 ms", took)
	}
}

// TestAllCoordinatorsDownBacksOff: when every coordinator refuses, the
// client goes round them and then backs off instead of spinning, and
// streams again once one is back.
func TestAllCoordinatorsDownBacksOff(t *testing.T) {
	var mu sync.Mutex
	dials := 0
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}}
	priv := key.NewMachine()
	a := startReplica(t, "a", priv, nil)
	b := startReplica(t, "b", priv, nil)
	a.kill()
	b.kill()
	cl, err := New(Options{ServerURL: a.hs.URL + "," + b.hs.URL, PrivateKey: key.NewNode(), HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	ch := selfNames(t, cl)
	select {
	case name := <-ch:
		t.Fatalf("stream from %q with every coordinator down", name)
	case <-time.After(2 * time.Second):
	}
	mu.Lock()
	n := dials
	mu.Unlock()
	// Backoff from 250 ms doubling: at most about 4 rounds of 2 targets
	// in 2 s (each round dials each target once, for the key).
	if n < 2 || n > 12 {
		t.Errorf("%d dials in 2 s with both coordinators down, want 2..12 (a round, then backoff)", n)
	}
	// b comes back on its port.
	ln, err := net.Listen("tcp", b.hs.Listener.Addr().String())
	if err != nil {
		t.Fatalf("listen again on b's port: %v", err)
	}
	startReplica(t, "b-again", priv, ln)
	if name, _ := nextSelf(t, ch, 15*time.Second); name != "b-again" {
		t.Fatalf("stream from %q, want b-again", name)
	}
}

// TestNameWithSeveralAddresses: a URL whose host name resolves to several
// addresses counts as one coordinator per address, each dialed by
// address with the name kept in the Host header; when the one streaming
// dies, the client moves to the other address.
func TestNameWithSeveralAddresses(t *testing.T) {
	priv := key.NewMachine()
	// One port on both addresses: a port free on 127.0.0.1 may be some
	// other socket's on 127.0.0.2, so a few are tried.
	var ln1, ln2 net.Listener
	var port int
	for try := 0; ln2 == nil; try++ {
		var err error
		if ln1, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		port = ln1.Addr().(*net.TCPAddr).Port
		if ln2, err = net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port))); err != nil {
			ln1.Close()
			if try == 20 {
				t.Fatalf("listen on 127.0.0.2 with 127.0.0.1's port: %v", err)
			}
		}
	}
	r1 := startReplica(t, "one", priv, ln1)
	r2 := startReplica(t, "two", priv, ln2)
	byName := map[string]*replica{"one": r1, "two": r2}
	var lookups sync.Mutex
	looked := 0
	host := "coord.beam.test:" + strconv.Itoa(port)
	cl, err := New(Options{
		ServerURL:  "http://" + host,
		PrivateKey: key.NewNode(),
		LookupNetIP: func(ctx context.Context, network, name string) ([]netip.Addr, error) {
			lookups.Lock()
			looked++
			lookups.Unlock()
			if name != "coord.beam.test" {
				return nil, errors.New("no such host")
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ch := selfNames(t, cl)
	first, _ := nextSelf(t, ch, failoverBound)
	r := byName[first]
	if r == nil {
		t.Fatalf("stream from %q", first)
	}
	r.mu.Lock()
	gotHost := r.hosts[0]
	r.mu.Unlock()
	if gotHost != host {
		t.Errorf("Host header %q, want %q", gotHost, host)
	}
	r.kill()
	second, took := nextSelf(t, ch, failoverBound)
	if second == first || byName[second] == nil {
		t.Fatalf("after %s died, stream from %q, want the other address", first, second)
	}
	t.Logf("moved from %s to %s in %v", first, second, took.Round(time.Millisecond))
	lookups.Lock()
	defer lookups.Unlock()
	if looked == 0 {
		t.Errorf("the name was never looked up")
	}
}

// TestSplitServerURLs checks the list forms accepted.
func TestSplitServerURLs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"http://a:1", []string{"http://a:1"}, false},
		{"http://a:1/, https://b ,http://a:1", []string{"http://a:1", "https://b"}, false},
		{"http://a:1,,", []string{"http://a:1"}, false},
		{"", nil, true},
		{"http://a:1,ftp://b", nil, true},
		{"a:1", nil, true},
		{"http://a:1/", []string{"http://a:1"}, false},
		{"http://a:1/path", nil, true},
		{"http://a:1/beam/", nil, true},
		{"http://a:1?x=1", nil, true},
		{"http://a:1/#frag", nil, true},
		{"http://user:pw@a:1", nil, true},
		{"http://a:1,http://b:2/path", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := SplitServerURLs(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	if !SameServers("http://a:1,http://b:2", "http://b:2/") || SameServers("http://a:1", "http://b:2") {
		t.Errorf("SameServers wrong")
	}
}

// TestAdminTriesEachURL: the admin client with several URLs sends each
// request to the first coordinator it can reach, with its token.
func TestAdminTriesEachURL(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	var gotAuth string
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wire.PathNodes {
			http.NotFound(w, r)
			return
		}
		gotAuth = r.Header.Get("Authorization")
		w.Write([]byte(`[{"name":"alpha"}]`))
	}))
	t.Cleanup(live.Close)
	ad := NewAdmin(dead.URL+","+live.URL, "tok-0123456789abcdef", nil)
	nodes, err := ad.ListNodes(t.Context())
	if err != nil {
		t.Fatalf("ListNodes = %v, want the live coordinator's answer", err)
	}
	if len(nodes) != 1 || nodes[0].Name != "alpha" {
		t.Errorf("nodes = %+v, want alpha", nodes)
	}
	if gotAuth != "Bearer tok-0123456789abcdef" {
		t.Errorf("Authorization = %q", gotAuth)
	}
	if _, err := NewAdmin(dead.URL, "tok-0123456789abcdef", nil).ListNodes(t.Context()); !errors.Is(err, ErrUnreachable) {
		t.Errorf("ListNodes with only a dead URL = %v, want ErrUnreachable", err)
	}
}

// TestResolveBounded: a coordinator name whose answer changes at every
// lookup, with many addresses, gives the client at most maxAddrsPerName
// targets and keeps no HTTP client for addresses it no longer tries.
func TestResolveBounded(t *testing.T) {
	next := 0
	cl, err := New(Options{
		ServerURL:  "http://coord.beam.test:4242",
		PrivateKey: key.NewNode(),
		LookupNetIP: func(ctx context.Context, network, name string) ([]netip.Addr, error) {
			var out []netip.Addr
			for range 20 {
				next++
				out = append(out, netip.AddrFrom4([4]byte{198, 51, byte(next >> 8), byte(next)}))
			}
			return out, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		cl.resolve(t.Context())
	}
	cl.mu.Lock()
	targets := len(cl.targets)
	cl.mu.Unlock()
	cl.hcMu.Lock()
	clients := len(cl.hcs)
	cl.hcMu.Unlock()
	if targets != maxAddrsPerName || clients > maxAddrsPerName {
		t.Errorf("after 10 lookups of 20 new addresses: %d targets, %d HTTP clients; want %d and at most %d", targets, clients, maxAddrsPerName, maxAddrsPerName)
	}
}
