package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/edge"
	"beam.dev/beam/edgenode"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// PublicDomain is the edge domain of a Public cluster: routes are
// http://NAME.example.test.
const PublicDomain = "example.test"

// Public is an in-process cluster with a public edge, wired as beam
// server wires one: a coordinator on in-memory SQLite with an edge
// domain, and an edge node whose netmaps feed an edgenode.Server with a
// loopback HTTP listener. Unlike NewCluster it needs no testing.TB, so a
// TestMain can start one for a package's examples. Close stops it.
type Public struct {
	// URL is the coordinator's URL.
	URL string
	// Coord is the coordinator.
	Coord *coordinator.Server
	// AuthKey is a reusable auth key of the network.
	AuthKey string
	// EdgeAddr is the edge's HTTP listener (host:port on loopback).
	EdgeAddr string

	stops []func()
}

// StartPublic starts a Public cluster; dir holds the edge node's state.
func StartPublic(dir string) (*Public, error) {
	p := &Public{}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := sqlstore.Open(ctx, ":memory:")
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	p.stops = append(p.stops, func() { st.Close() })
	coord, err := coordinator.New(coordinator.Options{
		Store:             st,
		PrivateKey:        key.NewMachine(),
		AdminToken:        "test-admin-token",
		KeepAliveInterval: 2 * time.Second,
		EdgeDomain:        PublicDomain,
		EdgeHTTPURL:       "http://{host}",
	})
	if err != nil {
		return nil, fmt.Errorf("start coordinator: %w", err)
	}
	hs := httptest.NewServer(coord)
	p.stops = append(p.stops, func() {
		hs.CloseClientConnections()
		coord.Close()
		hs.Close()
	})
	p.Coord, p.URL = coord, hs.URL
	p.AuthKey, err = coord.CreateAuthKey(ctx, coordinator.AuthKeyOptions{Reusable: true})
	if err != nil {
		return nil, fmt.Errorf("auth key: %w", err)
	}
	edgeKey, err := coord.CreateAuthKey(ctx, coordinator.AuthKeyOptions{Reusable: true, Edge: true})
	if err != nil {
		return nil, fmt.Errorf("edge auth key: %w", err)
	}

	routes := make(chan []wire.EdgeRoute, 1)
	en, err := node.New(node.Options{
		StateDir: dir,
		Hostname: "edge",
		// No idle connections to the coordinator: a connection the edge
		// opens while a test counts goroutines would look like the test's.
		HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		OnNetMap: func(nm *wire.NetMap) {
			select {
			case <-routes:
			default:
			}
			routes <- nm.EdgeRoutes
		},
	})
	if err != nil {
		return nil, fmt.Errorf("edge node: %w", err)
	}
	p.stops = append(p.stops, func() { en.Close() })
	if _, err := en.Up(ctx, apitype.UpRequest{Coordinator: hs.URL, AuthKey: edgeKey, Hostname: "edge"}); err != nil {
		return nil, fmt.Errorf("edge up: %w", err)
	}
	e, err := edge.New(edge.Options{Dial: en.DialContext, Domain: PublicDomain})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	p.stops = append(p.stops, func() { e.Close() })
	srv, err := edgenode.New(edgenode.Options{Edge: e, HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		return nil, fmt.Errorf("edgenode: %w", err)
	}
	p.stops = append(p.stops, func() { srv.Close() })
	var wg sync.WaitGroup
	rctx, rcancel := context.WithCancel(context.Background())
	p.stops = append(p.stops, func() { rcancel(); wg.Wait() })
	wg.Go(func() {
		for {
			select {
			case <-rctx.Done():
				return
			case rs := <-routes:
				srv.Update(rs)
			}
		}
	})
	p.EdgeAddr = srv.Addr("http").String()
	ok = true
	return p, nil
}

// Client returns a client that sends every request to the edge's HTTP
// listener, whatever the URL's host, as the public DNS would. Close its
// idle connections (CloseIdleConnections) when done.
func (p *Public) Client() *http.Client {
	addr := p.EdgeAddr
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			},
		},
		Timeout: 30 * time.Second,
	}
}

// Close stops everything, last started first.
func (p *Public) Close() {
	for i := len(p.stops) - 1; i >= 0; i-- {
		p.stops[i]()
	}
	p.stops = nil
}
