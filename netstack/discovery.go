package netstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// Endpoint discovery timing.
const (
	// stunEvery is how often the STUN mapping is refreshed while the node
	// is active: under the usual 30 s UDP NAT timeout, so the mapping
	// peers were told about stays open.
	stunEvery = 20 * time.Second
	// stunEveryIdle is the refresh interval once nothing was sent for
	// idleAfter.
	stunEveryIdle = 60 * time.Second
	idleAfter     = 2 * time.Minute
	// stunTimeout bounds one round of STUN requests.
	stunTimeout = 2 * time.Second
	// stunRetransmit is when an unanswered request is sent again.
	stunRetransmit = 500 * time.Millisecond
	// homeSwitchRatio and homeSwitchMin are the home relay hysteresis:
	// another region becomes home only if its latency is below
	// homeSwitchRatio of the current one's and lower by homeSwitchMin.
	homeSwitchRatio = 0.7
	homeSwitchMin   = 10 * time.Millisecond
	// maxSTUNServers bounds the STUN servers one round asks.
	maxSTUNServers = 16
)

// discovery is the engine's endpoint discovery: STUN requests sent from
// the bind's socket to the relay map's STUN servers, the node's endpoints
// (interface addresses plus STUN mappings), relay latencies and the home
// region chosen from them. discoveryLoop owns the refresh; onSTUN
// (called by the bind's receive goroutines) hands answers to the round
// waiting for them.
type discovery struct {
	wake chan struct{} // Reconfig asks for a refresh; capacity 1

	mu        sync.Mutex // guards the following fields
	stun      map[int][]string
	urls      map[int]bool // regions with a relay
	hint      int
	home      int
	eps       []netip.AddrPort
	reported  bool
	latency   map[int]time.Duration
	pending   map[[12]byte]*stunTx
	lastLocal []netip.AddrPort
}

func (d *discovery) init() {
	d.wake = make(chan struct{}, 1)
	d.pending = make(map[[12]byte]*stunTx)
}

// stunTx is one STUN request waiting for its answer.
type stunTx struct {
	region int
	server netip.AddrPort
	sent   time.Time
	res    chan<- stunResult
}

// stunResult is one STUN answer.
type stunResult struct {
	region int
	server netip.AddrPort
	mapped netip.AddrPort
	rtt    time.Duration
}

// setDERPMapLocked applies the relay map and home hint (e.mu held).
func (e *Engine) setDERPMapLocked(dm map[int]DERPRegion, hint int) {
	urls := make(map[int][]string)
	stun := make(map[int][]string)
	for id, r := range dm {
		if len(r.URLs) > 0 {
			urls[id] = slices.Clone(r.URLs)
		}
		if len(r.STUNAddrs) > 0 {
			stun[id] = slices.Clone(r.STUNAddrs)
		}
	}
	d := &e.disc
	d.mu.Lock()
	changed := !maps.EqualFunc(d.stun, stun, slices.Equal) || d.hint != hint || len(d.urls) != len(urls)
	d.stun = stun
	d.urls = make(map[int]bool, len(urls))
	for id := range urls {
		d.urls[id] = true
	}
	if d.hint != hint || (d.home != 0 && !d.urls[d.home]) || d.home == 0 {
		d.hint = hint
		d.home = 0
		if d.urls[hint] {
			d.home = hint
		}
	}
	home := d.home
	d.mu.Unlock()
	e.relays.setMap(urls, home, hint)
	if changed {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// DiscoPublic returns the node's disco public key, which the node reports
// to the coordinator (coordclient.Options.DiscoKey) so peers can seal
// disco messages to it.
func (e *Engine) DiscoPublic() key.DiscoPublic { return e.opts.DiscoKey.Public() }

// Endpoints returns the node's current endpoints: the public addresses
// STUN reported (first) and the interface addresses, all with the
// WireGuard port. Before the first STUN answer it is LocalEndpoints.
func (e *Engine) Endpoints() []netip.AddrPort {
	e.disc.mu.Lock()
	eps := slices.Clone(e.disc.eps)
	e.disc.mu.Unlock()
	if eps == nil {
		return e.LocalEndpoints()
	}
	return eps
}

// HomeDERP returns the node's home relay region; 0 if none.
func (e *Engine) HomeDERP() int {
	e.disc.mu.Lock()
	defer e.disc.mu.Unlock()
	return e.disc.home
}

// onSTUN receives a STUN answer from the bind.
func (e *Engine) onSTUN(pkt []byte, src netip.AddrPort) {
	tx, mapped, err := derp.ParseSTUNResponse(pkt)
	if err != nil {
		return
	}
	d := &e.disc
	d.mu.Lock()
	t := d.pending[tx]
	if t != nil && t.server == src {
		delete(d.pending, tx)
	} else {
		t = nil
	}
	d.mu.Unlock()
	if t == nil {
		return
	}
	select {
	case t.res <- stunResult{region: t.region, server: t.server, mapped: mapped, rtt: time.Since(t.sent)}:
	default:
	}
}

// discoveryLoop refreshes the endpoints and home region: at once, when
// the relay map changes, when the interface addresses change, and every
// stunEvery (stunEveryIdle when idle). It also drives the bind's
// housekeeping once a second.
func (e *Engine) discoveryLoop() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	next := time.Now()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		case <-e.disc.wake:
			next = time.Now()
		}
		e.bind.Maintain()
		local := e.LocalEndpoints()
		e.disc.mu.Lock()
		if !slices.Equal(local, e.disc.lastLocal) {
			e.disc.lastLocal = local
			next = time.Now()
		}
		e.disc.mu.Unlock()
		if time.Now().Before(next) {
			continue
		}
		results := e.stunRound(e.ctx)
		if e.ctx.Err() != nil {
			return
		}
		e.applyRound(local, results)
		every := stunEvery
		if time.Since(e.bind.LastSend()) > idleAfter {
			every = stunEveryIdle
		}
		next = time.Now().Add(every)
	}
}

