package netstack

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/netstack/internal/bind"
	"beam.dev/beam/types/key"
)

// relays keeps one relay (DERP) client per region in use: the node's home
// region, always (so peers can reach it), and the home region of each peer
// it sends to through a relay. It implements bind.Relay.
//
// Goroutines: one loop per region in use, counted in wg; a loop redials
// its region with backoff while the region is wanted. close stops them
// and waits.
type relays struct {
	e    *Engine
	priv key.NodePrivate

	wg sync.WaitGroup // region loops; Add only under mu while !closed

	mu     sync.Mutex // guards the following fields
	urls   map[int][]string
	home   int // preferred region, announced as such to its relay
	hint   int // the configured home hint, kept connected too
	conns  map[int]*relayConn
	closed bool
}

// relayConn is one region's connection; client is nil while dialing.
type relayConn struct {
	urls    []string // the region's relays, tried in turn
	client  *derp.Client
	stop    chan struct{}   // closed to make the region's loop give up
	pending []pendingPacket // sent while dialing; flushed on connect
	up      chan struct{}   // closed once first connected
}

type pendingPacket struct {
	dst key.NodePublic
	pkt []byte
}

// maxPending bounds packets held per region while it is dialing (enough
// for the handshake that triggered the dial).
const maxPending = 16

var _ bind.Relay = (*relays)(nil)

const (
	relayDialTimeout = 10 * time.Second
	relayBackoffMin  = 250 * time.Millisecond
	relayBackoffMax  = 10 * time.Second
)

func newRelays(e *Engine, priv key.NodePrivate) *relays {
	return &relays{e: e, priv: priv, conns: make(map[int]*relayConn)}
}

// setMap applies the regions' URLs, the home region and the configured
// home hint: connections to regions that left the map or changed URL are
// closed, and the home and hint regions are connected.
func (r *relays) setMap(urls map[int][]string, home, hint int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.urls = maps.Clone(urls)
	for region, c := range r.conns {
		if u, ok := r.urls[region]; !ok || !slices.Equal(u, c.urls) {
			r.dropLocked(region)
		}
	}
	r.setHomeLocked(home, hint)
}

// setHome makes home the preferred region (connected, and announced as
// preferred to its relay) and keeps hint connected.
func (r *relays) setHome(home, hint int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.setHomeLocked(home, hint)
}

func (r *relays) setHomeLocked(home, hint int) {
	old := r.home
	r.home, r.hint = home, hint
	for _, region := range []int{home, hint} {
		if region != 0 {
			r.ensureLocked(region)
		}
	}
	if old != home {
		for region, c := range r.conns {
			if c.client != nil && (region == old || region == home) {
				c.client.NotePreferred(region == home)
			}
		}
	}
}

// dropLocked stops region's connection.
func (r *relays) dropLocked(region int) {
	c := r.conns[region]
	if c == nil {
		return
	}
	delete(r.conns, region)
	close(c.stop)
	if c.client != nil {
		c.client.Close()
	}
}

// ensureLocked starts connecting to region if it is known and not
// connected or connecting.
func (r *relays) ensureLocked(region int) {
	if r.conns[region] != nil || r.closed {
		return
	}
	u, ok := r.urls[region]
	if !ok {
		return
	}
	c := &relayConn{urls: u, stop: make(chan struct{}), up: make(chan struct{})}
	r.conns[region] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.loop(region, c)
	}()
}

// Send implements bind.Relay. A packet to a region not connected yet
// starts the connection and waits for it (a few are kept, the rest
// dropped; WireGuard retries).
func (r *relays) Send(region int, dst key.NodePublic, pkts [][]byte) error {
	r.mu.Lock()
	c := r.conns[region]
	if c == nil {
		r.ensureLocked(region)
		c = r.conns[region]
	}
	if c == nil {
		r.mu.Unlock()
		return errNoRegion
	}
	client := c.client
	if client == nil {
		for _, pkt := range pkts {
			if len(c.pending) < maxPending {
				c.pending = append(c.pending, pendingPacket{dst: dst, pkt: append([]byte(nil), pkt...)})
			}
		}
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	return client.SendBatch(dst, pkts)
}

var errNoRegion = errors.New("netstack: relay region unknown")

// loop dials region, reads from it until the connection fails, and redials
// with backoff until stopped.
func (r *relays) loop(region int, c *relayConn) {
	log := r.e.log.With("derp_region", region)
	backoff := relayBackoffMin
	next := 0
	for {
		ctx, cancel := context.WithTimeout(r.e.ctx, relayDialTimeout)
		// A region's relays mesh with each other: any of them reaches
		// the region's clients. Try them in turn, starting with the one
		// that worked last.
		u := c.urls[next%len(c.urls)]
		client, err := derp.Dial(ctx, u, r.priv, derp.ClientOptions{Logger: log})
		cancel()
		if err == nil {
			r.mu.Lock()
			stopped := r.conns[region] != c
			var pending []pendingPacket
			if !stopped {
				if c.client == nil && !isClosed(c.up) {
					close(c.up)
				}
				c.client = client
				pending, c.pending = c.pending, nil
			}
			r.mu.Unlock()
			if stopped {
				client.Close()
				return
			}
			for _, p := range pending {
				client.Send(p.dst, p.pkt)
			}
			if region == r.homeRegion() {
				client.NotePreferred(true)
			}
			backoff = relayBackoffMin
			r.read(region, client)
			r.mu.Lock()
			if r.conns[region] == c {
				c.client = nil
			}
			r.mu.Unlock()
			client.Close()
		} else {
			log.Debug("dial relay", "url", u, "err", err)
			next++
			if next%len(c.urls) != 0 {
				// Another relay of the region may work: try it now.
				continue
			}
		}
		t := time.NewTimer(backoff)
		select {
		case <-c.stop:
			t.Stop()
			return
		case <-r.e.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, relayBackoffMax)
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitConnectedForTest blocks until region has been connected once.
func (r *relays) waitConnectedForTest(ctx context.Context, region int) error {
	r.mu.Lock()
	c := r.conns[region]
	r.mu.Unlock()
	if c == nil {
		return errNoRegion
	}
	select {
	case <-c.up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *relays) homeRegion() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.home
}

// read hands relayed packets to the bind until the connection fails.
func (r *relays) read(region int, client *derp.Client) {
	for {
		m, err := client.RecvReuse() // DeliverRelayed copies what it keeps
		if err != nil {
			return
		}
		switch m := m.(type) {
		case derp.ReceivedPacket:
			r.e.bind.DeliverRelayed(region, m.Source, m.Data)
		case derp.PeerGoneMessage:
			if m.Reason == derp.PeerGoneNotHere {
				r.e.bind.PeerNotHere(m.Peer)
			}
		}
	}
}

// close stops every region and waits for the loops to exit. The engine's
// context must be canceled first, so dials in progress give up.
func (r *relays) close() {
	r.mu.Lock()
	r.closed = true
	for region := range r.conns {
		r.dropLocked(region)
	}
	r.mu.Unlock()
	r.wg.Wait()
}
