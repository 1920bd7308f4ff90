package bind

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
)

// sprayTarget is the hard-NAT IP the tests' peer names. The bind's UDP
// filter drops everything sent to it, so nothing leaves the machine; the
// filter only counts.
var sprayTarget = netip.MustParseAddr("192.0.2.7")

// sprayPeerPort is the port of the peer's one endpoint (at sprayTarget),
// which call-me-maybe pings: the counter leaves it out.
const sprayPeerPort = 41641

// sprayCounter is a UDP filter that drops and records what the bind sends
// to sprayTarget.
type sprayCounter struct {
	mu    sync.Mutex
	ports map[uint16]int
	first time.Time
	last  time.Time
}

func (c *sprayCounter) allow(ap netip.AddrPort) bool {
	if ap.Addr() != sprayTarget {
		return true
	}
	if ap.Port() == sprayPeerPort {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.first.IsZero() {
		c.first = now
	}
	c.last = now
	c.ports[ap.Port()]++
	return false
}

func (c *sprayCounter) count() (probes, distinct, low int, span time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for port, n := range c.ports {
		probes += n
		distinct++
		if port < sprayPortMin {
			low++
		}
	}
	return probes, distinct, low, c.last.Sub(c.first)
}

// sprayBind returns an open bind with one peer in relay region 1, the
// peer's disco key (to seal messages from it) and the counter of probes.
func sprayBind(t *testing.T) (*Bind, *peer, key.NodePublic, key.DiscoPrivate, *sprayCounter) {
	t.Helper()
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: &fakeRelay{}, DiscoKey: key.NewDisco()})
	if err != nil {
		t.Fatal(err)
	}
	peerKey, peerDisco := key.NewNode().Public(), key.NewDisco()
	b.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: 1, DiscoKey: peerDisco.Public(),
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(sprayTarget, sprayPeerPort)}}})
	c := &sprayCounter{ports: make(map[uint16]int)}
	b.SetUDPFilterForTest(c.allow)
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.mu.Lock()
	p := b.peers[peerKey].p
	b.mu.Unlock()
	return b, p, peerKey, peerDisco, c
}

// cmmFrom seals a call-me-maybe naming hard as hard-NAT IPs from the
// peer's disco key to b's.
func cmmFrom(b *Bind, peerDisco key.DiscoPrivate, hard ...netip.Addr) []byte {
	return disco.AppendPacket(nil, peerDisco.Public(), peerDisco.Shared(b.DiscoPublic()), &disco.CallMeMaybe{
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(sprayTarget, sprayPeerPort)},
		HardNAT:   hard,
	})
}

func spraying(b *Bind, p *peer) bool {
	b.bmu.Lock()
	defer b.bmu.Unlock()
	return p.bday.spraying
}

// waitSprayDone waits until p's spray has ended.
func waitSprayDone(t *testing.T, b *Bind, p *peer, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for spraying(b, p) {
		if time.Now().After(deadline) {
			t.Fatalf("spray still running after %v", within)
		}
		<-tick.C
	}
}

// TestBirthdaySpray: a call-me-maybe through the relay that names a
// hard-NAT IP starts a spray of exactly sprayProbes distinct ports of that
// IP (none below sprayPortMin), no faster than sprayBatch per sprayEvery;
// another call-me-maybe within birthdayEvery starts none.
func TestBirthdaySpray(t *testing.T) {
	b, p, peerKey, peerDisco, c := sprayBind(t)
	b.DeliverRelayed(1, peerKey, cmmFrom(b, peerDisco, sprayTarget))
	if !spraying(b, p) {
		t.Fatal("call-me-maybe through the relay naming a hard-NAT IP: no spray")
	}
	// The spray ends once its window passes (no probe is answered);
	// poll the counter until every probe went out, then stop the bind.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if n, _, _, _ := c.count(); n >= sprayProbes || time.Now().After(deadline) {
			break
		}
		<-tick.C
	}
	sprayed := func() int64 {
		b.bmu.Lock()
		defer b.bmu.Unlock()
		return p.bday.sprayed
	}
	before := sprayed()
	b.DeliverRelayed(1, peerKey, cmmFrom(b, peerDisco, sprayTarget))
	if got := sprayed(); got != before {
		t.Error("a second call-me-maybe within birthdayEvery started another spray")
	}
	b.Close()
	probes, distinct, low, span := c.count()
	t.Logf("%d probes to %d ports in %v", probes, distinct, span)
	if probes != sprayProbes || distinct != sprayProbes || low != 0 {
		t.Errorf("spray sent %d probes to %d distinct ports, %d below %d; want %d to as many ports, none below",
			probes, distinct, low, sprayPortMin, sprayProbes)
	}
	// sprayBatch probes per tick of sprayEvery: the last batch goes out
	// (sprayProbes/sprayBatch - 1) ticks after the first.
	if minSpan := time.Duration(sprayProbes/sprayBatch-1) * sprayEvery; span < minSpan*9/10 {
		t.Errorf("spray took %v, want at least %v (the rate bound)", span, minSpan)
	}
}

// TestBirthdaySprayRefused: no spray for a call-me-maybe that came over
// UDP rather than through the relay, that names no hard-NAT IP, or when
// we are behind a hard NAT ourselves.
func TestBirthdaySprayRefused(t *testing.T) {
	t.Run("over UDP", func(t *testing.T) {
		b, p, _, peerDisco, _ := sprayBind(t)
		b.handleDisco(netip.AddrPortFrom(sprayTarget, sprayPeerPort), 0, key.NodePublic{}, cmmFrom(b, peerDisco, sprayTarget), nil)
		if spraying(b, p) {
			t.Error("spraying after a call-me-maybe over UDP")
		}
	})
	t.Run("no hard-NAT IP", func(t *testing.T) {
		b, p, peerKey, peerDisco, _ := sprayBind(t)
		b.DeliverRelayed(1, peerKey, cmmFrom(b, peerDisco))
		if spraying(b, p) {
			t.Error("spraying after a call-me-maybe without hard-NAT IPs")
		}
	})
	t.Run("we are hard too", func(t *testing.T) {
		b, p, peerKey, peerDisco, _ := sprayBind(t)
		b.SetHardNAT(netip.MustParseAddr("203.0.113.5"))
		b.DeliverRelayed(1, peerKey, cmmFrom(b, peerDisco, sprayTarget))
		if spraying(b, p) {
			t.Error("spraying while behind a hard NAT ourselves")
		}
	})
}

// TestBirthdaySprayStops: the spray stops once a direct path to the peer
// answers.
func TestBirthdaySprayStops(t *testing.T) {
	b, p, peerKey, peerDisco, c := sprayBind(t)
	b.DeliverRelayed(1, peerKey, cmmFrom(b, peerDisco, sprayTarget))
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if n, _, _, _ := c.count(); n >= 4*sprayBatch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no probes")
		}
		<-tick.C
	}
	// A pong from one of the ports confirms a path (as handleDisco does).
	b.mu.Lock()
	pe := b.peers[peerKey]
	b.mu.Unlock()
	b.confirmDirect(pe, netip.AddrPortFrom(sprayTarget, 50000), nil, time.Millisecond, time.Now().UnixNano())
	waitSprayDone(t, b, p, 5*time.Second)
	if n, _, _, _ := c.count(); n >= sprayProbes/2 {
		t.Errorf("spray sent %d probes after a direct path answered early, want it to stop", n)
	}
}
