package coordclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Several coordinators. Replicas of one coordinator on one database
// (beam coordinator --db postgres://...) serve the same network, so a
// node may talk to any of them. Options.ServerURL names them, separated by
// commas; a URL whose host name resolves to several addresses counts as
// one coordinator per address. The client talks to one target at a time
// (requests and the map stream alike) and moves to the next when it
// cannot reach it or its stream dies; see RunResponses.

// dialTimeout bounds each connection attempt to a target when there are
// several, so one whose machine is gone (no answer at all) costs seconds,
// not the kernel's minutes-long TCP timeout, before the next is tried.
const dialTimeout = 5 * time.Second

// SplitServerURLs splits s, one coordinator URL or several separated by
// commas, into its URLs, each checked to be http(s)://host[:port] and
// without a trailing slash. A path (other than "/"), query or fragment
// is refused: the coordinator serves its API at the root, and a URL with
// a path would only fail later with a 404. Duplicates are dropped.
func SplitServerURLs(s string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimRight(strings.TrimSpace(part), "/")
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("coordclient: bad server URL %q: want http(s)://host[:port]", part)
		}
		if u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("coordclient: bad server URL %q: a coordinator URL has no path, query or user; want http(s)://host[:port]", part)
		}
		if !slices.Contains(out, part) {
			out = append(out, part)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("coordclient: no server URL")
	}
	return out, nil
}

// SameServers reports whether the URL lists a and b (as SplitServerURLs
// takes them) name a coordinator in common: a node registered through
// one list is known to the other.
func SameServers(a, b string) bool {
	as, err := SplitServerURLs(a)
	if err != nil {
		return a == b
	}
	bs, err := SplitServerURLs(b)
	if err != nil {
		return a == b
	}
	for _, u := range as {
		if slices.Contains(bs, u) {
			return true
		}
	}
	return false
}

// target is one coordinator the client may talk to.
type target struct {
	// base is the URL as given: its host name goes in the Host header and
	// the TLS server name even when addr pins the address dialed.
	base *url.URL
	// addr, if valid, is the address of base's host this target dials.
	addr netip.Addr
	hc   *http.Client

	// Guarded by Client.mu: the target's boot epoch (nil if it has
	// none), and whether it and the key were asked for since the last
	// forgetKey (Client.machineKey).
	epoch []byte
	keyed bool
}

func (t *target) url(path string) string { return t.base.String() + path }

// String names the target for logs and status: its URL, and the address
// dialed when the name has several.
func (t *target) String() string {
	if t.addr.IsValid() {
		return t.base.String() + " (" + t.addr.String() + ")"
	}
	return t.base.String()
}

// targetsLocked returns the current targets, expanding the URLs the first
// time. c.mu held.
func (c *Client) targetsLocked() []*target {
	if len(c.targets) == 0 {
		for _, u := range c.bases {
			c.targets = append(c.targets, &target{base: u, hc: c.clientFor(u.Host, netip.Addr{})})
		}
	}
	return c.targets
}

// current returns the target the client talks to now.
func (c *Client) current() *target {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.targetsLocked()
	return ts[c.cur%len(ts)]
}

// multi reports whether there is more than one target.
func (c *Client) multi() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.targetsLocked()) > 1
}

// advance moves the client to the target after t, unless another caller
// already moved it off t. It reports the number of targets.
func (c *Client) advance(t *target) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.targetsLocked()
	if ts[c.cur%len(ts)] == t {
		c.cur = (c.cur + 1) % len(ts)
	}
	return len(ts)
}

// resolve expands the URLs again: a host name with several addresses
// becomes one target per address, in random order (IPv4 first) so that
// nodes spread over them. It is called before each round over the targets after all
// failed, so a changed DNS answer is taken. The client keeps the first
// target of the new list. Lookup errors leave a name unresolved (dialed
// by name).
func (c *Client) resolve(ctx context.Context) {
	if c.baseTransport == nil {
		return // the caller's transport cannot be told which address to dial
	}
	var ts []*target
	for _, u := range c.bases {
		host := u.Hostname()
		if _, err := netip.ParseAddr(host); err == nil {
			ts = append(ts, &target{base: u, hc: c.clientFor(u.Host, netip.Addr{})})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, dialTimeout)
		addrs, err := c.lookup(lctx, "ip", host)
		cancel()
		if err != nil || len(addrs) < 2 {
			ts = append(ts, &target{base: u, hc: c.clientFor(u.Host, netip.Addr{})})
			continue
		}
		// Random order, IPv4 first: each address is dialed alone, without
		// the fallback between families a dial by name has, and a broken
		// IPv6 path costs a whole dial timeout.
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
		slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
			switch a4, b4 := a.Unmap().Is4(), b.Unmap().Is4(); {
			case a4 == b4:
				return 0
			case a4:
				return -1
			}
			return 1
		})
		for _, a := range addrs[:min(len(addrs), maxAddrsPerName)] {
			ts = append(ts, &target{base: u, addr: a.Unmap(), hc: c.clientFor(u.Host, a.Unmap())})
		}
	}
	c.dropClientsBut(ts)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.targets, c.cur = ts, 0
}

// maxAddrsPerName bounds the addresses of one coordinator name the client
// tries: a name whose answer changes each time (or a hostile resolver)
// would otherwise grow its clients and a round over them without bound.
const maxAddrsPerName = 8

// dropClientsBut forgets the cached HTTP clients of targets not in ts,
// closing their idle connections (a stream still on one keeps going).
func (c *Client) dropClientsBut(ts []*target) {
	keep := make(map[*http.Client]bool, len(ts))
	for _, t := range ts {
		keep[t.hc] = true
	}
	c.hcMu.Lock()
	defer c.hcMu.Unlock()
	for k, hc := range c.hcs {
		if !keep[hc] {
			delete(c.hcs, k)
			hc.CloseIdleConnections()
		}
	}
}

// clientFor returns the HTTP client for host (host[:port] of a URL),
// dialing addr instead of the host's name when addr is valid. With one
// URL and one address it is Options.HTTPClient itself; otherwise a client
// per target (cached) on a clone of its transport whose dials are bounded
// by dialTimeout, so that each target has its own connections.
func (c *Client) clientFor(host string, addr netip.Addr) *http.Client {
	if c.baseTransport == nil || (len(c.bases) == 1 && !addr.IsValid()) {
		return c.hc
	}
	k := host + "|" + addr.String()
	c.hcMu.Lock()
	defer c.hcMu.Unlock()
	if hc := c.hcs[k]; hc != nil {
		return hc
	}
	tr := c.baseTransport.Clone()
	dial := tr.DialContext
	if dial == nil {
		dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		if addr.IsValid() {
			_, port, err := net.SplitHostPort(address)
			if err != nil {
				return nil, err
			}
			address = net.JoinHostPort(addr.String(), port)
		}
		ctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		return dial(ctx, network, address)
	}
	hc := *c.hc
	hc.Transport = tr
	if c.hcs == nil {
		c.hcs = make(map[string]*http.Client)
	}
	c.hcs[k] = &hc
	return &hc
}

// ServerURL returns the URL of the coordinator the client's map stream is
// on, else of the one it talks to next (with the address dialed, when its
// name has several).
func (c *Client) ServerURL() string {
	c.mu.Lock()
	t := c.streaming
	c.mu.Unlock()
	if t == nil {
		t = c.current()
	}
	return t.String()
}

// setStreaming records the target the map stream is on (nil: none).
func (c *Client) setStreaming(t *target) {
	c.mu.Lock()
	c.streaming = t
	c.mu.Unlock()
}
