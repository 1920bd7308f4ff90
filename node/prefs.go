package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"slices"
	"strings"
	"sync"

	"beam.dev/beam/localapi/apitype"
)

// Daemon settings (apitype.Prefs) live in the persisted state and change at
// run time: SetPrefs (beam set) and Up (beam up with settings) apply them
// at once and save them, so a restarted daemon keeps them.

// hostServer is one loopback listener the daemon serves for host
// applications (SOCKS5, HTTP proxy, MagicDNS).
type hostServer struct {
	addr    string
	closers []interface{ Close() error }
	cancel  context.CancelFunc
}

// stop closes the server's sockets at once; its goroutines exit on their
// own and are waited for in Close.
func (s *hostServer) stop() {
	if s == nil {
		return
	}
	s.cancel()
	for _, c := range s.closers {
		c.Close()
	}
}

// hostServerKind names the host servers; the order is the order they are
// reported in errors.
type hostServerKind int

const (
	serverSOCKS5 hostServerKind = iota
	serverHTTPProxy
	serverDNS
	numHostServers
)

func (k hostServerKind) String() string {
	return [...]string{"socks5", "http-proxy", "dns-listen"}[k]
}

// hostServers holds the running host servers; guarded by Node.mu.
type hostServers struct {
	srv [numHostServers]*hostServer
	wg  sync.WaitGroup // the servers' goroutines; waited for in Close
}

// Prefs returns the daemon's settings.
func (n *Node) Prefs() apitype.Prefs {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.prefsLocked()
}

func (n *Node) prefsLocked() apitype.Prefs {
	st := n.st
	return apitype.Prefs{
		Hostname:     st.Hostname,
		ShieldsUp:    st.ShieldsUp,
		SOCKS5:       st.SOCKS5,
		HTTPProxy:    st.HTTPProxy,
		DNSListen:    st.DNSListen,
		DNSUpstreams: slices.Clone(st.DNSUpstreams),
		Port:         st.Port,
		Operator:     st.Operator,

		RelayServer:     st.RelayServer,
		RelayServerPort: st.RelayServerPort,

		RelayServerMaxSessions:        st.RelayServerMaxSessions,
		RelayServerMaxSessionsPerPeer: st.RelayServerMaxSessionsPerPeer,
		RelayServerSessionRate:        st.RelayServerSessionRate,
	}
}

// listenPortLocked is the WireGuard port to use: the setting, else Options.ListenPort.
func (n *Node) listenPortLocked() uint16 {
	if n.st.Port != 0 {
		return n.st.Port
	}
	return n.opts.ListenPort
}

// upstreamsLocked is the resolvers MagicDNS forwards to: the setting,
// else Options.DNSUpstreams.
func (n *Node) upstreamsLocked() []netip.AddrPort {
	if len(n.st.DNSUpstreams) > 0 {
		if ups, err := parseUpstreams(n.st.DNSUpstreams); err == nil {
			return ups
		}
	}
	return n.opts.DNSUpstreams
}

// parseUpstreams parses resolvers given as IP or IP:PORT (port 53).
func parseUpstreams(ss []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range ss {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("DNS upstream %q: want IP or IP:PORT", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out, nil
}

// cleanPatch drops empty DNS upstreams (`--dns-upstream ""` means the
// host's resolvers) and surrounding space.
func cleanPatch(p apitype.PrefsPatch) apitype.PrefsPatch {
	if p.DNSUpstreams != nil {
		ups := []string{}
		for _, u := range *p.DNSUpstreams {
			if u = strings.TrimSpace(u); u != "" {
				ups = append(ups, u)
			}
		}
		p.DNSUpstreams = &ups
	}
	return p
}

// ErrBadPrefs wraps every refusal of a setting.
var ErrBadPrefs = errors.New("bad setting")

// validatePatch checks p without changing anything.
func validatePatch(p apitype.PrefsPatch) error {
	var errs []error
	for _, f := range []struct {
		kind hostServerKind
		addr *string
	}{{serverSOCKS5, p.SOCKS5}, {serverHTTPProxy, p.HTTPProxy}, {serverDNS, p.DNSListen}} {
		if f.addr == nil || *f.addr == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(*f.addr)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%w: %s %q: want IP:PORT", ErrBadPrefs, f.kind, *f.addr))
		case !ap.Addr().IsLoopback():
			errs = append(errs, fmt.Errorf("%w: %s %s: only loopback addresses are allowed (it would open the mesh to the host's network)", ErrBadPrefs, f.kind, *f.addr))
		}
	}
	if p.DNSUpstreams != nil {
		if _, err := parseUpstreams(*p.DNSUpstreams); err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", ErrBadPrefs, err))
		}
	}
	if p.RelayServerPort != nil && p.Port != nil && *p.RelayServerPort != 0 && *p.RelayServerPort == *p.Port {
		errs = append(errs, fmt.Errorf("%w: the relay server's port %d is the WireGuard port", ErrBadPrefs, *p.Port))
	}
	errs = append(errs, validateRelayLimits(p)...)
	if p.Hostname != nil && strings.TrimSpace(*p.Hostname) == "" {
		errs = append(errs, fmt.Errorf("%w: empty hostname", ErrBadPrefs))
	}
	if p.Operator != nil && *p.Operator != "" {
		if _, err := user.Lookup(*p.Operator); err != nil {
			errs = append(errs, fmt.Errorf("%w: operator %q: %w", ErrBadPrefs, *p.Operator, err))
		}
	}
	return errors.Join(errs...)
}

