package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"beam.dev/beam/wire"
)

// authKeyPrefix starts every auth key; the stored prefix adds 12 hex digits.
const authKeyPrefix = "beamkey-"

// AuthKeyOptions describes a new auth key.
type AuthKeyOptions struct {
	// Network is the network the key joins nodes to, created if it does
	// not exist; empty means DefaultNetwork.
	Network string
	// Reusable keys may register any number of nodes; others exactly one.
	Reusable bool
	// Ephemeral nodes are deleted about EphemeralTimeout after going offline.
	Ephemeral bool
	// Expiry is how long the key stays valid; zero means forever.
	Expiry time.Duration
	// Tags and User are given to nodes registered with the key. wire.User
	// must exist and every tag must be listed in the policy's tagOwners.
	Tags []string
	User string
	// Edge keys register public edge nodes: they see only the nodes that
	// serve routes, get every route, and are invisible to other nodes.
	Edge bool
	// NodeKeyExpiry is how long the keys of nodes registered with the key
	// stay valid: zero means the default (Options.NodeKeyExpiry for
	// untagged nodes, none for tagged and edge nodes), negative means never.
	NodeKeyExpiry time.Duration
}

// CreateAuthKey creates an auth key and returns its secret, which is not
// stored and cannot be shown again.
func (s *Server) CreateAuthKey(ctx context.Context, o AuthKeyOptions) (string, error) {
	secret, _, err := s.reg.createAuthKey(ctx, o)
	return secret, err
}

// createAuthKey creates an auth key on o and returns its secret and the
// stored key.
func (rg *registry) createAuthKey(ctx context.Context, o AuthKeyOptions) (string, *AuthKey, error) {
	s := rg.core
	if o.Network == "" {
		o.Network = DefaultNetwork
	}
	if o.Expiry < 0 {
		return "", nil, errors.New("coordinator: negative auth key expiry")
	}
	if err := s.checkKeyOwner(ctx, o.User, o.Tags); err != nil {
		return "", nil, err
	}
	network, err := s.ensureNetwork(ctx, o.Network)
	if err != nil {
		return "", nil, err
	}
	now := s.now()
	for range 5 {
		var id [6]byte
		var sec [24]byte
		rand.Read(id[:])
		rand.Read(sec[:])
		prefix := authKeyPrefix + hex.EncodeToString(id[:])
		secret := prefix + "-" + hex.EncodeToString(sec[:])
		ak := &AuthKey{
			NetworkID: network.ID,
			Prefix:    prefix,
			Hash:      hashSecret(secret),
			Reusable:  o.Reusable,
			Ephemeral: o.Ephemeral,
			Tags:      slices.Clone(o.Tags),
			User:      o.User,
			Edge:      o.Edge,
			CreatedAt: now,

			NodeKeyExpiry: o.NodeKeyExpiry,
		}
		if o.Expiry > 0 {
			ak.Expiry = now.Add(o.Expiry)
		}
		err := s.store.CreateAuthKey(ctx, ak)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("coordinator: create auth key: %w", err)
		}
		s.logger.Info("auth key created", "auth_key", prefix, "network", network.Name, "reusable", o.Reusable, "ephemeral", o.Ephemeral)
		return secret, ak, nil
	}
	return "", nil, errors.New("coordinator: create auth key: prefix collisions")
}

// keyInfo returns ak as the admin API lists it.
func (rg *registry) keyInfo(ak *AuthKey) wire.AuthKeyInfo {
	s := rg.core
	s.mu.Lock()
	netName := ""
	if n := s.networks[ak.NetworkID]; n != nil {
		netName = n.Name
	}
	s.mu.Unlock()
	valid := (ak.Expiry.IsZero() || s.now().Before(ak.Expiry)) && (ak.Reusable || ak.UseCount == 0)
	return wire.AuthKeyInfo{
		Prefix: ak.Prefix, Network: netName, Reusable: ak.Reusable, Ephemeral: ak.Ephemeral,
		Expiry: ak.Expiry, Tags: ak.Tags, User: ak.User, UseCount: ak.UseCount, CreatedAt: ak.CreatedAt, Valid: valid, Edge: ak.Edge,
		KeyExpiry: formatKeyExpiry(ak.NodeKeyExpiry),
	}
}
