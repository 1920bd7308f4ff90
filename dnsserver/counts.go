package dnsserver

import "sync/atomic"

// QueryCounts counts the queries a Resolver answered (through ServeDNS),
// by where the answer came from.
type QueryCounts struct {
	// Local were answered from the Records (MagicDNS names, refusals of
	// names nobody forwards).
	Local uint64
	// Cached were answered from the cache of upstream answers.
	Cached uint64
	// Forwarded were answered by an upstream resolver.
	Forwarded uint64
	// Failed got SERVFAIL: no upstream answered.
	Failed uint64
}

// queryCounts are a Resolver's counters behind QueryCounts.
type queryCounts struct {
	local, cached, forwarded, failed atomic.Uint64
}

func (c *queryCounts) count(src answerSource) {
	switch {
	case src.local:
		c.local.Add(1)
	case src.cached:
		c.cached.Add(1)
	case src.upstream.IsValid():
		c.forwarded.Add(1)
	default:
		c.failed.Add(1)
	}
}

// QueryCounts returns how many queries r answered, by source.
func (r *Resolver) QueryCounts() QueryCounts {
	c := &r.counts
	return QueryCounts{Local: c.local.Load(), Cached: c.cached.Load(), Forwarded: c.forwarded.Load(), Failed: c.failed.Load()}
}
