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
	bases []string // the coordinator URLs; requests go to the first that answers
	token string
	hc    *http.Client
}

// NewAdmin returns an Admin for the coordinator at serverURL (or the
// coordinators sharing one database, comma-separated: each request goes
// to the first that can be reached) using the admin token. A nil hc
// means a client with a 30 second timeout.
func NewAdmin(serverURL, token string, hc *http.Client) *Admin {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	bases, err := SplitServerURLs(serverURL)
	if err != nil {
		bases = []string{strings.TrimRight(serverURL, "/")} // its requests fail with the URL's problem
	}
	return &Admin{bases: bases, token: token, hc: hc}
}

// send sends one admin request with body (nil for none) of content type
// ctype, trying the coordinators in turn while they cannot be reached.
func (a *Admin) send(ctx context.Context, method, path string, body []byte, ctype string) (*http.Response, error) {
	var err error
	for _, base := range a.bases {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, rerr := http.NewRequestWithContext(ctx, method, base+path, rd)
		if rerr != nil {
			return nil, fmt.Errorf("coordclient: %s %s: %w", method, path, rerr)
		}
		req.Header.Set("Authorization", "Bearer "+a.token)
		if body != nil {
			req.Header.Set("Content-Type", ctype)
		}
		resp, derr := a.hc.Do(req)
		if derr == nil {
			return resp, nil
		}
		err = fmt.Errorf("%w: %w", ErrUnreachable, derr)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
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
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	resp, err := a.send(ctx, method, path, body, "application/json")
	if err != nil {
		return err
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
