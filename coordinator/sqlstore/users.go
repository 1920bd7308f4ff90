package sqlstore

import (
	"context"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// CreateUser implements coordinator.UserStore.
func (s *Store) CreateUser(ctx context.Context, u *wire.User) error {
	err := s.db.QueryRowContext(ctx, s.d.rebind(`INSERT INTO users (name, created_at) VALUES (?, ?) RETURNING id`), u.Name, unixNano(u.CreatedAt)).Scan(&u.ID)
	return s.wrap("create user", err)
}

// Users implements coordinator.UserStore.
func (s *Store) Users(ctx context.Context) ([]*wire.User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at FROM users ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list users", err)
	}
	defer rows.Close()
	var out []*wire.User
	for rows.Next() {
		u := &wire.User{}
		var created int64
		if err := rows.Scan(&u.ID, &u.Name, &created); err != nil {
			return nil, s.wrap("list users", err)
		}
		u.CreatedAt = fromUnixNano(created)
		out = append(out, u)
	}
	return out, s.wrap("list users", rows.Err())
}

// DeleteUser implements coordinator.UserStore.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM users WHERE name = ?`), name)
	return s.affected("delete user", res, err, coordinator.ErrNotFound)
}