// applyRound computes endpoints, latencies and the home region from a
// STUN round and reports changes.
func (e *Engine) applyRound(local []netip.AddrPort, results []stunResult) {
	var eps []netip.AddrPort
	seen := make(map[netip.AddrPort]bool)
	lat := make(map[int]time.Duration)
	for _, r := range results {
		if l, ok := lat[r.region]; !ok || r.rtt < l {
			lat[r.region] = r.rtt
		}
		if r.mapped.IsValid() && !seen[r.mapped] {
			seen[r.mapped] = true
			eps = append(eps, r.mapped)
		}
	}
	if ap := e.portMapEndpoint(); ap.IsValid() && !seen[ap] {
		seen[ap] = true
		eps = append(eps, ap)
	}
	for _, ap := range local {
		if !seen[ap] {
			seen[ap] = true
			eps = append(eps, ap)
		}
	}
	e.bind.SetHardNAT(hardNAT(results))
	d := &e.disc
	d.mu.Lock()
	d.latency = lat
	home := chooseHome(d.home, d.hint, lat, d.urls)
	changed := !d.reported || home != d.home || !slices.Equal(eps, d.eps)
	d.home = home
	d.eps = eps
	d.reported = true
	hint := d.hint
	d.mu.Unlock()
	if !changed {
		return
	}
	e.log.Info("endpoints", "endpoints", fmt.Sprint(eps), "home_derp", home)
	e.bind.SetLocalEndpoints(eps)
	e.relays.setHome(home, hint)
	if e.opts.OnEndpoints != nil {
		e.opts.OnEndpoints(slices.Clone(eps), home)
	}
}

// hardNAT returns the public IPv4 address STUN saw if two or more servers
// (different addresses, or ports of one address) saw different mappings:
// the NAT maps each destination to another port, and hole punching needs
// birthday probing. Otherwise, or with fewer than two servers to compare,
// it returns the zero Addr.
func hardNAT(results []stunResult) netip.Addr {
	var first netip.AddrPort
	servers := make(map[netip.AddrPort]bool)
	varies := false
	for _, r := range results {
		if !r.mapped.Addr().Is4() {
			continue
		}
		servers[r.server] = true
		if !first.IsValid() {
			first = r.mapped
		} else if r.mapped != first {
			varies = true
		}
	}
	if !varies || len(servers) < 2 {
		return netip.Addr{}
	}
	return first.Addr()
}