// validateRelayLimits checks the peer relay limits p sets.
func validateRelayLimits(p apitype.PrefsPatch) []error {
	var errs []error
	count := func(name string, v *int) {
		if v != nil && (*v < 0 || *v > apitype.MaxRelayServerSessions) {
			errs = append(errs, fmt.Errorf("%w: %s %d: want 0 (the default) or 1 to %d", ErrBadPrefs, name, *v, apitype.MaxRelayServerSessions))
		}
	}
	count("relay server max sessions", p.RelayServerMaxSessions)
	count("relay server max sessions per peer", p.RelayServerMaxSessionsPerPeer)
	if m, pp := p.RelayServerMaxSessions, p.RelayServerMaxSessionsPerPeer; m != nil && pp != nil && *m > 0 && *pp > *m {
		errs = append(errs, fmt.Errorf("%w: relay server max sessions per peer %d is more than max sessions %d", ErrBadPrefs, *pp, *m))
	}
	if r := p.RelayServerSessionRate; r != nil && *r != 0 && (*r < apitype.MinRelayServerSessionRate || *r > apitype.MaxRelayServerSessionRate) {
		errs = append(errs, fmt.Errorf("%w: relay server session rate %d bytes/s: want 0 (the default) or %d (64 kbit/s) to %d (100 Gbit/s)", ErrBadPrefs, *r, apitype.MinRelayServerSessionRate, int64(apitype.MaxRelayServerSessionRate)))
	}
	return errs
}

// SetPrefs changes the daemon's settings, applies them at once and saves
// them. Listeners move to their new addresses (the new ones are bound
// before the old ones close; if one cannot be bound, nothing changes), a
// new WireGuard port restarts the engine, and a new hostname of a
// registered, running node asks the coordinator to rename the node, which
// it does when the name is free.
func (n *Node) SetPrefs(ctx context.Context, p apitype.PrefsPatch) (*apitype.SetPrefsResponse, error) {
	n.upMu.Lock()
	defer n.upMu.Unlock()
	p = cleanPatch(p)
	if err := validatePatch(p); err != nil {
		return nil, err
	}
	n.mu.Lock()
	oldHost := n.st.Hostname
	if err := n.applyPrefsLocked(p); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	rename := p.Hostname != nil && n.st.Hostname != oldHost && n.st.Registered && n.sess != nil
	priv := n.st.PrivateKey
	n.mu.Unlock()

	resp := &apitype.SetPrefsResponse{}
	if rename {
		r, err := n.register(ctx, priv, "", false)
		if err != nil {
			return nil, fmt.Errorf("hostname %q saved, but the rename at the coordinator failed (beam up retries it): %w", n.Prefs().Hostname, err)
		}
		resp.Name, resp.NameChanged = r.Name, r.NameChanged
	}
	resp.Prefs = n.Prefs()
	return resp, nil
}

// applyPrefsLocked applies a validated patch and saves the state.
func (n *Node) applyPrefsLocked(p apitype.PrefsPatch) error {
	addrs := [numHostServers]*string{p.SOCKS5, p.HTTPProxy, p.DNSListen}
	if err := n.moveHostServersLocked(addrs); err != nil {
		return err
	}
	if p.Hostname != nil {
		n.st.Hostname = strings.TrimSpace(*p.Hostname)
	}
	if p.ShieldsUp != nil {
		n.st.ShieldsUp = *p.ShieldsUp
	}
	if p.DNSUpstreams != nil {
		n.st.DNSUpstreams = slices.Clone(*p.DNSUpstreams)
	}
	if p.Operator != nil {
		n.st.Operator = *p.Operator
	}
	relay, relayPort := n.st.RelayServer, n.st.RelayServerPort
	if p.RelayServer != nil {
		n.st.RelayServer = *p.RelayServer
	}
	if p.RelayServerPort != nil {
		n.st.RelayServerPort = *p.RelayServerPort
	}
	relayChanged := relay != n.st.RelayServer || n.st.RelayServer && relayPort != n.st.RelayServerPort
	limitsChanged := false
	for _, f := range []struct {
		p  *int
		st *int
	}{{p.RelayServerMaxSessions, &n.st.RelayServerMaxSessions}, {p.RelayServerMaxSessionsPerPeer, &n.st.RelayServerMaxSessionsPerPeer}} {
		if f.p != nil && *f.p != *f.st {
			*f.st, limitsChanged = *f.p, true
		}
	}
	if r := p.RelayServerSessionRate; r != nil && *r != n.st.RelayServerSessionRate {
		n.st.RelayServerSessionRate, limitsChanged = *r, true
	}
	if limitsChanged && !relayChanged && n.engine != nil {
		// A running server takes new limits without a restart.
		if o := n.peerRelayLocked(); o != nil {
			n.engine.SetPeerRelayLimits(*o)
		}
	}
	if p.Port != nil && *p.Port != n.st.Port || relayChanged {
		oldPort := n.listenPortLocked()
		if p.Port != nil {
			n.st.Port = *p.Port
		}
		if n.engine != nil && (n.listenPortLocked() != oldPort || relayChanged) {
			// The engine binds its port when created: make a new one.
			running := n.sess != nil
			n.stopSessionLocked()
			n.closeEngineLocked()
			if running {
				if err := n.startSessionLocked(); err != nil {
					n.logger.Warn("restart on the new port", "err", err)
					n.lastErr = err.Error()
				}
			}
		}
	}
	n.applyLocked()
	return n.st.save(n.opts.StateDir)
}

