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
	msg     *dns.Msg // never modified after insertion
	stored  time.Time
	expires time.Time
}

// cache is a fixed-size LRU of upstream answers honouring their TTLs.
type cache struct {
	size int

	mu    sync.Mutex // guards the following fields
	ll    *list.List // of *cacheEntry, most recent first
	items map[cacheKey]*list.Element
}

func newCache(size int) *cache {
	return &cache{size: size, ll: list.New(), items: make(map[cacheKey]*list.Element)}
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
		c.ll.Remove(el)
		delete(c.items, k)
		c.mu.Unlock()
		return nil
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()

	m := e.msg.Copy()
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
	e := &cacheEntry{key: k, msg: m.Copy(), stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		el.Value = e
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(e)
	for c.ll.Len() > c.size {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
}

// flush drops every entry.
func (c *cache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
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
