package dnsserver

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// ResolverOptions configures a Resolver. The zero value is usable.
type ResolverOptions struct {
	// Logger receives the resolver's logs. Nil means discard.
	Logger *slog.Logger

	// Dial reaches upstream and split-DNS resolvers, with network "udp" or "tcp".
	// Nil means a plain net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// AllowSource reports whether a client address may query. Refused sources get
	// REFUSED. Nil allows every source. The node passes "is loopback or an overlay
	// peer".
	AllowSource func(netip.Addr) bool

	// AllowClient, if non-nil, is also asked about each query's client
	// address (with its port); refused clients get REFUSED. Nil allows every
	// client AllowSource admits. The node refuses clients that are its
	// netstack forwarding a peer's connection or flow to the host's loopback.
	AllowClient func(net.Addr) bool

	// OnServe, if non-nil, is called with the local address of each listener
	// and packet conn when ServeStream or ServePacket starts serving it
	// (serving true) and when it stops (false). The node keeps peers off its
	// own DNS listeners with it.
	OnServe func(addr net.Addr, serving bool)

	// RateLimit is the per-source query rate and Burst its bucket size. Zero means
	// DefaultRateLimit and DefaultBurst; rate.Inf disables the limit. Over UDP,
	// queries over the limit are dropped; over TCP they get REFUSED.
	RateLimit rate.Limit
	Burst     int

	// CacheSize is the number of upstream answers kept. Zero means
	// DefaultCacheSize; negative disables the cache. Whatever the count, the
	// cache keeps at most 4 MiB of answers and none larger than 16 KiB.
	CacheSize int

	// Now is the clock for cache and rate-limit expiry. Nil means time.Now.
	Now func() time.Time
}

// Resolver is MagicDNS: a dns.Handler that answers the overlay's names from a
// Records snapshot and forwards the rest. It is safe for concurrent use; the
// zero value is not usable, see NewResolver.
type Resolver struct {
	logger  *slog.Logger
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	now     func() time.Time
	fe      *frontend
	cache   *cache
	onServe func(net.Addr, bool) // nil: nobody to tell

	snap atomic.Pointer[snapshot] // current records; swapped whole by SetRecords

	inflight chan struct{} // semaphore: forwarded queries in progress

	flightMu sync.Mutex           // guards flights
	flights  map[cacheKey]*flight // forwarded queries in progress, shared by identical queries

	onJoinForTest func() // if non-nil, called when a query joins another's flight; set only by tests

	setMu  sync.Mutex // serialises SetRecords; guards serial
	serial uint32

	counts queryCounts // counts.go
}

// NewResolver returns a Resolver with empty Records: it answers nothing locally
// and forwards nowhere until SetRecords is called.
func NewResolver(opts ResolverOptions) *Resolver {
	r := &Resolver{
		logger:  opts.Logger,
		dial:    opts.Dial,
		now:     opts.Now,
		onServe: opts.OnServe,
	}
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	r.logger = r.logger.With("component", "dnsserver")
	if r.dial == nil {
		r.dial = defaultDial
	}
	if r.now == nil {
		r.now = time.Now
	}
	size := opts.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	r.cache = newCache(size, cacheBytes)
	r.inflight = make(chan struct{}, maxInflight)
	r.flights = make(map[cacheKey]*flight)
	r.fe = newFrontend(r.logger, opts.AllowSource, opts.RateLimit, opts.Burst, r.now)
	r.fe.allowClient = opts.AllowClient
	r.serial = uint32(r.now().Unix())
	r.snap.Store(newSnapshot(nil, r.serial))
	return r
}

// SetRecords replaces the records the Resolver answers from. The swap is atomic:
// every query that starts after SetRecords returns sees rec. rec must not be
// modified afterwards. A nil rec clears everything. When the upstreams or routes
// change, cached upstream answers are dropped.
func (r *Resolver) SetRecords(rec *Records) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	r.serial++
	next := newSnapshot(rec, r.serial)
	prev := r.snap.Swap(next)
	if !slices.EqualFunc(prev.routes, next.routes, func(a, b route) bool {
		return a.suffix == b.suffix && slices.Equal(a.resolvers, b.resolvers)
	}) {
		r.cache.flush()
	}
}