// startHostServersLocked serves the host servers the settings name. It is
// called once, from Start.
func (n *Node) startHostServersLocked() error {
	addrs := [numHostServers]*string{&n.st.SOCKS5, &n.st.HTTPProxy, &n.st.DNSListen}
	for i := range addrs {
		a := *addrs[i]
		addrs[i] = &a
	}
	// Force a start even though the settings already hold the addresses.
	return n.moveHostServersLocked(addrs)
}

// moveHostServersLocked moves each host server whose address is not nil
// to that address ("" stops it). The new sockets are bound first; if one
// fails, those bound are closed and nothing changes.
func (n *Node) moveHostServersLocked(addrs [numHostServers]*string) error {
	type bound struct {
		kind    hostServerKind
		addr    string
		ln      net.Listener
		pc      net.PacketConn
		changed bool
	}
	var todo []bound
	fail := func(err error) error {
		for _, b := range todo {
			if b.ln != nil {
				b.ln.Close()
			}
			if b.pc != nil {
				b.pc.Close()
			}
		}
		return err
	}
	for k, a := range addrs {
		kind := hostServerKind(k)
		if a == nil {
			continue
		}
		cur := n.hosts.srv[kind]
		if cur != nil && cur.addr == *a || cur == nil && *a == "" {
			continue
		}
		b := bound{kind: kind, addr: *a}
		if *a != "" {
			ln, err := net.Listen("tcp", *a)
			if err != nil {
				return fail(fmt.Errorf("serve %s on %s: %w", kind, *a, err))
			}
			b.ln = ln
			if kind == serverDNS {
				pc, err := net.ListenPacket("udp", *a)
				if err != nil {
					ln.Close()
					return fail(fmt.Errorf("serve %s on %s: %w", kind, *a, err))
				}
				b.pc = pc
			}
		}
		todo = append(todo, b)
	}
	for _, b := range todo {
		n.hosts.srv[b.kind].stop()
		n.hosts.srv[b.kind] = nil
		switch b.kind {
		case serverSOCKS5:
			n.st.SOCKS5 = b.addr
		case serverHTTPProxy:
			n.st.HTTPProxy = b.addr
		case serverDNS:
			n.st.DNSListen = b.addr
		}
		if b.ln == nil {
			n.logger.Info("stopped serving", "what", b.kind.String())
			continue
		}
		ctx, cancel := context.WithCancel(n.ctx)
		s := &hostServer{addr: b.addr, cancel: cancel, closers: []interface{ Close() error }{b.ln}}
		n.hosts.srv[b.kind] = s
		logger := n.logger.With("what", b.kind.String(), "addr", b.addr)
		run := func(serve func(context.Context) error) {
			n.hosts.wg.Add(1)
			go func() {
				defer n.hosts.wg.Done()
				if err := serve(ctx); err != nil && ctx.Err() == nil {
					logger.Warn("host server failed", "err", err)
				}
			}()
		}
		switch b.kind {
		case serverSOCKS5:
			run(func(ctx context.Context) error { return n.ServeSOCKS5(ctx, b.ln) })
		case serverHTTPProxy:
			run(func(ctx context.Context) error { return n.ServeHTTPProxy(ctx, b.ln) })
		case serverDNS:
			s.closers = append(s.closers, b.pc)
			run(func(ctx context.Context) error { return n.resolver.ServeStream(ctx, b.ln) })
			run(func(ctx context.Context) error { return n.resolver.ServePacket(ctx, b.pc) })
		}
		logger.Info("serving")
	}
	return nil
}

// stopHostServersLocked stops every host server; Close then waits for
// their goroutines.
func (n *Node) stopHostServersLocked() {
	for k, s := range n.hosts.srv {
		s.stop()
		n.hosts.srv[k] = nil
	}
}
