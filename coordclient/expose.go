package coordclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"beam.dev/beam/wire"
)

// Errors of the public edge requests; they match with errors.Is and the
// error carries the coordinator's message.
var (
	// ErrNameTaken means the public name belongs to another node or network;
	// the message names the owner.
	ErrNameTaken = errors.New("public name taken")
	// ErrNameInvalid means the name, proto, port or an option is not acceptable.
	ErrNameInvalid = errors.New("invalid public route")
	// ErrNameReserved means the name is reserved (www, edge, api, _*, the apex).
	ErrNameReserved = errors.New("public name reserved")
	// ErrDomainNotVerified means the network has not proved control of
	// the custom domain; the message says how.
	ErrDomainNotVerified = errors.New("custom domain not verified")
	// ErrPortsExhausted means the edge has no free port for a tcp or udp route.
	ErrPortsExhausted = errors.New("edge ports exhausted")
	// ErrQuotaExceeded means the route would take the node or its user
	// past one of the coordinator's route quotas (routes, edge ports,
	// option bytes); the message says which.
	ErrQuotaExceeded = errors.New("route quota exceeded")
	// ErrEdgeDisabled means the coordinator has no public edge, or does
	// not serve the route's protocol.
	ErrEdgeDisabled = errors.New("public edge not available")
	// ErrRouteNotFound means a route to remove does not exist.
	ErrRouteNotFound = errors.New("route not found")
	// ErrForbidden means the coordinator refused the request (an edge
	// exposing a port, a non-edge setting TXT records).
	ErrForbidden = errors.New("forbidden")
)

// edgeCodes maps the coordinator's edge error codes to sentinels.
var edgeCodes = map[wire.ErrorCode]error{
	wire.CodeNameTaken:           ErrNameTaken,
	wire.CodeNameInvalid:         ErrNameInvalid,
	wire.CodeNameReserved:        ErrNameReserved,
	wire.CodeDomainNotVerified:   ErrDomainNotVerified,
	wire.CodePortsExhausted:      ErrPortsExhausted,
	wire.CodeQuotaExceeded:       ErrQuotaExceeded,
	wire.CodeEdgeDisabled:        ErrEdgeDisabled,
	wire.CodeEdgeProtoNotAllowed: ErrEdgeDisabled,
	wire.CodeNoZone:              ErrEdgeDisabled,
	wire.CodeRouteNotFound:       ErrRouteNotFound,
	wire.CodeForbidden:           ErrForbidden,
}

// Expose asks the coordinator to publish (or, with req.Remove, withdraw)
// one of the node's ports on the public edge. It fills in Version,
// NodeKey and Timestamp. Errors match ErrNameTaken, ErrNameInvalid,
// ErrNameReserved, ErrDomainNotVerified, ErrPortsExhausted, ErrQuotaExceeded,
// ErrEdgeDisabled, ErrRouteNotFound, ErrNodeNotRegistered or
// ErrUnreachable, and carry the coordinator's message.
func (c *Client) Expose(ctx context.Context, req wire.ExposeRequest) (*wire.ExposeResponse, error) {
	rp, err := c.post(ctx, wire.PathExpose, func(st stamp) any {
		r := req
		r.Version, r.NodeKey, r.Timestamp, r.Nonce, r.Epoch = wire.CapabilityVersion, c.pub, st.now, st.nonce, st.epoch
		return &r
	})
	if err != nil {
		return nil, fmt.Errorf("coordclient: expose: %w", err)
	}
	var er wire.ExposeResponse
	if err := c.readSealed(rp, &er); err != nil {
		return nil, fmt.Errorf("coordclient: expose: %w", err)
	}
	if er.Error != "" {
		return nil, fmt.Errorf("coordclient: expose: %w", &Error{Status: http.StatusOK, Message: er.Error})
	}
	return &er, nil
}

// SetTXT sets the TXT records of name ("_acme-challenge.app.example.test")
// in the coordinator's public zone to values; no values deletes them.
// Only edge nodes may, and only for _acme-challenge names of the edge
// domain or of verified custom domains (ErrForbidden otherwise).
func (c *Client) SetTXT(ctx context.Context, name string, values []string) error {
	rp, err := c.post(ctx, wire.PathTXT, func(st stamp) any {
		return &wire.TXTRequest{Version: wire.CapabilityVersion, NodeKey: c.pub, Timestamp: st.now, Name: name, Values: values, Nonce: st.nonce, Epoch: st.epoch}
	})
	if err != nil {
		return fmt.Errorf("coordclient: set TXT %s: %w", name, err)
	}
	var tr wire.TXTResponse
	if err := c.readSealed(rp, &tr); err != nil {
		return fmt.Errorf("coordclient: set TXT %s: %w", name, err)
	}
	if tr.Error != "" {
		return fmt.Errorf("coordclient: set TXT %s: %w", name, &Error{Status: http.StatusOK, Message: tr.Error})
	}
	return nil
}

// ListRoutes lists every published route.
func (a *Admin) ListRoutes(ctx context.Context) ([]*wire.RouteInfo, error) {
	var out []*wire.RouteInfo
	return out, a.do(ctx, http.MethodGet, wire.PathRoutes, nil, &out)
}

// RemoveRoutes withdraws every route of host (any node, any protocol).
func (a *Admin) RemoveRoutes(ctx context.Context, host string) error {
	return a.do(ctx, http.MethodDelete, wire.RoutePath(host), nil, nil)
}

// VerifyDomain starts or checks network's proof of control of domain
// (empty network means "default") and returns the claim: the token to
// publish and whether the proof was found.
func (a *Admin) VerifyDomain(ctx context.Context, domain, network string) (*wire.DomainStatus, error) {
	in := wire.VerifyDomainRequest{Network: network}
	var out wire.DomainStatus
	if err := a.do(ctx, http.MethodPost, wire.DomainVerifyPath(domain), in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListDomains lists every custom domain claim.
func (a *Admin) ListDomains(ctx context.Context) ([]*wire.DomainStatus, error) {
	var out []*wire.DomainStatus
	return out, a.do(ctx, http.MethodGet, wire.PathDomains, nil, &out)
}

// RemoveDomain removes the claims on domain, network's or (network
// empty) every network's, and withdraws their routes on it.
func (a *Admin) RemoveDomain(ctx context.Context, domain, network string) error {
	p := wire.DomainPath(domain)
	if network != "" {
		p += "?" + url.Values{"network": {network}}.Encode()
	}
	return a.do(ctx, http.MethodDelete, p, nil, nil)
}

// SetTXT sets the TXT records of name in the coordinator's public zone.
func (a *Admin) SetTXT(ctx context.Context, name string, values []string) error {
	in := wire.TXTBody{Values: values}
	return a.do(ctx, http.MethodPut, wire.DNSTXTPath(name), in, nil)
}

// DeleteTXT removes the TXT records of name from the public zone.
func (a *Admin) DeleteTXT(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, wire.DNSTXTPath(name), nil, nil)
}

// DNSConfig returns the coordinator's DNS settings.
func (a *Admin) DNSConfig(ctx context.Context) (*wire.DNSSettings, error) {
	var out wire.DNSSettings
	if err := a.do(ctx, http.MethodGet, wire.PathDNSConfig, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetDNSConfig replaces the coordinator's DNS settings with the JSON
// document raw (see wire.DNSSettings; unknown fields are refused) and returns
// them as stored.
func (a *Admin) SetDNSConfig(ctx context.Context, raw json.RawMessage) (*wire.DNSSettings, error) {
	var out wire.DNSSettings
	if err := a.do(ctx, http.MethodPut, wire.PathDNSConfig, raw, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
