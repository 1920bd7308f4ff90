package dnsserver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// Sizes of DNS messages.
const (
	// MaxUDPSize is the largest UDP reply either server sends, and the EDNS0
	// buffer size it advertises and uses upstream (the DNS flag day 2020 value:
	// no IP fragmentation on a 1280-byte path MTU, the overlay's).
	MaxUDPSize = 1232
	// minUDPSize is the UDP reply limit for a query without EDNS0 (RFC 1035).
	minUDPSize = dns.MinMsgSize
	// maxTCPSize is the largest message the two-byte TCP length prefix allows.
	maxTCPSize = dns.MaxMsgSize
)

// Log attribute keys.
const (
	logKeyErr      = "err"
	logKeySource   = "src"
	logKeyName     = "name"
	logKeyUpstream = "upstream"
)

// request is one admitted query, with what the answering code needs to know.
type request struct {
	msg *dns.Msg
	src netip.Addr // unmapped; invalid when the writer's address was unknown
	tcp bool
	// name is the question name, canonical (lower-case FQDN).
	name  string
	qtype uint16
}

// frontend holds the abuse rules both servers apply before answering.
type frontend struct {
	logger *slog.Logger
	allow  func(netip.Addr) bool // nil = all
	// allowClient judges the client's full address after allow; nil = all.
	allowClient func(net.Addr) bool
	limiter     *sourceLimiter
	logRate     rate.Sometimes // rate-limits logs on the per-query path
}

func newFrontend(logger *slog.Logger, allow func(netip.Addr) bool, limit rate.Limit, burst int, now func() time.Time) *frontend {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &frontend{
		logger:  logger,
		allow:   allow,
		limiter: newSourceLimiter(limit, burst, now),
		logRate: rate.Sometimes{Interval: 10 * time.Second},
	}
}

// logf logs on the per-query path, at most once every few seconds.
func (f *frontend) logf(level slog.Level, msg string, args ...any) {
	f.logRate.Do(func() { f.logger.Log(context.Background(), level, msg, args...) })
}

// serve checks req against the abuse rules, calls answer for an admitted query,
// and writes the reply, cut to the size the client allows. answer returning nil
// means send nothing.
func (f *frontend) serve(w dns.ResponseWriter, req *dns.Msg, answer func(*request) *dns.Msg) {
	if req == nil || req.Response {
		return // never answer a response: reflection loops
	}
	src, tcp := remoteInfo(w.RemoteAddr())
	if f.allow != nil && !f.allow(src) {
		f.logf(slog.LevelDebug, "dnsserver: refused query from disallowed source", logKeySource, src)
		writeReply(w, req, replyRcode(dns.RcodeRefused), tcp)
		return
	}
	if f.allowClient != nil && !f.allowClient(w.RemoteAddr()) {
		f.logf(slog.LevelWarn, "dnsserver: refused query from disallowed client", logKeySource, w.RemoteAddr().String())
		writeReply(w, req, replyRcode(dns.RcodeRefused), tcp)
		return
	}
	if !f.limiter.allow(src) {
		f.logf(slog.LevelInfo, "dnsserver: source over rate limit", logKeySource, src)
		if tcp {
			// Refuse, and close the connection: a source over its rate
			// must not keep holding one of the few TCP slots.
			writeReply(w, req, replyRcode(dns.RcodeRefused), tcp)
			w.Close()
		}
		return // over UDP, drop: an answer would feed a reflection attack
	}
	if rc, bad := checkQuery(req); bad {
		writeReply(w, req, replyRcode(rc), tcp)
		return
	}
	q := req.Question[0]
	resp := answer(&request{msg: req, src: src, tcp: tcp, name: canonical(q.Name), qtype: q.Qtype})
	if resp == nil {
		return
	}
	writeReply(w, req, resp, tcp)
}

// checkQuery returns the error rcode for a query this package will not answer.
func checkQuery(req *dns.Msg) (int, bool) {
	if req.Opcode != dns.OpcodeQuery {
		return dns.RcodeNotImplemented, true
	}
	if len(req.Question) != 1 {
		return dns.RcodeFormatError, true
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		return dns.RcodeBadVers, true
	}
	q := req.Question[0]
	if _, ok := dns.IsDomainName(q.Name); !ok {
		return dns.RcodeFormatError, true
	}
	if q.Qclass != dns.ClassINET {
		return dns.RcodeRefused, true
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		return dns.RcodeRefused, true
	case dns.TypeOPT, dns.TypeTSIG, dns.TypeTKEY, dns.TypeNone:
		return dns.RcodeFormatError, true
	}
	return 0, false
}

