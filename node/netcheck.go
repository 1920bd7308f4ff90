package node

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/netstack"
	"beam.dev/beam/wire"
)

// onEngineEndpoints is the engine's OnEndpoints callback: it reports the
// node's endpoints and home relay to the coordinator. It takes no node
// lock (the engine may call it while the node holds one).
func (n *Node) onEngineEndpoints(eps []netip.AddrPort, home int) {
	n.eps.Store(&endpointsReport{eps: eps, home: home})
	if c := n.curClient.Load(); c != nil {
		c.SetEndpoints(eps, home)
	}
}

// endpointsReport is the engine's last endpoints and home relay.
type endpointsReport struct {
	eps  []netip.AddrPort
	home int
}

// regionName returns "DERP(code)" for a relay region of the netmap.
func regionName(nm *wire.NetMap, id int) string {
	if nm != nil && nm.DERPMap != nil {
		if r := nm.DERPMap.Regions[id]; r != nil && r.RegionCode != "" {
			return "DERP(" + r.RegionCode + ")"
		}
	}
	return "DERP(" + strconv.Itoa(id) + ")"
}

// Ping sends one disco ping to the peer named host (a MagicDNS name or an
// overlay address) over the path traffic takes now.
func (n *Node) Ping(ctx context.Context, host string) (*apitype.PingResult, error) {
	addrs, err := n.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	e, nm := n.engine, n.netmap
	n.mu.Unlock()
	if e == nil {
		return nil, ErrNotRunning
	}
	var ip netip.Addr
	for _, a := range addrs {
		if n.isOverlay(a) {
			ip = a
			break
		}
	}
	if !ip.IsValid() {
		return nil, fmt.Errorf("%s is not a node of this network", host)
	}
	r, err := e.Ping(ctx, ip)
	if err != nil {
		return nil, fmt.Errorf("ping %s: %w", host, err)
	}
	out := &apitype.PingResult{Name: host, IP: ip, Latency: r.Latency, Path: r.Path}
	if p := nm.PeerByKey(r.Peer); p != nil {
		out.Name = p.Name
	}
	if r.Endpoint.IsValid() {
		out.Endpoint = r.Endpoint.String()
	}
	if r.Path == "relay" {
		out.Relay = regionName(nm, r.DERPRegion)
	}
	if r.Path == "peer-relay" {
		out.Via = peerName(nm, r.Via)
	}
	return out, nil
}

// Netcheck reports what the relays' STUN servers see of this node's
// network: UDP, public address, NAT kind, latency per relay region.
func (n *Node) Netcheck(ctx context.Context) (*apitype.NetcheckReport, error) {
	n.mu.Lock()
	e, nm := n.engine, n.netmap
	n.mu.Unlock()
	if e == nil {
		return nil, ErrNotRunning
	}
	var local []string
	for _, ep := range e.LocalEndpoints() {
		local = append(local, ep.String())
	}
	if !hasSTUN(nm) {
		// Without STUN there is nothing to ask about the outside, but the
		// node still knows its own UDP endpoints.
		return &apitype.NetcheckReport{
			UDP:         len(local) > 0,
			LocalAddrs:  local,
			Missing:     []string{"the relay map has no STUN servers, so no public address, NAT kind or relay latency (give the coordinator --stun, or run beam server, which serves STUN)"},
			PortMapping: portMapping(ctx, e),
		}, nil
	}
	pm := make(chan *apitype.PortMapping, 1)
	go func() { pm <- portMapping(ctx, e) }() // at the same time as STUN
	r, err := e.Netcheck(ctx)
	if err != nil {
		<-pm
		return nil, fmt.Errorf("netcheck: %w", err)
	}
	out := &apitype.NetcheckReport{UDP: r.UDP, MappingVariesByDestIP: r.MappingVariesByDestIP, RegionLatency: map[string]time.Duration{}, LocalAddrs: local}
	out.PortMapping = <-pm
	if !r.UDP {
		out.Missing = append(out.Missing, "no STUN server answered over UDP: UDP may be blocked, so peers will use the relay")
	}
	if r.GlobalV4.IsValid() {
		out.GlobalV4 = r.GlobalV4.String()
	}
	if r.GlobalV6.IsValid() {
		out.GlobalV6 = r.GlobalV6.String()
	}
	for id, d := range r.RegionLatency {
		out.RegionLatency[regionName(nm, id)] = d
	}
	if r.PreferredDERP != 0 {
		out.PreferredRelay = regionName(nm, r.PreferredDERP)
	}
	return out, nil
}

// portMapping asks the gateway which port mapping protocols it offers;
// nil if the engine runs without port mapping.
func portMapping(ctx context.Context, e *netstack.Engine) *apitype.PortMapping {
	r, err := e.PortMapProbe(ctx)
	if !r.Enabled {
		return nil
	}
	out := &apitype.PortMapping{Protocols: r.Protocols, Protocol: r.MappingProtocol}
	if out.Protocols == nil {
		out.Protocols = []string{}
	}
	if r.Gateway.IsValid() {
		out.Gateway = r.Gateway.String()
	}
	if r.Mapped.IsValid() {
		out.Mapped = r.Mapped.String()
	}
	_ = err // a gateway that does not answer offers nothing
	return out
}

// hasSTUN reports whether the netmap's relay map names a STUN server.
func hasSTUN(nm *wire.NetMap) bool {
	if nm == nil || nm.DERPMap == nil {
		return false
	}
	for _, r := range nm.DERPMap.Regions {
		for _, d := range r.Nodes {
			if d != nil && d.STUNAddr != "" {
				return true
			}
		}
	}
	return false
}
