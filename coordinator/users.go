package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"beam.dev/beam/wire"
)

// Admin API for users (bearer token), JSON in and out:
//
//	POST   /api/v1/users          wire.CreateUserRequest -> 201 wire.User
//	GET    /api/v1/users          -> []wire.User
//	DELETE /api/v1/users/{name}   -> 204 (409 while nodes or auth keys name the user;
//	                                 ?nodes=delete removes them with the user)

// UserStore keeps users.
type UserStore interface {
	// CreateUser inserts u and sets u.ID; a taken name fails with ErrConflict.
	CreateUser(ctx context.Context, u *wire.User) error
	// Users lists all users sorted by name.
	Users(ctx context.Context) ([]*wire.User, error)
	// DeleteUser deletes the user called name, or returns ErrNotFound.
	DeleteUser(ctx context.Context, name string) error
}

// checkUserName reports whether name can be a user name: 1 to 64 bytes of
// letters, digits and ".-_@+", starting with a letter or digit. Policies
// name users bare, so a user name never holds ':' (tag:, group:) or '*'.
func checkUserName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%w: user name must be 1 to 64 characters", ErrInvalid)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && strings.ContainsRune(".-_@+", c)
		if !ok {
			return fmt.Errorf("%w: user name %q: use letters, digits and . - _ @ + (starting with a letter or digit)", ErrInvalid, name)
		}
	}
	return nil
}

// CreateUser adds a user called name.
func (s *Server) CreateUser(ctx context.Context, name string) (*wire.User, error) {
	if err := checkUserName(name); err != nil {
		return nil, err
	}
	u := &wire.User{Name: name, CreatedAt: s.now()}
	if err := s.store.CreateUser(ctx, u); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, fmt.Errorf("%w: user %q exists", ErrConflict, name)
		}
		return nil, fmt.Errorf("coordinator: create user: %w", err)
	}
	s.logger.Info("user created", "user", name)
	return u, nil
}

// Users lists all users sorted by name.
func (s *Server) Users(ctx context.Context) ([]*wire.User, error) {
	us, err := s.store.Users(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator: list users: %w", err)
	}
	return us, nil
}

// userExists reports whether a user called name exists.
func (s *Server) userExists(ctx context.Context, name string) (bool, error) {
	us, err := s.Users(ctx)
	if err != nil {
		return false, err
	}
	for _, u := range us {
		if u.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// DeleteUser deletes the user called name. It fails with ErrConflict while
// a node, an auth key or the policy still names the user.
func (s *Server) DeleteUser(ctx context.Context, name string) error {
	s.mu.Lock()
	nodes := 0
	for _, e := range s.nodes {
		if e.rec.Node.User == name {
			nodes++
		}
	}
	s.mu.Unlock()
	if nodes > 0 {
		return fmt.Errorf("%w: user %q owns %d node(s); remove them first (or delete the user with its nodes)", ErrConflict, name, nodes)
	}
	keys, err := s.store.AuthKeys(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: delete user: %w", err)
	}
	for _, k := range keys {
		if k.User == name {
			return fmt.Errorf("%w: auth key %s belongs to user %q; delete it first", ErrConflict, k.Prefix, name)
		}
	}
	if err := s.currentPolicy().CheckUsers(func(u string) bool { return u != name }); err != nil {
		return fmt.Errorf("%w: the policy names user %q; change it first", ErrConflict, name)
	}
	if err := s.store.DeleteUser(ctx, name); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: user %q", ErrNotFound, name)
		}
		return fmt.Errorf("coordinator: delete user: %w", err)
	}
	s.logger.Info("user deleted", "user", name)
	return nil
}

// checkKeyOwner checks the owner of a new auth key: user, if set, must
// exist, and every tag must be listed in the policy's tagOwners (only
// admins create keys, and admins may use every listed tag).
func (s *Server) checkKeyOwner(ctx context.Context, user string, tags []string) error {
	if user != "" {
		ok, err := s.userExists(ctx, user)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: unknown user %q (create it with beam admin users create)", ErrInvalid, user)
		}
	}
	if len(tags) > wire.MaxTags {
		// Nodes refuse peers with more (wire.MaxTags).
		return fmt.Errorf("%w: %d tags, at most %d", ErrInvalid, len(tags), wire.MaxTags)
	}
	p := s.currentPolicy()
	for _, t := range tags {
		if !strings.HasPrefix(t, "tag:") {
			return fmt.Errorf("%w: tag %q must start with \"tag:\"", ErrInvalid, t)
		}
		if !p.MayOwnTag(user, true, t) {
			return fmt.Errorf("%w: tag %q is not listed in the policy's tagOwners", ErrInvalid, t)
		}
	}
	return nil
}
