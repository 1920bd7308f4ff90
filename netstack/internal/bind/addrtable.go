package bind

import (
	"encoding/binary"
	"maps"
	"net/netip"
	"sync/atomic"
)

// addrShards is how many parts the address table is split into. Each part
// is replaced whole (copy on write) when it changes, so a change to one
// peer copies about 1/addrShards of the table: at 5,000 peers with two
// addresses each, 160 entries instead of 10,000.
const addrShards = 64

// addrTable maps a datagram's source address to its endpoint. Readers
// (the receive path) take no lock; writers hold Bind.mu.
type addrTable struct {
	shards [addrShards]atomic.Pointer[map[netip.AddrPort]*Endpoint]
}

// shardOf picks ap's part of the table from the low 32 bits of its
// address and its port.
func shardOf(ap netip.AddrPort) int {
	a := ap.Addr().As16()
	h := binary.LittleEndian.Uint32(a[12:]) ^ uint32(ap.Port())*0x9e3779b1
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	return int(h % addrShards)
}

// lookup returns the endpoint for datagrams from ap, or nil.
func (t *addrTable) lookup(ap netip.AddrPort) *Endpoint {
	m := t.shards[shardOf(ap)].Load()
	if m == nil {
		return nil
	}
	return (*m)[ap]
}

// all returns a copy of the whole table (for tests).
func (t *addrTable) all() map[netip.AddrPort]*Endpoint {
	out := make(map[netip.AddrPort]*Endpoint)
	for i := range t.shards {
		if m := t.shards[i].Load(); m != nil {
			maps.Copy(out, *m)
		}
	}
	return out
}

// rebuildLocked publishes a new address table from the peer entries.
func (b *Bind) rebuildLocked() {
	var parts [addrShards]map[netip.AddrPort]*Endpoint
	for _, pe := range b.peers {
		for ap, e := range pe.eps {
			if e.isRelay() {
				continue
			}
			i := shardOf(ap)
			if parts[i] == nil {
				parts[i] = make(map[netip.AddrPort]*Endpoint)
			}
			parts[i][ap] = e
		}
	}
	for i := range parts {
		if parts[i] == nil {
			b.addrs.shards[i].Store(nil)
		} else {
			b.addrs.shards[i].Store(&parts[i])
		}
	}
}

// tableEdit is a change to the address table: endpoints to drop (if the
// table still maps their address to them) and endpoints to add.
type tableEdit struct{ del, add []*Endpoint }

// drop schedules pe's direct endpoints for removal.
func (ed *tableEdit) drop(pe *peerEntry) {
	for _, e := range pe.eps {
		if !e.isRelay() {
			ed.del = append(ed.del, e)
		}
	}
}

// keep schedules pe's direct endpoints for addition.
func (ed *tableEdit) keep(pe *peerEntry) {
	for _, e := range pe.eps {
		if !e.isRelay() {
			ed.add = append(ed.add, e)
		}
	}
}

// patchLocked publishes a copy of each part of the address table that ed
// changes, with ed applied.
func (b *Bind) patchLocked(ed *tableEdit) {
	if len(ed.del) == 0 && len(ed.add) == 0 {
		return
	}
	var parts [addrShards]map[netip.AddrPort]*Endpoint
	part := func(i int) map[netip.AddrPort]*Endpoint {
		if parts[i] == nil {
			if m := b.addrs.shards[i].Load(); m != nil {
				parts[i] = maps.Clone(*m)
			} else {
				parts[i] = make(map[netip.AddrPort]*Endpoint)
			}
		}
		return parts[i]
	}
	for _, e := range ed.del {
		if m := part(shardOf(e.src)); m[e.src] == e {
			delete(m, e.src)
		}
	}
	for _, e := range ed.add {
		part(shardOf(e.src))[e.src] = e
	}
	for i := range parts {
		if parts[i] != nil {
			b.addrs.shards[i].Store(&parts[i])
		}
	}
}
