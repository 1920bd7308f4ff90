package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

const testToken = "test-admin-token-0123456789"

// coord is a coordinator on a real loopback listener, restartable on the
// same address and database.
type coord struct {
	t    testing.TB
	dsn  string
	priv key.MachinePrivate
	mod  func(*coordinator.Options)
	// storeOpts are the options its store opens with.
	storeOpts sqlstore.Options
	addr      string
	URL       string
	Store     *sqlstore.Store
	Server    *coordinator.Server
	hs        *http.Server
	done      chan struct{}
}

// startCoord starts a coordinator on a temp SQLite file. mod may adjust its options.
func startCoord(t testing.TB, mod func(*coordinator.Options)) *coord {
	t.Helper()
	c := &coord{t: t, dsn: filepath.Join(t.TempDir(), "coordinator.db"), priv: key.NewMachine(), mod: mod, addr: "127.0.0.1:0"}
	c.start()
	t.Cleanup(c.stop)
	return c
}

func (c *coord) start() {
	c.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenWith(ctx, c.dsn, c.storeOpts)
	if err != nil {
		c.t.Fatal(err)
	}
	opts := coordinator.Options{Store: st, PrivateKey: c.priv, AdminToken: testToken, KeepAliveInterval: time.Second}
	if c.mod != nil {
		c.mod(&opts)
	}
	srv, err := coordinator.New(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	c.URL = "http://" + c.addr
	c.Store, c.Server = st, srv
	c.hs = &http.Server{Handler: srv}
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		c.hs.Serve(ln)
	}()
}

// stop closes the coordinator (ending its streams) and its store.
func (c *coord) stop() {
	if c.hs == nil {
		return
	}
	// As beam coordinator does: end the streams, then let net/http finish
	// their responses (trailers included) before closing connections.
	c.Server.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if c.hs.Shutdown(ctx) != nil {
		c.hs.Close()
	}
	cancel()
	<-c.done
	c.Store.Close()
	c.hs = nil
}

func (c *coord) restart() {
	c.stop()
	c.start()
}

func (c *coord) authKey(t testing.TB, o coordinator.AuthKeyOptions) string {
	t.Helper()
	k, err := c.Server.CreateAuthKey(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// node is a test node: a coordclient.Client with its key.
type node struct {
	priv key.NodePrivate
	*coordclient.Client
}

func newNode(t testing.TB, url string) *node {
	t.Helper()
	priv := key.NewNode()
	cl, err := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: priv, DiscoKey: key.NewDisco().Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &node{priv: priv, Client: cl}
}

func (n *node) register(t testing.TB, authKey, hostname string) *wire.RegisterResponse {
	t.Helper()
	resp, err := n.Register(context.Background(), coordclient.RegisterParams{AuthKey: authKey, Hostname: hostname, OS: "linux"})
	if err != nil {
		t.Fatalf("register %s: %v", hostname, err)
	}
	return resp
}

// watcher runs a node's map stream and lets tests wait for netmap conditions.
type watcher struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}
	err    error

	mu   sync.Mutex
	cond *sync.Cond
	nm   *wire.NetMap
	n    int // netmaps seen
}

func watch(t testing.TB, n *node) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: t, cancel: cancel, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go func() {
		defer close(w.done)
		err := n.Run(ctx, func(nm *wire.NetMap) {
			w.mu.Lock()
			w.nm = nm
			w.n++
			w.cond.Broadcast()
			w.mu.Unlock()
		})
		w.mu.Lock()
		w.err = err
		w.cond.Broadcast()
		w.mu.Unlock()
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

// waitFor waits until cond holds for the latest netmap, or fails after d.
func (w *watcher) waitFor(what string, d time.Duration, cond func(*wire.NetMap) bool) *wire.NetMap {
	w.t.Helper()
	timer := time.AfterFunc(d, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer timer.Stop()
	start := time.Now()
	deadline := start.Add(d)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.nm != nil && cond(w.nm) {
			w.t.Logf("%s after %v", what, time.Since(start).Round(time.Millisecond))
			return w.nm
		}
		select {
		case <-w.done:
			w.t.Fatalf("waiting for %s: Run returned %v", what, w.err)
		default:
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out after %v waiting for %s; last netmap: %.4000s", d, what, fmt.Sprintf("%+v", w.nm))
		}
		w.cond.Wait()
	}
}

// waitErr waits for Run to return and gives its error.
func (w *watcher) waitErr(d time.Duration) error {
	w.t.Helper()
	select {
	case <-w.done:
		return w.err
	case <-time.After(d):
		w.t.Fatalf("Run did not return within %v", d)
		return nil
	}
}

func peerNamed(nm *wire.NetMap, name string) *wire.Node {
	for _, p := range nm.Peers {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func isErr(err, target error) bool { return errors.Is(err, target) }
