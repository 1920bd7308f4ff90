package dnsserver

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Cache limits.
const (
	// DefaultCacheSize is the number of cached upstream answers when
	// ResolverOptions.CacheSize is zero.
	DefaultCacheSize = 4096
	// cacheBytes bounds the memory of the cache: the packed answers plus
	// cacheEntryOverhead each. Answers are kept packed, so the bound is what
	// they cost, whatever their shape (an upstream answer may be 64 KiB of
	// small records, several times that once unpacked).
	cacheBytes = 4 << 20
	// maxCacheEntry is the largest packed answer kept: larger ones (rare from
	// honest upstreams) are forwarded every time rather than let a few names
	// push everything else out.
	maxCacheEntry = 16 << 10
	// cacheEntryOverhead approximates an entry's memory beside its packed
	// answer and name: the entry, its list element and map slot.
	cacheEntryOverhead = 160
	// maxCacheTTL caps how long a positive answer is kept.
	maxCacheTTL = time.Hour
	// maxNegativeTTL caps how long NXDOMAIN and NODATA answers are kept (RFC 2308
	// allows hours; a short cap makes a new name appear soon).
	maxNegativeTTL = 5 * time.Minute
)

// cacheKey identifies a cached answer. Names are canonical.
type cacheKey struct {
	name   string
	qtype  uint16
	do, cd bool
}

type cacheEntry struct {
	key     cacheKey
	packed  []byte // the answer in wire form; never modified after insertion
	stored  time.Time
	expires time.Time
}

// cost is what e counts against the cache's byte budget.
func (e *cacheEntry) cost() int {
	return len(e.packed) + len(e.key.name) + cacheEntryOverhead
}

// cache is an LRU of upstream answers honouring their TTLs, bounded both in
// entries (size) and in bytes (maxBytes).
type cache struct {
	size     int
	maxBytes int

	mu    sync.Mutex // guards the following fields
	ll    *list.List // of *cacheEntry, most recent first
	items map[cacheKey]*list.Element
	bytes int // sum of the entries' cost
}

func newCache(size, maxBytes int) *cache {
	return &cache{size: size, maxBytes: maxBytes, ll: list.New(), items: make(map[cacheKey]*list.Element)}
}

// get returns a copy of the cached answer for k with TTLs aged to now, or nil.
func (c *cache) get(k cacheKey, now time.Time) *dns.Msg {
	if c.size <= 0 {
		return nil
	}
	c.mu.Lock()
	el, ok := c.items[k]
	if !ok {
		c.mu.Unlock()
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.removeLocked(el)
		c.mu.Unlock()
		return nil
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()

	m := new(dns.Msg)
	if err := m.Unpack(e.packed); err != nil {
		return nil // cannot happen: packed by put
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			h.Ttl -= min(h.Ttl, age)
		}
	}
	return m
}

// put stores m for k, if it is cacheable.
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time) {
	if c.size <= 0 {
		return
	}
	ttl, ok := cacheTTL(m)
	if !ok || ttl <= 0 {
		return
	}
	mc := m.Copy() // Pack may set the OPT record's extended rcode bits
	mc.Compress = true
	packed, err := mc.Pack()
	if err != nil || len(packed) > maxCacheEntry {
		return
	}
	e := &cacheEntry{key: k, packed: packed, stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeLocked(el)
	}
	c.items[k] = c.ll.PushFront(e)
	c.bytes += e.cost()
	for c.ll.Len() > c.size || c.bytes > c.maxBytes {
		c.removeLocked(c.ll.Back())
	}
}

// removeLocked drops the entry el. c.mu must be held.
func (c *cache) removeLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	c.ll.Remove(el)
	delete(c.items, e.key)
	c.bytes -= e.cost()
}

// usage returns the number of entries and their cost in bytes.
func (c *cache) usage() (entries, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len(), c.bytes
}

// flush drops every entry.
func (c *cache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
	c.bytes = 0
}

// cacheTTL returns how long m may be cached: the smallest TTL of its records for
// a positive answer; for NXDOMAIN or NODATA, the SOA's negative TTL (the lesser of
// its TTL and MINIMUM, RFC 2308 §5), capped. Truncated answers and failures are not
// cached.
func cacheTTL(m *dns.Msg) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	switch m.Rcode {
	case dns.RcodeSuccess:
		if len(m.Answer) > 0 {
			ttl := uint32(maxCacheTTL / time.Second)
			for _, sec := range [][]dns.RR{m.Answer, m.Ns} {
				for _, rr := range sec {
					ttl = min(ttl, rr.Header().Ttl)
				}
			}
			return time.Duration(ttl) * time.Second, true
		}
		fallthrough // NODATA
	case dns.RcodeNameError:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl := min(soa.Hdr.Ttl, soa.Minttl)
				return min(time.Duration(ttl)*time.Second, maxNegativeTTL), true
			}
		}
	}
	return 0, false
}
