package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// forwardTimeout is the whole time budget of one forwarded query, over every
// upstream of its route: a dead upstream costs a client SERVFAIL within it.
const forwardTimeout = 1500 * time.Millisecond

// maxInflight bounds the forwarded queries in progress at once (each holds a
// socket for up to forwardTimeout).
const maxInflight = 512

// udpBufPool holds read buffers for upstream UDP answers, large enough for any
// datagram (an upstream may ignore the EDNS0 size we advertise).
var udpBufPool = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

var (
	// errUpstream is returned when no upstream of a route gave a usable answer.
	errUpstream = errors.New("dnsserver: no upstream answered")
	// errBusy is returned when maxInflight forwarded queries are already running.
	errBusy = errors.New("dnsserver: too many forwarded queries in progress")
)

// forward sends the question (name, qtype) to resolvers in order, failing over on
// errors, timeouts, SERVFAIL and REFUSED. It returns the first usable answer and
// the upstream that gave it.
func (r *Resolver) forward(ctx context.Context, name string, qtype uint16, do, cd bool, resolvers []netip.AddrPort) (*dns.Msg, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()

	q := new(dns.Msg)
	q.Id = dns.Id()
	q.RecursionDesired = true
	q.CheckingDisabled = cd
	q.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
	q.SetEdns0(MaxUDPSize, do)
	packed, err := q.Pack()
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("dnsserver: pack upstream query: %w", err)
	}

	var errs []error
	for i, up := range resolvers {
		deadline, _ := ctx.Deadline()
		share := time.Until(deadline) / time.Duration(len(resolvers)-i)
		actx, acancel := context.WithTimeout(ctx, share)
		resp, err := r.exchange(actx, up, q, packed)
		acancel()
		if err == nil && (resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused) {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[resp.Rcode])
		}
		if err == nil {
			return resp, up, nil
		}
		errs = append(errs, fmt.Errorf("%v: %w", up, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("%w: %w", errUpstream, errors.Join(errs...))
}

// exchange asks one upstream over UDP, and again over TCP if the UDP answer is truncated.
func (r *Resolver) exchange(ctx context.Context, up netip.AddrPort, q *dns.Msg, packed []byte) (*dns.Msg, error) {
	resp, err := r.exchangeConn(ctx, "udp", up, q, packed)
	if err != nil || !resp.Truncated {
		return resp, err
	}
	return r.exchangeConn(ctx, "tcp", up, q, packed)
}

// exchangeConn sends one query on a new connection and reads the matching answer.
// Over UDP, datagrams that do not match the query's ID and question are ignored.
func (r *Resolver) exchangeConn(ctx context.Context, network string, up netip.AddrPort, q *dns.Msg, packed []byte) (*dns.Msg, error) {
	c, err := r.dial(ctx, network, up.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", network, err)
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if network == "tcp" {
		buf := make([]byte, 2+len(packed))
		binary.BigEndian.PutUint16(buf, uint16(len(packed)))
		copy(buf[2:], packed)
		if _, err := c.Write(buf); err != nil {
			return nil, fmt.Errorf("write tcp: %w", err)
		}
		var lenb [2]byte
		if _, err := io.ReadFull(c, lenb[:]); err != nil {
			return nil, fmt.Errorf("read tcp: %w", err)
		}
		msg := make([]byte, binary.BigEndian.Uint16(lenb[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return nil, fmt.Errorf("read tcp: %w", err)
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(msg); err != nil {
			return nil, fmt.Errorf("unpack tcp answer: %w", err)
		}
		if !matches(q, resp) {
			return nil, errors.New("tcp answer does not match the query")
		}
		return resp, nil
	}

	if _, err := c.Write(packed); err != nil {
		return nil, fmt.Errorf("write udp: %w", err)
	}
	bufp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bufp)
	buf := *bufp
	for {
		n, err := c.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("read udp: %w", ctx.Err())
			}
			return nil, fmt.Errorf("read udp: %w", err)
		}
		resp := new(dns.Msg)
		if resp.Unpack(buf[:n]) != nil || !matches(q, resp) {
			continue // junk or a spoofing attempt; keep waiting for the real answer
		}
		return resp, nil
	}
}

// matches reports whether resp answers q: same ID, a response, same question.
func matches(q, resp *dns.Msg) bool {
	if resp.Id != q.Id || !resp.Response || len(resp.Question) != 1 {
		return false
	}
	a, b := q.Question[0], resp.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// defaultDial dials with a plain net.Dialer.
func defaultDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