// UpdateHosts replaces the addresses of the hosts named in hosts (names
// as in Records.Hosts; no addresses removes the name) and keeps every
// other record: what SetRecords does with the last records so changed,
// at the cost of the names changed rather than of every name. IPv6
// addresses extend the locally answered reverse prefixes as SetRecords
// does; a prefix no host uses any more stays until the next SetRecords.
func (r *Resolver) UpdateHosts(hosts map[string][]netip.Addr) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	r.serial++
	r.snap.Store(r.snap.Load().withHosts(hosts, r.serial))
}

// ServeDNS answers one query; it implements dns.Handler.
func (r *Resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	r.fe.serve(w, req, func(q *request) *dns.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout+500*time.Millisecond)
		defer cancel()
		opt := q.msg.IsEdns0()
		m, src := r.answerCanonical(ctx, q.msg.Question[0].Name, q.name, q.qtype, opt != nil && opt.Do(), q.msg.CheckingDisabled)
		r.counts.count(src)
		return m
	})
}

// answerSource says where an answer came from.
type answerSource struct {
	local    bool           // from Records (or a local refusal)
	cached   bool           // from the cache of upstream answers
	upstream netip.AddrPort // the upstream that answered, if forwarded
}

// answer resolves the question (qname, qtype) and returns the reply's body; the
// caller fills in the header (packReply). qname is kept as asked for owner names.
func (r *Resolver) answer(ctx context.Context, qname string, qtype uint16, do, cd bool) (*dns.Msg, answerSource) {
	return r.answerCanonical(ctx, qname, canonical(qname), qtype, do, cd)
}

// answerCanonical is answer with name, the canonical form of qname, already known.
func (r *Resolver) answerCanonical(ctx context.Context, qname, name string, qtype uint16, do, cd bool) (*dns.Msg, answerSource) {
	s := r.snap.Load()
	if qtype == dns.TypeANY {
		m := replyAny(qname, LocalTTL)
		m.RecursionAvailable = s.forward
		return m, answerSource{local: true}
	}
	if m := s.local(qname, name, qtype); m != nil {
		m.RecursionAvailable = s.forward
		return m, answerSource{local: true}
	}
	rt, ok := s.routeFor(name)
	if !ok {
		m := replyRcode(dns.RcodeRefused)
		return m, answerSource{local: true}
	}
	if len(rt.resolvers) == 0 {
		m := replyRcode(dns.RcodeNameError)
		m.RecursionAvailable = s.forward
		return m, answerSource{local: true}
	}

	key := cacheKey{name: name, qtype: qtype, do: do, cd: cd}
	if m := r.cache.get(key, r.now()); m != nil {
		m.RecursionAvailable = true
		restoreCase(m, name, qname)
		return m, answerSource{cached: true}
	}
	resp, up, err := r.forwardShared(ctx, key, rt.resolvers)
	if err != nil {
		r.fe.logf(slog.LevelWarn, "dnsserver: forward failed", logKeyName, name, logKeyErr, err)
		m := replyRcode(dns.RcodeServerFailure)
		m.RecursionAvailable = true
		return m, answerSource{}
	}
	resp.Authoritative = false
	resp.RecursionAvailable = true
	restoreCase(resp, name, qname)
	return resp, answerSource{upstream: up}
}

// flight is one forwarded query that identical queries wait for instead of
// sending their own.
type flight struct {
	done chan struct{} // closed when the fields below are set
	resp *dns.Msg      // read-only once done
	up   netip.AddrPort
	err  error
}

