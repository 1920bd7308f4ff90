package coordclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"beam.dev/beam/wire"
)

// Admin is a client of the coordinator's admin API (bearer token).
type Admin struct {
	base  string
	token string
	hc    *http.Client
}

// NewAdmin returns an Admin for the coordinator at serverURL using the
// admin token. A nil hc means a client with a 30 second timeout.
func NewAdmin(serverURL, token string, hc *http.Client) *Admin {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Admin{base: strings.TrimRight(serverURL, "/"), token: token, hc: hc}
}

// AuthKeyRequest describes a new auth key.
type AuthKeyRequest struct {
	// Network is the key's network; empty means "default".
	Network string
	// Reusable keys register any number of nodes; others exactly one.
	Reusable bool
	// Ephemeral nodes are deleted soon after going offline.
	Ephemeral bool
	// Expiry is how long the key stays valid; zero means forever.
	Expiry time.Duration
	Tags   []string
	User   string
	// Edge keys register public edge nodes.
	Edge bool
	// KeyExpiry is how long the node keys of nodes registered with the
	// key stay valid: zero means the coordinator's default (180 days for
	// nodes of a user, none for tagged nodes), negative means never.
	KeyExpiry time.Duration
}

// do sends one admin request; out, if not nil, receives the JSON answer.
func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return fmt.Errorf("coordclient: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return fmt.Errorf("%w: read answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 != 2 {
		return errorFromBody(resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%w: %w", ErrBadResponse, err)
		}
	}
	return nil
}

// CreateAuthKey creates an auth key and returns its secret (shown only
// once) and its description.
func (a *Admin) CreateAuthKey(ctx context.Context, r AuthKeyRequest) (string, *wire.AuthKeyInfo, error) {
	in := wire.CreateAuthKeyRequest{Network: r.Network, Reusable: r.Reusable, Ephemeral: r.Ephemeral, Tags: r.Tags, User: r.User, Edge: r.Edge}
	switch {
	case r.KeyExpiry < 0:
		in.KeyExpiry = "never"
	case r.KeyExpiry > 0:
		in.KeyExpiry = r.KeyExpiry.String()
	}
	if r.Expiry > 0 {
		in.Expiry = r.Expiry.String()
	}
	var out wire.CreateAuthKeyResponse
	if err := a.do(ctx, http.MethodPost, wire.PathAuthKeys, in, &out); err != nil {
		return "", nil, err
	}
	return out.Key, &out.Info, nil
}

// ListAuthKeys lists all auth keys.
func (a *Admin) ListAuthKeys(ctx context.Context) ([]*wire.AuthKeyInfo, error) {
	var out []*wire.AuthKeyInfo
	return out, a.do(ctx, http.MethodGet, wire.PathAuthKeys, nil, &out)
}

// DeleteAuthKey deletes the auth key with the given prefix.
func (a *Admin) DeleteAuthKey(ctx context.Context, prefix string) error {
	return a.do(ctx, http.MethodDelete, wire.AuthKeyPath(prefix), nil, nil)
}

// ListNodes lists every node of every network.
func (a *Admin) ListNodes(ctx context.Context) ([]*wire.Node, error) {
	var out []*wire.Node
	return out, a.do(ctx, http.MethodGet, wire.PathNodes, nil, &out)
}

// RemoveNode removes the node name ("name", "network/name" or "nodekey:...").
func (a *Admin) RemoveNode(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, wire.NodePath(name), nil, nil)
}

// ExpireNode expires the key of node name now.
func (a *Admin) ExpireNode(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodPost, wire.NodeExpirePath(name), nil, nil)
}
