package netstack

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"beam.dev/beam/netstack/internal/portmap"
)

// Port mapping timing.
const (
	// portMapRetry is how long the engine waits after a gateway that
	// offered no mapping (or none answered) before it asks again.
	portMapRetry = 5 * time.Minute
	// portMapRetryFailed is the wait after a renewal failed, before
	// asking for a new mapping.
	portMapRetryFailed = 10 * time.Second
	// portMapGatewayCheck is how often the routing table is read for
	// another gateway (the host moved), which is asked at once.
	portMapGatewayCheck = 30 * time.Second
	// portMapDeleteTimeout bounds deleting the mapping on Close.
	portMapDeleteTimeout = time.Second
	// portMapProbeTimeout bounds each of a probe's exchanges (beam
	// netcheck): as long as the STUN round it runs beside, so a gateway
	// that is merely slow (a busy router, a loaded host) is not reported
	// as offering nothing.
	portMapProbeTimeout = stunTimeout
)

// portMapState is one port's mapping (Options.PortMapping): the
// WireGuard port's (Engine.pmap) or the peer relay server's.
type portMapState struct {
	mu      sync.Mutex // guards the following fields
	mapping portmap.Mapping
	gateway netip.Addr
}

// current returns the public address the gateway maps to the port and
// the protocol; invalid and "" if there is none (or it expired).
func (st *portMapState) current() (netip.AddrPort, string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.mapping.Protocol == "" || time.Now().After(st.mapping.Granted.Add(st.mapping.Lifetime)) {
		return netip.AddrPort{}, ""
	}
	return st.mapping.External, st.mapping.Protocol
}

// portMapEndpoint returns the public address the gateway maps to the
// WireGuard port; invalid if there is none.
func (e *Engine) portMapEndpoint() netip.AddrPort {
	ap, _ := e.pmap.current()
	return ap
}

// portMapGateway finds the gateway to ask: Options.PortMapGateway, else
// the default route's next hop.
func (e *Engine) portMapGateway() (netip.Addr, error) {
	if e.opts.PortMapGateway.IsValid() {
		return e.opts.PortMapGateway, nil
	}
	return portmap.DefaultGateway()
}

// portMapTarget is a local UDP port portMapLoop keeps mapped.
type portMapTarget struct {
	// what names the port in logs ("WireGuard", "peer relay").
	what string
	port func() uint16
	st   *portMapState
	// changed, if not nil, is called when the mapping is new or lost.
	changed func()
}

// portMapLoop keeps a mapping of the WireGuard port, and of the peer
// relay server's port when the engine runs one, while the engine runs
// (Options.PortMapping). See mapPortLoop.
func (e *Engine) portMapLoop() {
	var wg sync.WaitGroup
	defer wg.Wait()
	if pr := e.prs; pr != nil {
		// Peers bind at the mapped address: Allocations name it first
		// (peerRelayAddrs) from the next one on.
		wg.Go(func() {
			e.mapPortLoop(portMapTarget{what: "peer relay", port: func() uint16 { return pr.port }, st: &pr.pmap})
		})
	}
	e.mapPortLoop(portMapTarget{what: "WireGuard", port: e.LocalPort, st: &e.pmap, changed: func() {
		select {
		case e.disc.wake <- struct{}{}:
		default:
		}
	}})
}

