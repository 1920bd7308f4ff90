package netstack

import (
	"net/netip"
	"slices"
	"sync"
)

// Shares of a forwarding budget (fwdBudget): what one source overlay
// address may hold, and what an edge node may (every public client of an
// edge's routes comes from the edge's one overlay address).
const (
	fwdShareDiv     = 8 // a peer: 1/8 of the total
	fwdEdgeShareDiv = 2 // an edge: 1/2
)

// fwdBudget bounds the inbound connections or flows forwarded to the host
// (each holds a host socket): in all, and per source overlay address, so
// that one peer cannot take them all and leave none for the others.
type fwdBudget struct {
	total, perSource, perEdge int

	mu   sync.Mutex // guards the following fields
	used int
	n    map[netip.Addr]int
}

func newFwdBudget(total int) *fwdBudget {
	return &fwdBudget{
		total:     total,
		perSource: max(1, total/fwdShareDiv),
		perEdge:   max(1, total/fwdEdgeShareDiv),
		n:         make(map[netip.Addr]int),
	}
}

// acquire takes one unit for src, an edge's address if edge, and reports
// whether it could; release gives it back.
func (b *fwdBudget) acquire(src netip.Addr, edge bool) bool {
	limit := b.perSource
	if edge {
		limit = b.perEdge
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used >= b.total || b.n[src] >= limit {
		return false
	}
	b.used++
	b.n[src]++
	return true
}

func (b *fwdBudget) release(src netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used--
	if b.n[src]--; b.n[src] <= 0 {
		delete(b.n, src)
	}
}

// isEdge reports whether src is an edge node's overlay address (Config.Edges).
func (e *Engine) isEdge(src netip.Addr) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Contains(e.cfg.Edges, src.Unmap())
}

// defaultMaxTCPConns is Options.MaxTCPConns when zero: a quarter of the
// open-file limit (a forwarded connection holds one host socket), at
// least 256; 4096 when the limit is unknown.
func defaultMaxTCPConns() int {
	n := fileLimit()
	if n == 0 {
		return 4096
	}
	return int(max(256, min(n/4, 1<<20)))
}