// forwardShared forwards the question of key, sharing one upstream exchange among
// identical concurrent queries, and caches the answer. At most maxInflight
// exchanges run at once; past that, queries fail at once (SERVFAIL). It returns
// the caller's own copy of the answer.
func (r *Resolver) forwardShared(ctx context.Context, key cacheKey, resolvers []netip.AddrPort) (*dns.Msg, netip.AddrPort, error) {
	r.flightMu.Lock()
	if f, ok := r.flights[key]; ok {
		r.flightMu.Unlock()
		if r.onJoinForTest != nil {
			r.onJoinForTest()
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, netip.AddrPort{}, ctx.Err()
		}
		if f.err != nil {
			return nil, netip.AddrPort{}, f.err
		}
		return f.resp.Copy(), f.up, nil
	}
	f := &flight{done: make(chan struct{})}
	r.flights[key] = f
	r.flightMu.Unlock()

	select {
	case r.inflight <- struct{}{}:
		f.resp, f.up, f.err = r.forward(ctx, key.name, key.qtype, key.do, key.cd, resolvers)
		<-r.inflight
	default:
		f.err = errBusy
	}
	if f.err == nil {
		f.resp.Extra = stripMeta(f.resp.Extra)
		if s := r.snap.Load(); !s.isOverlay(f.up.Addr()) && stripOverlay(f.resp, s) {
			r.fe.logf(slog.LevelWarn, "dnsserver: dropped overlay addresses from an upstream answer (DNS rebinding)",
				logKeyName, key.name, logKeyUpstream, f.up.String())
		}
		r.cache.put(key, f.resp, r.now())
	}
	r.flightMu.Lock()
	delete(r.flights, key)
	r.flightMu.Unlock()
	close(f.done)
	if f.err != nil {
		return nil, netip.AddrPort{}, f.err
	}
	return f.resp.Copy(), f.up, nil
}

// stripOverlay removes from m the address records, and the address hints
// of SVCB and HTTPS records, that point into the overlay, and reports
// whether it removed any. It is applied to answers of resolvers that are
// not on the overlay: such a resolver has no business naming an overlay
// address, and a browser's page could otherwise reach into the mesh
// through a public name it controls (DNS rebinding).
func stripOverlay(m *dns.Msg, s *snapshot) bool {
	stripped := false
	overlayIP := func(ip net.IP) bool {
		a, ok := netip.AddrFromSlice(ip)
		return ok && s.isOverlay(a)
	}
	keep := func(rr dns.RR) bool {
		switch rr := rr.(type) {
		case *dns.A:
			return !overlayIP(rr.A)
		case *dns.AAAA:
			return !overlayIP(rr.AAAA)
		case *dns.SVCB:
			rr.Value = stripHints(rr.Value, overlayIP, &stripped)
		case *dns.HTTPS:
			rr.Value = stripHints(rr.Value, overlayIP, &stripped)
		}
		return true
	}
	for _, sec := range []*[]dns.RR{&m.Answer, &m.Ns, &m.Extra} {
		n := len(*sec)
		*sec = slices.DeleteFunc(*sec, func(rr dns.RR) bool { return !keep(rr) })
		stripped = stripped || len(*sec) != n
	}
	return stripped
}

// stripHints removes the overlay addresses from the ipv4hint and ipv6hint
// values of an SVCB record, and the hints left empty; it sets *stripped if
// it removed any.
func stripHints(kvs []dns.SVCBKeyValue, overlay func(net.IP) bool, stripped *bool) []dns.SVCBKeyValue {
	return slices.DeleteFunc(kvs, func(kv dns.SVCBKeyValue) bool {
		var hint *[]net.IP
		switch kv := kv.(type) {
		case *dns.SVCBIPv4Hint:
			hint = &kv.Hint
		case *dns.SVCBIPv6Hint:
			hint = &kv.Hint
		default:
			return false
		}
		n := len(*hint)
		*hint = slices.DeleteFunc(*hint, overlay)
		if len(*hint) != n {
			*stripped = true
		}
		return len(*hint) == 0
	})
}