// mapPortLoop keeps a mapping of t's port while the engine runs: it asks
// the gateway by PCP, NAT-PMP or UPnP, renews halfway through the
// lifetime (the shorter of the one asked and the one granted), asks a new
// gateway at once when the default route changes, and deletes the
// mapping when the engine closes. A new or lost mapping calls t.changed
// (for the WireGuard port: an endpoint refresh).
func (e *Engine) mapPortLoop(t portMapTarget) {
	var (
		m      portmap.Mapping
		client *portmap.Client
	)
	log := e.log.With("port_of", t.what)
	setMapping := func(nm portmap.Mapping) {
		changed := nm.External != m.External || nm.Protocol != m.Protocol
		m = nm
		t.st.mu.Lock()
		t.st.mapping = nm
		t.st.mu.Unlock()
		if changed && t.changed != nil {
			t.changed()
		}
	}
	defer func() {
		if m.Protocol == "" || client == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), portMapDeleteTimeout)
		defer cancel()
		if err := client.Delete(ctx, m); err != nil {
			log.Info("port mapping: delete", "protocol", m.Protocol, "external", m.External, "err", err)
			return
		}
		log.Info("port mapping deleted", "protocol", m.Protocol, "external", m.External)
	}()
	next := time.Now() // when to ask the gateway next
	for {
		// Look at the routing table (a local read) more often than the
		// gateway is asked, to follow the host to another network.
		tm := time.NewTimer(min(max(time.Until(next), 0), portMapGatewayCheck))
		select {
		case <-e.ctx.Done():
			tm.Stop()
			return
		case <-tm.C:
		}
		gw, err := e.portMapGateway()
		if err != nil {
			if m.Protocol != "" {
				setMapping(portmap.Mapping{})
			}
			if client != nil {
				log.Info("port mapping: no gateway", "err", err)
			}
			client = nil
			continue
		}
		if client == nil || client.Gateway != gw {
			if m.Protocol != "" {
				setMapping(portmap.Mapping{}) // another network: the old one is gone
			}
			client = &portmap.Client{Gateway: gw, Lifetime: e.opts.PortMapLifetime}
			t.st.mu.Lock()
			t.st.gateway = gw
			t.st.mu.Unlock()
			next = time.Now()
		}
		if time.Now().Before(next) {
			continue
		}
		nm, err := client.Map(e.ctx, t.port(), m)
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			if m.Protocol != "" {
				log.Info("port mapping: renewal failed", "protocol", m.Protocol, "external", m.External, "err", err)
				setMapping(portmap.Mapping{})
				next = time.Now().Add(portMapRetryFailed)
				continue
			}
			log.Debug("port mapping: the gateway offers none", "gateway", gw, "err", err)
			next = time.Now().Add(portMapRetry)
			continue
		}
		if nm.External != m.External || nm.Protocol != m.Protocol {
			log.Info("port mapping", "protocol", nm.Protocol, "external", nm.External, "lifetime", nm.Lifetime, "gateway", gw)
		} else {
			log.Debug("port mapping renewed", "protocol", nm.Protocol, "external", nm.External, "lifetime", nm.Lifetime)
		}
		setMapping(nm)
		life := nm.Lifetime
		if asked := e.opts.PortMapLifetime; asked > 0 && asked < life {
			life = asked
		}
		next = time.Now().Add(max(life/2, time.Second))
	}
}

// PortMapReport is what the gateway offers for port mapping, for
// Netcheck.
type PortMapReport struct {
	// Enabled is Options.PortMapping; when false nothing was asked.
	Enabled bool
	// Gateway is the gateway asked; invalid if there is none.
	Gateway netip.Addr
	// Protocols are those the gateway answered: "PCP", "NAT-PMP",
	// "UPnP".
	Protocols []string
	// Mapping is the current mapping's protocol and public address;
	// empty and invalid if none.
	MappingProtocol string
	Mapped          netip.AddrPort
}

// PortMapProbe asks the gateway which port mapping protocols it speaks
// (nothing is sent unless Options.PortMapping is on), each exchange
// bounded by portMapProbeTimeout.
func (e *Engine) PortMapProbe(ctx context.Context) (PortMapReport, error) {
	rep := PortMapReport{Enabled: e.opts.PortMapping}
	if !rep.Enabled {
		return rep, nil
	}
	rep.Mapped, rep.MappingProtocol = e.pmap.current()
	gw, err := e.portMapGateway()
	if err != nil {
		if errors.Is(err, portmap.ErrNoGateway) {
			return rep, nil
		}
		return rep, err
	}
	rep.Gateway = gw
	o, err := (&portmap.Client{Gateway: gw, Timeout: portMapProbeTimeout}).Probe(ctx)
	if err != nil {
		return rep, err
	}
	// The protocol that granted the mapping held now is offered, even
	// if the gateway did not answer this probe in time.
	switch rep.MappingProtocol {
	case portmap.ProtoPCP:
		o.PCP = true
	case portmap.ProtoNATPMP:
		o.NATPMP = true
	case portmap.ProtoUPnP:
		o.UPnP = true
	}
	rep.Protocols = o.Protocols()
	return rep, nil
}
