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
)

// portMapState is the engine's port mapping (Options.PortMapping).
type portMapState struct {
	mu      sync.Mutex // guards the following fields
	mapping portmap.Mapping
	gateway netip.Addr
}

// portMapEndpoint returns the public address the gateway maps to the
// WireGuard port; invalid if there is none.
func (e *Engine) portMapEndpoint() netip.AddrPort {
	e.pmap.mu.Lock()
	defer e.pmap.mu.Unlock()
	if e.pmap.mapping.Protocol == "" || time.Now().After(e.pmap.mapping.Granted.Add(e.pmap.mapping.Lifetime)) {
		return netip.AddrPort{}
	}
	return e.pmap.mapping.External
}

// portMapGateway finds the gateway to ask: Options.PortMapGateway, else
// the default route's next hop.
func (e *Engine) portMapGateway() (netip.Addr, error) {
	if e.opts.PortMapGateway.IsValid() {
		return e.opts.PortMapGateway, nil
	}
	return portmap.DefaultGateway()
}

// portMapLoop keeps a mapping of the WireGuard port while the engine
// runs (Options.PortMapping): it asks the gateway by PCP, NAT-PMP or UPnP,
// renews halfway through the lifetime (the shorter of the one asked and
// the one granted), asks a new gateway at once when the default route
// changes, and deletes the mapping when the engine closes. A new or lost
// mapping triggers an endpoint refresh.
func (e *Engine) portMapLoop() {
	var (
		m      portmap.Mapping
		client *portmap.Client
	)
	setMapping := func(nm portmap.Mapping) {
		changed := nm.External != m.External || nm.Protocol != m.Protocol
		m = nm
		e.pmap.mu.Lock()
		e.pmap.mapping = nm
		e.pmap.mu.Unlock()
		if changed {
			select {
			case e.disc.wake <- struct{}{}:
			default:
			}
		}
	}
	defer func() {
		if m.Protocol == "" || client == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), portMapDeleteTimeout)
		defer cancel()
		if err := client.Delete(ctx, m); err != nil {
			e.log.Info("port mapping: delete", "protocol", m.Protocol, "external", m.External, "err", err)
			return
		}
		e.log.Info("port mapping deleted", "protocol", m.Protocol, "external", m.External)
	}()
	next := time.Now() // when to ask the gateway next
	for {
		// Look at the routing table (a local read) more often than the
		// gateway is asked, to follow the host to another network.
		t := time.NewTimer(min(max(time.Until(next), 0), portMapGatewayCheck))
		select {
		case <-e.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		gw, err := e.portMapGateway()
		if err != nil {
			if m.Protocol != "" {
				setMapping(portmap.Mapping{})
			}
			if client != nil {
				e.log.Info("port mapping: no gateway", "err", err)
			}
			client = nil
			continue
		}
		if client == nil || client.Gateway != gw {
			if m.Protocol != "" {
				setMapping(portmap.Mapping{}) // another network: the old one is gone
			}
			client = &portmap.Client{Gateway: gw, Lifetime: e.opts.PortMapLifetime}
			e.pmap.mu.Lock()
			e.pmap.gateway = gw
			e.pmap.mu.Unlock()
			next = time.Now()
		}
		if time.Now().Before(next) {
			continue
		}
		nm, err := client.Map(e.ctx, e.LocalPort(), m)
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			if m.Protocol != "" {
				e.log.Info("port mapping: renewal failed", "protocol", m.Protocol, "external", m.External, "err", err)
				setMapping(portmap.Mapping{})
				next = time.Now().Add(portMapRetryFailed)
				continue
			}
			e.log.Debug("port mapping: the gateway offers none", "gateway", gw, "err", err)
			next = time.Now().Add(portMapRetry)
			continue
		}
		if nm.External != m.External || nm.Protocol != m.Protocol {
			e.log.Info("port mapping", "protocol", nm.Protocol, "external", nm.External, "lifetime", nm.Lifetime, "gateway", gw)
		} else {
			e.log.Debug("port mapping renewed", "protocol", nm.Protocol, "external", nm.External, "lifetime", nm.Lifetime)
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
// bounded by portmap.DefaultTimeout.
func (e *Engine) PortMapProbe(ctx context.Context) (PortMapReport, error) {
	rep := PortMapReport{Enabled: e.opts.PortMapping}
	if !rep.Enabled {
		return rep, nil
	}
	e.pmap.mu.Lock()
	rep.MappingProtocol, rep.Mapped = e.pmap.mapping.Protocol, e.pmap.mapping.External
	e.pmap.mu.Unlock()
	gw, err := e.portMapGateway()
	if err != nil {
		if errors.Is(err, portmap.ErrNoGateway) {
			return rep, nil
		}
		return rep, err
	}
	rep.Gateway = gw
	o, err := (&portmap.Client{Gateway: gw}).Probe(ctx)
	if err != nil {
		return rep, err
	}
	rep.Protocols = o.Protocols()
	return rep, nil
}
