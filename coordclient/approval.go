package coordclient

import (
	"context"
	"fmt"
	"net/http"

	"beam.dev/beam/wire"
)

// awaitApproval runs an interactive registration after the coordinator
// answered first with an approval code: it hands the URL to p.OnAuthURL
// once, then re-sends the registration with Followup set to the code
// (each request is held by the coordinator until approval or about a
// minute) until the node is registered or ctx ends.
func (c *Client) awaitApproval(ctx context.Context, p RegisterParams, first *wire.RegisterResponse) (*wire.RegisterResponse, error) {
	if p.OnAuthURL == nil {
		return nil, fmt.Errorf("coordclient: register: %w", &Error{Status: http.StatusOK, Code: wire.CodeNodeNotRegistered,
			Message: "node not registered; it needs an auth key, or approval at " + first.AuthURL})
	}
	p.OnAuthURL(first.AuthURL, first.AuthCode)
	code := first.AuthCode
	for {
		rp, err := c.post(ctx, wire.PathRegister, func(st stamp) any {
			return &wire.RegisterRequest{
				Version:   wire.CapabilityVersion,
				NodeKey:   c.pub,
				DiscoKey:  c.disco,
				Hostname:  p.Hostname,
				OS:        p.OS,
				Followup:  code,
				Reauth:    p.Reauth,
				Nonce:     st.nonce,
				Epoch:     st.epoch,
				Timestamp: st.now,
			}
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("coordclient: waiting for approval: %w", ctx.Err())
			}
			return nil, fmt.Errorf("coordclient: waiting for approval: %w", err)
		}
		var rr wire.RegisterResponse
		if err := c.readSealed(rp, &rr); err != nil {
			return nil, fmt.Errorf("coordclient: waiting for approval: %w", err)
		}
		if rr.Error != "" {
			return nil, fmt.Errorf("coordclient: waiting for approval: %w", &Error{Status: http.StatusOK, Message: rr.Error})
		}
		if rr.Node != nil {
			if p.Hostname != "" {
				c.mu.Lock()
				c.hostname = p.Hostname
				c.mu.Unlock()
			}
			return &rr, nil
		}
		if rr.AuthCode != "" {
			code = rr.AuthCode
		}
	}
}
