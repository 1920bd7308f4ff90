// Package harness runs an in-process Beam cluster for tests: a coordinator
// on an in-memory SQLite store behind a loopback HTTP server, and any number
// of nodes (daemons) with their own state directories, all in one process.
// It is imported only from _test.go files.
package harness

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Cluster is a coordinator and the nodes of one test.
type Cluster struct {
	t     testing.TB
	Coord *coordinator.Server
	Store *sqlstore.Store
	HTTP  *httptest.Server
	// URL is the coordinator's base URL.
	URL string
}

// Options configures NewCluster.
type Options struct {
	// KeepAlive is the map stream keepalive; zero means 2 seconds.
	KeepAlive time.Duration
	// Policy is the coordinator's policy function; nil allows everything.
	Policy coordinator.PolicyFunc
	// DERPMap is handed to nodes; nil means none.
	DERPMap *wire.DERPMap
	// EdgeDomain and EdgeTCPPorts are the coordinator's (see
	// coordinator.Options); empty means nodes cannot publish routes.
	EdgeDomain   string
	EdgeTCPPorts coordinator.PortRange
}

// NewCluster starts a coordinator. Everything stops at the end of the test.
func NewCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, ":memory:")
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	ka := opts.KeepAlive
	if ka == 0 {
		ka = 2 * time.Second
	}
	srv, err := coordinator.New(coordinator.Options{
		Store:             st,
		PrivateKey:        key.NewMachine(),
		AdminToken:        "test-admin-token",
		KeepAliveInterval: ka,
		Policy:            opts.Policy,
		DERPMap:           opts.DERPMap,
		EdgeDomain:        opts.EdgeDomain,
		EdgeTCPPorts:      opts.EdgeTCPPorts,
	})
	if err != nil {
		t.Fatalf("start coordinator: %v", err)
	}
	hs := httptest.NewServer(srv)
	c := &Cluster{t: t, Coord: srv, Store: st, HTTP: hs, URL: hs.URL}
	t.Cleanup(func() {
		hs.CloseClientConnections()
		srv.Close()
		hs.Close()
		st.Close()
	})
	return c
}

// AuthKey creates a reusable auth key.
func (c *Cluster) AuthKey(opts coordinator.AuthKeyOptions) string {
	c.t.Helper()
	k, err := c.Coord.CreateAuthKey(context.Background(), opts)
	if err != nil {
		c.t.Fatalf("create auth key: %v", err)
	}
	return k
}

// Node is a node of the cluster.
type Node struct {
	*node.Node
	Name string
	Dir  string
}

// AddNode starts a node named name and brings it up with authKey (a new
// reusable key if empty). It returns once the node has its first netmap.
func (c *Cluster) AddNode(name, authKey string) *Node {
	c.t.Helper()
	if authKey == "" {
		authKey = c.AuthKey(coordinator.AuthKeyOptions{Reusable: true})
	}
	dir := c.t.TempDir()
	n, err := node.New(node.Options{StateDir: dir, Hostname: name, UpTimeout: 20 * time.Second})
	if err != nil {
		c.t.Fatalf("new node %s: %v", name, err)
	}
	c.t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.Up(ctx, apitype.UpRequest{Coordinator: c.URL, AuthKey: authKey, Hostname: name}); err != nil {
		c.t.Fatalf("up %s: %v", name, err)
	}
	return &Node{Node: n, Name: name, Dir: dir}
}

// WaitPeers waits until every node sees every other node as a peer.
func (c *Cluster) WaitPeers(nodes ...*Node) {
	c.t.Helper()
	WaitFor(c.t, 15*time.Second, "all nodes see each other", func() bool {
		for _, n := range nodes {
			if len(n.Status().Peers) < len(nodes)-1 {
				return false
			}
		}
		return true
	})
}

// WaitFor polls cond until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
	t.Logf("%s after %v", what, time.Since(start).Round(time.Millisecond))
}

// PeerIP returns the first IPv4 (or IPv6 if v6) overlay address of the
// peer named name as seen by n.
func (n *Node) PeerIP(name string, v6 bool) string {
	for _, p := range n.Status().Peers {
		if p.Name != name {
			continue
		}
		for _, a := range p.IPs {
			if a.Is6() == v6 {
				return a.String()
			}
		}
	}
	panic(fmt.Sprintf("harness: no peer %q with that address family", name))
}

// PeerIPOr returns the first IPv4 overlay address of the peer named name as
// seen by n, or "" if n does not see it.
func (n *Node) PeerIPOr(name string) string {
	for _, p := range n.Status().Peers {
		if p.Name == name {
			for _, a := range p.IPs {
				if a.Is4() {
					return a.String()
				}
			}
		}
	}
	return ""
}
