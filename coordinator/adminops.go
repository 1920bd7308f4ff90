package coordinator

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Admin operations for front ends other than the admin API (the web
// console in coordinator/console): the same operations the API handlers
// run, with the audit actor named by the caller. The exported operations
// elsewhere (CreateUser, RemoveNode, SetPolicy, ...) leave auditing to
// their caller; RecordAudit is how a front end does it.

// ActorConsole returns the audit actor of a person signed in to the web
// console as who ("admin" for the admin token): "console:WHO".
func ActorConsole(who string) string { return "console:" + who }

// RecordAudit records that actor did action to target, as the admin API
// handlers do for their requests. detail must not hold secrets.
func (s *Server) RecordAudit(ctx context.Context, actor, action, target, detail string) {
	s.audit(ctx, actor, action, target, detail)
}

// AdminTokenValid reports whether token is the admin token (never, when
// none is set). It compares hashes in constant time.
func (s *Server) AdminTokenValid(token string) bool { return s.admin.tokenIs(token) }

// AdminTokenFingerprint identifies the admin token in force: it changes
// whenever the token does (SetAdminToken, SetTokens), and is the zero
// value while there is none. It is a hash of the token's hash, so it
// tells nothing that would admit anyone. The console ends the sessions
// signed in with an earlier admin token by it.
func (s *Server) AdminTokenFingerprint() [sha256.Size]byte {
	h := s.admin.hash()
	if h == nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(append([]byte("beam admin token fingerprint\x00"), h...))
}

// SetAdminToken replaces the admin token, as when it was rotated: the old
// one is refused from then on. The token's hash is stored too, which is
// what replicas starting on a shared store compare theirs with; the other
// replicas running keep theirs until they are given the new one. It does
// nothing when token is already the admin token.
func (s *Server) SetAdminToken(ctx context.Context, token string) error {
	if token == "" {
		return errors.New("coordinator: empty admin token")
	}
	if s.admin.tokenIs(token) {
		return nil
	}
	h := sha256.Sum256([]byte(token))
	hash := h[:]
	if err := s.store.SetSetting(ctx, adminTokenSetting, hash); err != nil {
		return fmt.Errorf("coordinator: store admin token hash: %w", err)
	}
	s.admin.tokenHash.Store(&hash)
	return nil
}

// relayTokenHash is the relay token's hash, nil without one.
func (s *Server) relayTokenHash() []byte {
	if h := s.relayHash.Load(); h != nil && len(*h) > 0 {
		return *h
	}
	return nil
}

// RelayTokenOverlap is how long the coordinator still takes the relay
// token a reload replaced (SetRelayToken, SetTokens) from relays at
// /derp/verify: relays and the other replicas reload at their own
// moments, and meanwhile nodes at a relay that presents the old token
// must not be refused. A restart forgets the old token at once.
const RelayTokenOverlap = 10 * time.Minute

// prevRelayToken is the relay token a reload replaced, taken until until.
type prevRelayToken struct {
	hash  []byte
	until time.Time
}

// replaceRelayHash makes hash the relay token's hash, keeping the one it
// replaces for RelayTokenOverlap.
func (s *Server) replaceRelayHash(hash []byte) {
	if old := s.relayTokenHash(); old != nil {
		s.prevRelay.Store(&prevRelayToken{hash: old, until: s.now().Add(RelayTokenOverlap)})
	}
	s.relayHash.Store(&hash)
}

// prevRelayHash is the hash of the relay token a reload replaced while it
// is still taken, nil otherwise.
func (s *Server) prevRelayHash() []byte {
	if p := s.prevRelay.Load(); p != nil && s.now().Before(p.until) {
		return p.hash
	}
	return nil
}

// RelayTokenValid reports whether token is the relay token (never, with
// none).
func (s *Server) RelayTokenValid(token string) bool {
	h := s.relayTokenHash()
	if h == nil || token == "" {
		return false
	}
	got := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], h) == 1
}

// SetRelayToken replaces the relay token relays present to
// /derp/verify, as when it was rotated: the old one is refused once
// RelayTokenOverlap has passed. Its hash is stored, as SetAdminToken stores the admin token's, for
// replicas starting later; the other replicas running keep theirs until
// they are given the new one. It does nothing when token is already the
// relay token.
func (s *Server) SetRelayToken(ctx context.Context, token string) error {
	if token == "" {
		return errors.New("coordinator: empty relay token")
	}
	if s.RelayTokenValid(token) {
		return nil
	}
	h := sha256.Sum256([]byte(token))
	hash := h[:]
	if err := s.store.SetSetting(ctx, relayTokenSetting, hash); err != nil {
		return fmt.Errorf("coordinator: store relay token hash: %w", err)
	}
	s.replaceRelayHash(hash)
	return nil
}