// remoteInfo returns the source address of a client and whether it came over TCP.
func remoteInfo(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), false
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	case nil:
		return netip.Addr{}, false
	}
	tcp := strings.HasPrefix(a.Network(), "tcp")
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap(), tcp
	}
	ip, _ := netip.ParseAddr(a.String())
	return ip.Unmap(), tcp
}

// replyRcode returns an empty reply to req with rcode rc.
func replyRcode(rc int) *dns.Msg {
	m := new(dns.Msg)
	m.Rcode = rc
	return m
}

// replyAny returns the RFC 8482 minimal answer to an ANY query for name.
func replyAny(name string, ttl uint32) *dns.Msg {
	m := new(dns.Msg)
	m.Answer = []dns.RR{&dns.HINFO{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: ttl},
		Cpu: "RFC8482",
	}}
	return m
}

// udpLimit returns the largest UDP reply req's sender accepts, never more than MaxUDPSize.
func udpLimit(req *dns.Msg) int {
	opt := req.IsEdns0()
	if opt == nil {
		return minUDPSize
	}
	return min(max(int(opt.UDPSize()), minUDPSize), MaxUDPSize)
}

// writeReply fills in resp's header from req (ID, question, flags, EDNS0) and writes
// it, truncated with the TC bit to the size the client accepts over UDP.
func writeReply(w dns.ResponseWriter, req, resp *dns.Msg, tcp bool) {
	b := packReply(req, resp, tcp)
	if b == nil {
		return
	}
	_, _ = w.Write(b)
}

// packReply finalises resp as the reply to req and packs it within the size limit.
// It returns nil if nothing should be sent.
func packReply(req, resp *dns.Msg, tcp bool) []byte {
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.RecursionDesired = req.RecursionDesired
	resp.CheckingDisabled = req.CheckingDisabled
	resp.Zero = false
	if len(req.Question) == 1 {
		resp.Question = []dns.Question{req.Question[0]}
	} else {
		resp.Question = nil
	}
	// Our own OPT only, and only if the client sent one (RFC 6891 §7).
	resp.Extra = stripMeta(resp.Extra)
	limit := maxTCPSize
	if reqOpt := req.IsEdns0(); reqOpt != nil {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.SetUDPSize(MaxUDPSize)
		opt.SetDo(reqOpt.Do())
		resp.Extra = append(resp.Extra, opt)
	} else if resp.Rcode > 0xF {
		resp.Rcode = dns.RcodeServerFailure // extended rcodes need an OPT
	}
	if !tcp {
		limit = udpLimit(req)
	}
	// Small replies go out uncompressed (cheaper to build); compress only when
	// that is what makes a reply fit.
	resp.Compress = false
	b, err := resp.Pack()
	if err == nil && len(b) <= limit {
		return b
	}
	if err == nil {
		resp.Compress = true
		if b, err = resp.Pack(); err == nil && len(b) <= limit {
			return b
		}
	}
	if err == nil {
		resp.Truncate(limit)
		resp.Compress = true
		if b, err = resp.Pack(); err == nil && len(b) <= limit {
			return b
		}
	}
	// Last resort: header and question only, with TC if it was too big.
	fallback := new(dns.Msg)
	fallback.Id, fallback.Response, fallback.Opcode = req.Id, true, req.Opcode
	fallback.RecursionDesired = req.RecursionDesired
	fallback.Question = resp.Question
	if err != nil {
		fallback.Rcode = dns.RcodeServerFailure
	} else {
		fallback.Rcode = resp.Rcode
		fallback.Truncated = true
	}
	if b, err = fallback.Pack(); err != nil || len(b) > limit {
		return nil
	}
	return b
}

// stripMeta returns rrs without OPT and TSIG records (kept out of replies: the
// OPT is rebuilt, and TSIG would stop truncation).
func stripMeta(rrs []dns.RR) []dns.RR {
	if !slices.ContainsFunc(rrs, isMeta) {
		return rrs
	}
	out := make([]dns.RR, 0, len(rrs))
	for _, rr := range rrs {
		if !isMeta(rr) {
			out = append(out, rr)
		}
	}
	return out
}

func isMeta(rr dns.RR) bool {
	t := rr.Header().Rrtype
	return t == dns.TypeOPT || t == dns.TypeTSIG || t == dns.TypeSIG
}
