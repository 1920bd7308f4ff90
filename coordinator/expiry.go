package coordinator

import (
	"context"
	"fmt"
	"time"

	"beam.dev/beam/wire"
)

// Admin API for node key expiry (bearer token):
//
//	PUT /api/v1/nodes/{name}/expiry   wire.SetExpiryRequest -> 200 wire.Node

// DefaultNodeKeyExpiry is how long the key of an untagged node stays valid
// when its auth key does not say otherwise and Options.NodeKeyExpiry is
// zero: nodes of a user, and nodes with neither user nor tag (plain auth
// keys, dev mode). Tagged nodes (servers) and edge nodes do not expire by
// default.
const DefaultNodeKeyExpiry = 180 * 24 * time.Hour

// keyExpiryFor returns the key expiry of node n (its User and Tags) when
// it registers at now with ak (nil for none); zero means never. def is the
// default of untagged nodes (Options.NodeKeyExpiry, resolved: negative
// means never).
func keyExpiryFor(ak *AuthKey, n *wire.Node, now time.Time, def time.Duration) time.Time {
	var d time.Duration
	switch {
	case ak != nil && ak.NodeKeyExpiry < 0:
		return time.Time{}
	case ak != nil && ak.NodeKeyExpiry > 0:
		d = ak.NodeKeyExpiry
	case len(n.Tags) == 0 && !n.Edge && def > 0:
		d = def
	default:
		return time.Time{}
	}
	return now.Add(d)
}

// parseKeyExpiry parses a key expiry setting: a positive Go duration, or
// "never" (or "0") for none, returned as a negative duration.
func parseKeyExpiry(s string) (time.Duration, error) {
	if s == "never" || s == "0" {
		return -1, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%w: key expiry %q: want a positive duration like 720h, or never", ErrInvalid, s)
	}
	return d, nil
}

// SetNodeExpiry sets when the key of node ref (as in RemoveNode) expires;
// zero means never. A node whose key had expired may stream again (and is
// back in its peers' maps) once the new expiry is in the future.
func (s *Server) SetNodeExpiry(ctx context.Context, ref string, expiry time.Time) (*wire.Node, error) {
	s.mu.Lock()
	e, err := s.findNodeLocked(ref)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	nk := e.rec.Node.Key
	n, aerr := s.updateSelf(ctx, nk, func(n *NodeRecord) { n.Node.KeyExpiry = expiry })
	if aerr != nil {
		return nil, aerr
	}
	now := s.now()
	s.mu.Lock()
	if e := s.nodes[nk]; e != nil {
		if e.rec.Node.Expired(now) {
			if !e.expiryHandled {
				e.expiryHandled = true
				s.expireLocked(e)
			}
		} else {
			e.expiryHandled = false
		}
	}
	s.mu.Unlock()
	return n, nil
}

// formatKeyExpiry shows an auth key's NodeKeyExpiry: "" for the default,
// "never", or a Go duration.
func formatKeyExpiry(d time.Duration) string {
	switch {
	case d == 0:
		return ""
	case d < 0:
		return "never"
	}
	return d.String()
}
