package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

var (
	// ErrNotFound is wrapped by LookupNetIP's error for a name that does not
	// exist (or has no addresses).
	ErrNotFound = errors.New("dnsserver: no such host")
	// ErrNoUpstream is wrapped by LookupNetIP's error for a name outside the
	// overlay when no upstream resolver is configured for it.
	ErrNoUpstream = errors.New("dnsserver: no upstream resolver for name")
	// ErrInvalidName is returned for a name that is not a valid domain name.
	ErrInvalidName = errors.New("dnsserver: invalid domain name")
)

// LookupNetIP returns the addresses of host, IPv4 first. host may be an IP
// literal, a short name resolved through the search domains ("beta"), an overlay
// FQDN, or any other name, resolved through the routes and upstreams (and the
// cache). Short names are never sent upstream. The error is a *net.DNSError that
// wraps ErrNotFound for unknown names, ErrNoUpstream when nothing can resolve an
// outside name, and the upstream failure otherwise.
func (r *Resolver) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(host, "]"), "["), ".")
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	fail := func(err error) error {
		return &net.DNSError{
			Err: err.Error(), Name: host, UnwrapErr: err,
			IsNotFound: errors.Is(err, ErrNotFound), IsTimeout: errors.Is(err, context.DeadlineExceeded),
		}
	}
	if _, ok := dns.IsDomainName(host); !ok || host == "" {
		return nil, fail(fmt.Errorf("%w: %w", ErrNotFound, ErrInvalidName))
	}
	fq := canonical(host)
	if fq == "localhost." {
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}, nil
	}
	s := r.snap.Load()
	local := ""
	switch {
	case s.names.get(fq) > 0:
		local = fq
	case s.inDomain(fq), s.underBase(fq):
		return nil, fail(ErrNotFound)
	case dns.CountLabel(fq) == 1:
		for _, d := range s.search {
			if s.names.get(fq+d) > 0 {
				local = fq + d
				break
			}
		}
		if local == "" {
			return nil, fail(ErrNotFound)
		}
	}
	if local != "" {
		var v4, v6 []netip.Addr
		for _, a := range s.hosts.get(local) {
			if a.Is4() {
				v4 = append(v4, a)
			} else {
				v6 = append(v6, a)
			}
		}
		if len(v4)+len(v6) == 0 {
			return nil, fail(ErrNotFound)
		}
		return append(v4, v6...), nil
	}
	if rt, ok := s.routeFor(fq); !ok {
		return nil, fail(ErrNoUpstream)
	} else if len(rt.resolvers) == 0 {
		return nil, fail(ErrNotFound)
	}

	type result struct {
		m   *dns.Msg
		src answerSource
	}
	aaaa := make(chan result, 1)
	go func() {
		m, src := r.answer(ctx, fq, dns.TypeAAAA, false, false)
		aaaa <- result{m, src}
	}()
	m4, _ := r.answer(ctx, fq, dns.TypeA, false, false)
	res6 := <-aaaa
	var addrs []netip.Addr
	for _, m := range []*dns.Msg{m4, res6.m} {
		for _, rr := range m.Answer {
			switch rr := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(rr.A); ok {
					addrs = append(addrs, a.Unmap())
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
					addrs = append(addrs, a)
				}
			}
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(fmt.Errorf("dnsserver: lookup %s: %w", host, err))
	}
	if m4.Rcode == dns.RcodeServerFailure && res6.m.Rcode == dns.RcodeServerFailure {
		return nil, fail(errUpstream)
	}
	return nil, fail(ErrNotFound)
}

// QueryResult is the printable outcome of Resolver.Exchange.
type QueryResult struct {
	// Name is the question name as an FQDN, and Type its type ("A").
	Name, Type string
	// Rcode is the response code ("NOERROR", "NXDOMAIN", "SERVFAIL", ...).
	Rcode string
	// Source says who answered: "local" (the overlay's records), "cache", or the
	// upstream's address ("192.0.2.53:53"). Empty when no upstream answered.
	Source string
	// Answer and Authority are the records of those sections.
	Answer, Authority []Answer
}

// Answer is one resource record in printable form.
type Answer struct {
	Name string
	Type string
	TTL  uint32
	// Data is the record's data in zone-file form ("100.64.0.2", "10 mail.example.com.").
	Data string
}

// String formats r as a few lines of text, like a short dig answer.
func (r *QueryResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, ";; %s %s: %s", r.Name, r.Type, r.Rcode)
	if r.Source != "" {
		fmt.Fprintf(&b, " (from %s)", r.Source)
	}
	b.WriteByte('\n')
	for _, sec := range [][]Answer{r.Answer, r.Authority} {
		for _, a := range sec {
			fmt.Fprintf(&b, "%s\t%d\tIN\t%s\t%s\n", a.Name, a.TTL, a.Type, a.Data)
		}
	}
	return b.String()
}

// Exchange resolves one question the way a client's query would be answered
// (records, search domains, routes, cache), without the per-source abuse rules,
// for `beam dns query`. qtype is a DNS type code (see ParseType); zero means A, or
// PTR when name is an IP address. A negative answer is a result, not an error.
func (r *Resolver) Exchange(ctx context.Context, name string, qtype uint16) (*QueryResult, error) {
	if a, err := netip.ParseAddr(name); err == nil && (qtype == 0 || qtype == dns.TypePTR) {
		rev, err := dns.ReverseAddr(a.String())
		if err != nil {
			return nil, fmt.Errorf("dnsserver: reverse name of %s: %w", a, err)
		}
		name, qtype = rev, dns.TypePTR
	}
	if qtype == 0 {
		qtype = dns.TypeA
	}
	fq := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fq); !ok || name == "" {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	m, src := r.answer(ctx, fq, qtype, false, false)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dnsserver: exchange %s: %w", fq, err)
	}
	res := &QueryResult{Name: fq, Type: typeString(qtype), Rcode: rcodeString(m.Rcode)}
	switch {
	case src.local:
		res.Source = "local"
	case src.cached:
		res.Source = "cache"
	case src.upstream.IsValid():
		res.Source = src.upstream.String()
	}
	res.Answer = printable(m.Answer)
	res.Authority = printable(m.Ns)
	return res, nil
}

func printable(rrs []dns.RR) []Answer {
	var out []Answer
	for _, rr := range rrs {
		h := rr.Header()
		out = append(out, Answer{
			Name: h.Name,
			Type: typeString(h.Rrtype),
			TTL:  h.Ttl,
			Data: strings.TrimPrefix(rr.String(), h.String()),
		})
	}
	return out
}

func typeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

// ParseType returns the DNS type code for a mnemonic ("A", "aaaa", "TXT") or the
// generic "TYPE65" form.
func ParseType(s string) (uint16, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	if t, ok := dns.StringToType[u]; ok {
		return t, nil
	}
	if n, ok := strings.CutPrefix(u, "TYPE"); ok {
		if v, err := strconv.ParseUint(n, 10, 16); err == nil {
			return uint16(v), nil
		}
	}
	return 0, fmt.Errorf("dnsserver: unknown record type %q", s)
}