// chooseHome picks the home relay region: the current one unless another
// region with a relay is clearly faster (homeSwitchRatio and
// homeSwitchMin) or the current one did not answer.
func chooseHome(cur, hint int, lat map[int]time.Duration, urls map[int]bool) int {
	best, bestLat := 0, time.Duration(0)
	for id, l := range lat {
		if !urls[id] {
			continue
		}
		if best == 0 || l < bestLat || (l == bestLat && id < best) {
			best, bestLat = id, l
		}
	}
	if !urls[cur] {
		cur = 0
	}
	if best == 0 {
		if cur != 0 {
			return cur
		}
		if urls[hint] {
			return hint
		}
		return lowest(urls)
	}
	if cur == 0 {
		return best
	}
	cl, ok := lat[cur]
	if !ok {
		return best
	}
	if float64(bestLat) < float64(cl)*homeSwitchRatio && cl-bestLat > homeSwitchMin {
		return best
	}
	return cur
}

func lowest(m map[int]bool) int {
	out := 0
	for id := range m {
		if out == 0 || id < out {
			out = id
		}
	}
	return out
}

// stunServers resolves the STUN servers of the relay map.
func (e *Engine) stunServers(ctx context.Context) map[int][]netip.AddrPort {
	e.disc.mu.Lock()
	stun := maps.Clone(e.disc.stun)
	e.disc.mu.Unlock()
	out := make(map[int][]netip.AddrPort)
	n := 0
	for _, id := range slices.Sorted(maps.Keys(stun)) {
		for _, s := range stun[id] {
			if n >= maxSTUNServers {
				break
			}
			if ap, err := netip.ParseAddrPort(s); err == nil {
				out[id] = append(out[id], netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
				n++
				continue
			}
			host, port, err := net.SplitHostPort(s)
			if err != nil {
				continue
			}
			pn, err := net.LookupPort("udp", port)
			if err != nil {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, stunTimeout)
			ips, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
			cancel()
			if err != nil {
				e.log.Debug("resolve STUN server", "server", s, "err", err)
				continue
			}
			for _, ip := range ips {
				out[id] = append(out[id], netip.AddrPortFrom(ip.Unmap(), uint16(pn)))
				n++
			}
		}
	}
	return out
}

// stunRound sends a Binding request from the bind's socket to every STUN
// server, retransmits once, and returns the answers that came within
// stunTimeout.
func (e *Engine) stunRound(ctx context.Context) []stunResult {
	servers := e.stunServers(ctx)
	total := 0
	for _, ss := range servers {
		total += len(ss)
	}
	if total == 0 {
		return nil
	}
	res := make(chan stunResult, total)
	type req struct {
		tx  [12]byte
		pkt []byte
		dst netip.AddrPort
	}
	var reqs []req
	d := &e.disc
	for region, ss := range servers {
		for _, s := range ss {
			tx, pkt := derp.STUNBindingRequest()
			d.mu.Lock()
			d.pending[tx] = &stunTx{region: region, server: s, sent: time.Now(), res: res}
			d.mu.Unlock()
			reqs = append(reqs, req{tx, pkt, s})
		}
	}
	defer func() {
		d.mu.Lock()
		for _, r := range reqs {
			delete(d.pending, r.tx)
		}
		d.mu.Unlock()
	}()
	for _, r := range reqs {
		e.bind.WriteTo(r.pkt, r.dst)
	}
	timeout := time.NewTimer(stunTimeout)
	defer timeout.Stop()
	retry := time.NewTimer(stunRetransmit)
	defer retry.Stop()
	var out []stunResult
	for len(out) < total {
		select {
		case r := <-res:
			out = append(out, r)
		case <-retry.C:
			// A retransmission keeps the transaction ID; the RTT of its
			// answer is measured from the first send, an overestimate
			// that only matters on lossy paths.
			d.mu.Lock()
			var again []req
			for _, r := range reqs {
				if d.pending[r.tx] != nil {
					again = append(again, r)
				}
			}
			d.mu.Unlock()
			for _, r := range again {
				e.bind.WriteTo(r.pkt, r.dst)
			}
		case <-timeout.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// NetcheckReport describes the node's network as STUN and the relays see
// it.
type NetcheckReport struct {
	// UDP is whether any STUN server answered over UDP.
	UDP bool
	// GlobalV4 and GlobalV6 are the node's public address and port of the
	// WireGuard socket as the STUN servers of the lowest-numbered region
	// that answered saw them (behind a hard NAT each server sees another
	// port); invalid if unknown.
	GlobalV4, GlobalV6 netip.AddrPort
	// MappingVariesByDestIP reports whether STUN servers at different
	// addresses saw different public ports (a "hard" NAT, which makes
	// hole punching unlikely). Nil: unknown (fewer than two servers
	// answered over IPv4).
	MappingVariesByDestIP *bool
	// RegionLatency is the STUN round trip to each relay region that
	// answered.
	RegionLatency map[int]time.Duration
	// PreferredDERP is the region the node uses (or would choose) as
	// home; 0 if none.
	PreferredDERP int
}

// Netcheck asks every STUN server of the relay map, from the WireGuard
// socket, and reports what they saw. It returns an error only if there
// is no STUN server to ask.
func (e *Engine) Netcheck(ctx context.Context) (NetcheckReport, error) {
	if len(e.stunServers(ctx)) == 0 {
		return NetcheckReport{}, errors.New("netstack: netcheck: the relay map has no STUN servers")
	}
	results := e.stunRound(ctx)
	// Answers arrive in any order; the report must not depend on it.
	slices.SortFunc(results, func(a, b stunResult) int {
		return cmp.Or(cmp.Compare(a.region, b.region), a.server.Compare(b.server))
	})
	rep := NetcheckReport{UDP: len(results) > 0, RegionLatency: make(map[int]time.Duration)}
	mapped4 := make(map[netip.AddrPort]netip.AddrPort) // server -> mapping
	for _, r := range results {
		if l, ok := rep.RegionLatency[r.region]; !ok || r.rtt < l {
			rep.RegionLatency[r.region] = r.rtt
		}
		switch {
		case r.mapped.Addr().Is4():
			mapped4[r.server] = r.mapped
			if !rep.GlobalV4.IsValid() {
				rep.GlobalV4 = r.mapped
			}
		case r.mapped.Addr().Is6() && !rep.GlobalV6.IsValid():
			rep.GlobalV6 = r.mapped
		}
	}
	if len(mapped4) >= 2 {
		varies := false
		for _, m := range mapped4 {
			if m != rep.GlobalV4 {
				varies = true
			}
		}
		rep.MappingVariesByDestIP = &varies
	}
	d := &e.disc
	d.mu.Lock()
	rep.PreferredDERP = chooseHome(d.home, d.hint, rep.RegionLatency, d.urls)
	d.mu.Unlock()
	return rep, nil
}

// PingResult is the answer to Engine.Ping.
type PingResult struct {
	// Peer is the node key of the peer that answered.
	Peer key.NodePublic
	// Latency is the round trip of the disco ping.
	Latency time.Duration
	// Path is "direct", "peer-relay" or "relay", the path the answer
	// came over.
	Path string
	// Via is the peer relay server's node for a "peer-relay" path.
	Via key.NodePublic
	// Endpoint is the peer's UDP address for a direct path.
	Endpoint netip.AddrPort
	// DERPRegion is the relay region for a relayed path.
	DERPRegion int
}

// Ping sends a disco ping to the peer that owns the overlay address ip,
// over the path traffic to it takes now, and waits for the answer (or
// ctx). The peer must have a disco key.
func (e *Engine) Ping(ctx context.Context, ip netip.Addr) (PingResult, error) {
	ip = ip.Unmap()
	e.mu.Lock()
	var (
		k     key.NodePublic
		found bool
		bits  = -1
	)
	for _, p := range e.cfg.Peers {
		for _, pfx := range p.AllowedIPs {
			if pfx.Contains(ip) && pfx.Bits() > bits {
				k, found, bits = p.Key, true, pfx.Bits()
			}
		}
	}
	e.mu.Unlock()
	if !found {
		return PingResult{}, fmt.Errorf("netstack: ping %v: no peer has that address", ip)
	}
	r, err := e.bind.Ping(ctx, k)
	if err != nil {
		return PingResult{}, fmt.Errorf("netstack: ping %v: %w", ip, err)
	}
	return PingResult{Peer: k, Latency: r.Latency, Path: r.Path, Via: r.Via, Endpoint: r.Endpoint, DERPRegion: r.Region}, nil
}