// restoreCase gives records owned by the question name the case the client asked
// with (we forward lower case; some stubs check 0x20 case randomisation).
func restoreCase(m *dns.Msg, name, qname string) {
	if name == qname {
		return
	}
	for _, rr := range m.Answer {
		if h := rr.Header(); h.Name == name {
			h.Name = qname
		}
	}
}

// local returns the reply for a query answered from the snapshot, or nil when the
// query is not for a local name and should be routed. qname is the name as asked
// (used as the owner of answers) and name its canonical form.
func (s *snapshot) local(qname, name string, qtype uint16) *dns.Msg {
	if s.names.get(name) > 0 {
		return s.answerName(qname, name, qtype)
	}
	if s.inDomain(name) {
		return s.nxdomain(s.soa)
	}
	if s.underBase(name) {
		if s.domain != "" && dns.IsSubDomain(name, s.domain) {
			return &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true}} // an ancestor of the domain: NODATA
		}
		return s.nxdomain(nil)
	}
	if dns.CountLabel(name) == 1 {
		for _, d := range s.search {
			if fq := name + d; s.names.get(fq) > 0 {
				return s.answerName(qname, fq, qtype)
			}
		}
	}
	if a, ok := parseReverse(name); ok {
		if hosts := s.ptr.get(a); len(hosts) > 0 {
			m := &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true}}
			if qtype == dns.TypePTR {
				for _, h := range hosts {
					m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr(qname, dns.TypePTR, LocalTTL), Ptr: h})
				}
			}
			return m
		}
		if s.isLocalReverse(a) {
			zone := "in-addr.arpa."
			if a.Is6() {
				zone = "ip6.arpa."
			}
			soa := &dns.SOA{
				Hdr: hdr(zone, dns.TypeSOA, LocalTTL), Ns: cmp.Or(s.domain, "."), Mbox: "hostmaster." + s.domain,
				Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: LocalTTL,
			}
			return s.nxdomain(soa)
		}
	}
	return nil
}

// nxdomain returns an authoritative NXDOMAIN with soa (if any) in the authority section.
func (s *snapshot) nxdomain(soa *dns.SOA) *dns.Msg {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true, Rcode: dns.RcodeNameError}}
	if soa != nil {
		m.Ns = []dns.RR{dns.Copy(soa)}
	}
	return m
}

// answerName answers qtype for the known canonical name fq, with owner qname.
func (s *snapshot) answerName(qname, fq string, qtype uint16) *dns.Msg {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true}}
	switch qtype {
	case dns.TypeA, dns.TypeAAAA:
		for _, a := range s.hosts.get(fq) {
			if a.Is4() && qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(qname, dns.TypeA, LocalTTL), A: a.AsSlice()})
			} else if a.Is6() && qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(qname, dns.TypeAAAA, LocalTTL), AAAA: a.AsSlice()})
			}
		}
	case dns.TypeTXT:
		for _, v := range s.txt[fq] {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(qname, dns.TypeTXT, LocalTTL), Txt: splitTXT(v)})
		}
	case dns.TypeSOA:
		if fq == s.domain && s.soa != nil {
			soa := dns.Copy(s.soa)
			soa.Header().Name = qname
			m.Answer = append(m.Answer, soa)
		}
	}
	if len(m.Answer) == 0 && s.soa != nil && s.inDomain(fq) {
		m.Ns = []dns.RR{dns.Copy(s.soa)} // NODATA: SOA for negative caching (RFC 2308)
	}
	return m
}

// hdr returns an IN-class record header.
func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

// splitTXT cuts a raw TXT value into the 255-byte character-strings of RFC 1035,
// each escaped the way miekg/dns expects (backslash escapes, \DDD for other bytes).
func splitTXT(v string) []string {
	var out []string
	for {
		chunk := v[:min(len(v), 255)]
		v = v[len(chunk):]
		out = append(out, escapeTXT(chunk))
		if v == "" {
			return out
		}
	}
}

func escapeTXT(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
