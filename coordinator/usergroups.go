package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"beam.dev/beam/coordinator/policy"
)

// Group memberships from a login provider. A user who signs in through
// OIDC brings the groups of the provider's groups claim, mapped to policy
// groups ("group:eng"); the coordinator keeps each user's groups from
// their last sign-in (stored, so they survive a restart) and adds them to
// the policy's groups. The policy still decides which groups exist and
// what they may do: a claimed group it does not define gives nothing.

// userGroupsSetting is the settings name of the stored memberships, a
// JSON object user -> ["group:x", ...].
const userGroupsSetting = "user_groups_json"

// loadUserGroups reads the stored memberships.
func (s *Server) loadUserGroups(ctx context.Context) (map[string][]string, error) {
	m, _, err := s.loadUserGroupsJSON(ctx)
	return m, err
}

// loadUserGroupsJSON reads the stored memberships, and returns them with
// their stored JSON (nil if none is stored).
func (s *Server) loadUserGroupsJSON(ctx context.Context) (map[string][]string, []byte, error) {
	b, err := s.store.Setting(ctx, userGroupsSetting)
	if errors.Is(err, ErrNotFound) {
		return map[string][]string{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator: load user groups: %w", err)
	}
	m := map[string][]string{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, fmt.Errorf("coordinator: stored user groups: %w", err)
	}
	return m, b, nil
}

// byGroup turns user -> groups into group -> users.
func byGroup(m map[string][]string) map[string][]string {
	out := map[string][]string{}
	for _, u := range slices.Sorted(maps.Keys(m)) {
		for _, g := range m[u] {
			out[g] = append(out[g], u)
		}
	}
	return out
}

// UserGroups returns the policy groups user got from their last sign-in.
func (s *Server) UserGroups(ctx context.Context, user string) ([]string, error) {
	m, err := s.loadUserGroups(ctx)
	if err != nil {
		return nil, err
	}
	return m[user], nil
}

// SetUserGroups records that user belongs to groups ("group:x") according
// to the login provider, replacing what their last sign-in said, and
// applies it to the policy in force: streaming nodes get their new
// filters and peers within moments.
func (s *Server) SetUserGroups(ctx context.Context, user string, groups []string) error {
	s.access.setMu.Lock()
	defer s.access.setMu.Unlock()
	m, err := s.loadUserGroups(ctx)
	if err != nil {
		return err
	}
	groups = slices.Compact(slices.Sorted(slices.Values(groups)))
	if slices.Equal(m[user], groups) {
		return nil
	}
	if len(groups) == 0 {
		delete(m, user)
	} else {
		m[user] = groups
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("coordinator: set user groups: %w", err)
	}
	if err := s.store.SetSetting(ctx, userGroupsSetting, b); err != nil {
		return fmt.Errorf("coordinator: store user groups: %w", err)
	}
	s.access.groups = b
	s.applyPolicyLocked(s.currentPolicy().WithGroupMembers(byGroup(m)))
	s.logger.Info("user groups changed", "user", user, "groups", groups)
	return nil
}

// applyPolicyLocked puts p in force and recomputes every node's filter
// and peers. ac.setMu held.
func (s *Server) applyPolicyLocked(p *policy.Policy) {
	s.access.policy.Store(p)
	s.mu.Lock()
	clear(s.access.nets)
	relays := s.redesignatePeerRelaysLocked(p)
	for _, ss := range s.sessions {
		ss.mark(ss.key, true)
	}
	s.mu.Unlock()
	s.persistPeerRelays(relays)
}

// userSubjectsSetting is the settings name of the login identities users
// are bound to, a JSON object user -> LoginIdentity.
const userSubjectsSetting = "user_subjects_json"

// LoginIdentity is who a user is at the login provider.
type LoginIdentity struct {
	// Subject is the provider's stable ID of the person (issuer and sub).
	Subject string `json:"subject"`
	// DisplayName is the name claim of their last sign-in.
	DisplayName string `json:"name,omitempty"`
}

// BindLogin records that user is id.Subject at the login provider: on a
// user's first sign-in it binds them, later sign-ins must be the same
// subject (ErrConflict otherwise: the provider gave the email to another
// account). It updates the display name.
func (s *Server) BindLogin(ctx context.Context, user string, id LoginIdentity) error {
	s.access.setMu.Lock()
	defer s.access.setMu.Unlock()
	m := map[string]LoginIdentity{}
	b, err := s.store.Setting(ctx, userSubjectsSetting)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return fmt.Errorf("coordinator: load user logins: %w", err)
	default:
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("coordinator: stored user logins: %w", err)
		}
	}
	if old, ok := m[user]; ok && old.Subject != id.Subject {
		return fmt.Errorf("%w: user %q belongs to another account at the login provider", ErrConflict, user)
	}
	if m[user] == id {
		return nil
	}
	m[user] = id
	if b, err = json.Marshal(m); err != nil {
		return fmt.Errorf("coordinator: bind login: %w", err)
	}
	if err := s.store.SetSetting(ctx, userSubjectsSetting, b); err != nil {
		return fmt.Errorf("coordinator: store user logins: %w", err)
	}
	return nil
}

// forgetLogin drops user's login binding (the user is being deleted).
func (s *Server) forgetLogin(ctx context.Context, user string) error {
	s.access.setMu.Lock()
	defer s.access.setMu.Unlock()
	b, err := s.store.Setting(ctx, userSubjectsSetting)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("coordinator: load user logins: %w", err)
	}
	m := map[string]LoginIdentity{}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("coordinator: stored user logins: %w", err)
	}
	if _, ok := m[user]; !ok {
		return nil
	}
	delete(m, user)
	b, _ = json.Marshal(m)
	return s.store.SetSetting(ctx, userSubjectsSetting, b)
}
