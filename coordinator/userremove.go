package coordinator

import (
	"context"
	"errors"
	"fmt"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// DeleteUserAndNodes deletes the user called name together with
// everything that admits them: their nodes (tagged ones they registered
// too) are removed (their streams end
// and peers drop them), their auth keys deleted, and the groups a login
// gave them forgotten. actor is recorded in the audit log for each. It
// fails with ErrConflict, having changed nothing, while the policy names
// the user. It returns the names of the removed nodes.
//
// DELETE /api/v1/users/{name}?nodes=delete runs it.
func (s *Server) DeleteUserAndNodes(ctx context.Context, actor, name string) ([]string, error) {
	if ok, err := s.userExists(ctx, name); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	if err := s.currentPolicy().CheckUsers(func(u string) bool { return u != name }); err != nil {
		return nil, fmt.Errorf("%w: the policy names user %q; change it first", ErrConflict, name)
	}
	type owned struct {
		k    key.NodePublic
		name string
	}
	var nodes []owned
	s.mu.Lock()
	for k, e := range s.nodes {
		if e.rec.Node.User == name {
			nodes = append(nodes, owned{k, e.rec.Node.Name})
		}
	}
	s.mu.Unlock()
	var removed []string
	for _, n := range nodes {
		if err := s.removeNode(ctx, n.k, wire.CodeNodeRemoved, "node's user was removed"); err != nil && !errors.Is(err, ErrNotFound) {
			return removed, fmt.Errorf("coordinator: remove node %s of user %q: %w", n.name, name, err)
		}
		s.audit(ctx, actor, "node.remove", n.name, "user "+name+" removed")
		removed = append(removed, n.name)
	}
	keys, err := s.store.AuthKeys(ctx)
	if err != nil {
		return removed, fmt.Errorf("coordinator: delete user: %w", err)
	}
	for _, k := range keys {
		if k.User != name {
			continue
		}
		err := s.store.DeleteAuthKey(ctx, k.Prefix)
		s.reg.forgetKeys()
		if err != nil && !errors.Is(err, ErrNotFound) {
			return removed, fmt.Errorf("coordinator: delete auth key %s of user %q: %w", k.Prefix, name, err)
		}
		s.audit(ctx, actor, "authkey.delete", k.Prefix, "user "+name+" removed")
	}
	if err := s.SetUserGroups(ctx, name, nil); err != nil {
		return removed, err
	}
	if err := s.forgetLogin(ctx, name); err != nil {
		return removed, err
	}
	if err := s.DeleteUser(ctx, name); err != nil {
		return removed, err
	}
	s.audit(ctx, actor, "user.delete", name, fmt.Sprintf("with %d node(s)", len(removed)))
	return removed, nil
}