// SetTokens replaces the admin token and the relay token together, as a
// reload that read both files does: both hashes are stored in one
// transaction, and only once it committed does either token change in
// memory. On error both stay as they were. An empty token leaves that one
// as it is; a token already in force is no change. It reports which
// changed.
func (s *Server) SetTokens(ctx context.Context, admin, relay string) (adminChanged, relayChanged bool, err error) {
	adminChanged = admin != "" && !s.admin.tokenIs(admin)
	relayChanged = relay != "" && !s.RelayTokenValid(relay)
	values := make(map[string][]byte, 2)
	var adminHash, relayHash []byte
	if adminChanged {
		h := sha256.Sum256([]byte(admin))
		adminHash = h[:]
		values[adminTokenSetting] = adminHash
	}
	if relayChanged {
		h := sha256.Sum256([]byte(relay))
		relayHash = h[:]
		values[relayTokenSetting] = relayHash
	}
	if len(values) == 0 {
		return false, false, nil
	}
	if err := s.store.SetSettings(ctx, values); err != nil {
		return false, false, fmt.Errorf("coordinator: store token hashes: %w", err)
	}
	if adminChanged {
		s.admin.tokenHash.Store(&adminHash)
	}
	if relayChanged {
		s.replaceRelayHash(relayHash)
	}
	return adminChanged, relayChanged, nil
}

// AuthKeys lists the stored auth keys, without their secrets.
func (s *Server) AuthKeys(ctx context.Context) ([]wire.AuthKeyInfo, error) {
	keys, err := s.store.AuthKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator: list auth keys: %w", err)
	}
	out := make([]wire.AuthKeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.reg.keyInfo(k))
	}
	return out, nil
}

// CreateAuthKeyAs creates the auth key req describes, as POST
// /api/v1/authkeys does, and records it in the audit log as done by actor.
// A malformed expiry fails with ErrInvalid. The response holds the
// secret, which is not stored and cannot be shown again.
func (s *Server) CreateAuthKeyAs(ctx context.Context, actor string, req wire.CreateAuthKeyRequest) (*wire.CreateAuthKeyResponse, error) {
	var expiry time.Duration
	if req.Expiry != "" {
		d, err := time.ParseDuration(req.Expiry)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%w: expiry must be a positive duration like 1h", ErrInvalid)
		}
		expiry = d
	}
	var nodeKeyExpiry time.Duration
	if req.KeyExpiry != "" {
		d, err := parseKeyExpiry(req.KeyExpiry)
		if err != nil {
			return nil, err
		}
		nodeKeyExpiry = d
	}
	secret, ak, err := s.reg.createAuthKey(ctx, AuthKeyOptions{
		Network: req.Network, Reusable: req.Reusable, Ephemeral: req.Ephemeral, Expiry: expiry, Tags: req.Tags, User: req.User, Edge: req.Edge,
		NodeKeyExpiry: nodeKeyExpiry,
	})
	if err != nil {
		return nil, err
	}
	s.audit(ctx, actor, "authkey.create", ak.Prefix, authKeyDetail(ak))
	return &wire.CreateAuthKeyResponse{Key: secret, Info: s.reg.keyInfo(ak)}, nil
}

// DeleteAuthKeyAs deletes (revokes) the auth key with prefix, as DELETE
// /api/v1/authkeys/{prefix} does, and records it in the audit log as done
// by actor. An unknown prefix fails with ErrNotFound.
func (s *Server) DeleteAuthKeyAs(ctx context.Context, actor, prefix string) error {
	err := s.store.DeleteAuthKey(ctx, prefix)
	s.reg.forgetKeys()
	if err != nil {
		return err
	}
	s.logger.Info("auth key deleted", "auth_key", prefix)
	s.audit(ctx, actor, "authkey.delete", prefix, "")
	return nil
}

// NodeVersions returns the protocol version (wire.CapabilityVersion) each
// node last sent in a map request since the coordinator started; nodes
// that sent none are missing.
func (s *Server) NodeVersions() map[key.NodePublic]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[key.NodePublic]int, len(s.nodes))
	for k, e := range s.nodes {
		if e.version != 0 {
			out[k] = e.version
		}
	}
	return out
}
