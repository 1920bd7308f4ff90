package edge

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// Limits of the flow table of one ServeUDP call.
const (
	// udpMaxFlowsPerClient caps the flows of one client key (an IPv4
	// address or an IPv6 /64) on one udp route; a client's next flow
	// pushes out its own oldest. It is kept apart from MaxConnsPerClient,
	// which TCP shares, so that a few addresses cannot fill the table.
	// 64 leaves room for many users behind one carrier-grade NAT.
	udpMaxFlowsPerClient = 64
	// udpUnrepliedTimeout expires, after the client's last datagram, a flow
	// the device has never answered, as conntrack does (a device answers a
	// real client within a round trip; forged and junk sources get no
	// answer). UDPIdleTimeout applies instead if it is shorter.
	udpUnrepliedTimeout = 10 * time.Second
)

// udpTable holds the flows of one ServeUDP call, by client address. When
// a client key or the whole table is full, a new flow pushes out an older
// one rather than being refused, so filling the table locks no one out:
// first a flow the device never answered, least recently used first (junk
// and forged sources), then the least recently used answered one. Recency
// is that of the client's datagrams.
//
// Only the ServeUDP read loop adds flows, so room made by makeRoom is still
// there when add follows; the return loops remove them and mark them
// replied.
type udpTable struct {
	max, perClient int

	mu        sync.Mutex // guards the following fields
	flows     map[netip.AddrPort]*udpFlow
	byClient  map[netip.Addr][]*udpFlow // by clientKey, in no order
	unreplied list.List                 // of *udpFlow never answered, most recent at the front
	answered  list.List                 // of *udpFlow answered, most recent at the front
}

func newUDPTable(max, perClient int) *udpTable {
	return &udpTable{
		max:       max,
		perClient: perClient,
		flows:     map[netip.AddrPort]*udpFlow{},
		byClient:  map[netip.Addr][]*udpFlow{},
	}
}

// get returns the flow of src, or nil, and counts it as just used.
func (t *udpTable) get(src netip.AddrPort) *udpFlow {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.flows[src]
	if f != nil {
		t.listOfLocked(f).MoveToFront(f.elem)
	}
	return f
}

func (t *udpTable) listOfLocked(f *udpFlow) *list.List {
	if f.replied.Load() {
		return &t.answered
	}
	return &t.unreplied
}

// makeRoom removes the flows a new flow from src must push out and
// returns them, for the caller to close and release.
func (t *udpTable) makeRoom(src netip.AddrPort) []*udpFlow {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*udpFlow
	if fs := t.byClient[clientKey(src.Addr())]; len(fs) >= t.perClient && t.perClient > 0 {
		old := fs[0]
		for _, f := range fs[1:] {
			if older(f, old) {
				old = f
			}
		}
		t.removeLocked(old)
		out = append(out, old)
	}
	for len(t.flows) >= t.max && t.max > 0 {
		l := &t.unreplied
		if l.Len() == 0 {
			l = &t.answered
		}
		old := l.Back().Value.(*udpFlow)
		t.removeLocked(old)
		out = append(out, old)
	}
	return out
}

// older reports whether a should be pushed out before b: unanswered
// first, then the one whose client was silent longer.
func older(a, b *udpFlow) bool {
	if ar, br := a.replied.Load(), b.replied.Load(); ar != br {
		return !ar
	}
	return a.lastClient.Load() < b.lastClient.Load()
}

// add enters a new flow.
func (t *udpTable) add(f *udpFlow) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := clientKey(f.key.Addr())
	t.flows[f.key] = f
	t.byClient[k] = append(t.byClient[k], f)
	f.elem = t.listOfLocked(f).PushFront(f)
}

// replied marks f as answered by the device.
func (t *udpTable) replied(f *udpFlow) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f.replied.Load() {
		return
	}
	in := t.flows[f.key] == f
	if in {
		t.unreplied.Remove(f.elem)
	}
	f.replied.Store(true)
	if in {
		f.elem = t.answered.PushFront(f)
	}
}

// remove takes f out of the table, reporting whether it was in it (it is
// not once pushed out or removed before).
func (t *udpTable) remove(f *udpFlow) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flows[f.key] != f {
		return false
	}
	t.removeLocked(f)
	return true
}

func (t *udpTable) removeLocked(f *udpFlow) {
	delete(t.flows, f.key)
	t.listOfLocked(f).Remove(f.elem)
	k := clientKey(f.key.Addr())
	fs := t.byClient[k]
	for i, g := range fs {
		if g == f {
			fs[i] = fs[len(fs)-1]
			fs[len(fs)-1] = nil
			fs = fs[:len(fs)-1]
			break
		}
	}
	if len(fs) == 0 {
		delete(t.byClient, k)
	} else {
		t.byClient[k] = fs
	}
}

// removeAll empties the table and returns what it held.
func (t *udpTable) removeAll() []*udpFlow {
	t.mu.Lock()
	defer t.mu.Unlock()
	all := make([]*udpFlow, 0, len(t.flows))
	for _, f := range t.flows {
		all = append(all, f)
	}
	for _, f := range all {
		t.removeLocked(f)
	}
	return all
}
