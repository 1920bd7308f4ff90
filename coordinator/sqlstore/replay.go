package sqlstore

import (
	"context"
	"errors"
	"time"

	"beam.dev/beam/coordinator"
)

var _ coordinator.ReplayStore = (*Store)(nil)

var errNoSharedReplay = errors.New("sqlstore: sealed requests are recorded on PostgreSQL only")

// SeeRequest implements coordinator.ReplayStore, on PostgreSQL: one
// statement, which inserts the request's hash or takes over a record
// past its time, and returns a row only if it did.
func (s *Store) SeeRequest(ctx context.Context, h [32]byte, now, until time.Time) (bool, error) {
	if s.pgcfg == nil {
		return false, errNoSharedReplay
	}
	rows, err := s.db.QueryContext(ctx, `INSERT INTO requests_seen (hash, until) VALUES ($1, $2)
		ON CONFLICT (hash) DO UPDATE SET until = EXCLUDED.until WHERE requests_seen.until <= $3
		RETURNING 1`, h[:], until.UnixNano(), now.UnixNano())
	if err != nil {
		return false, s.wrap("see request", err)
	}
	defer rows.Close()
	fresh := rows.Next()
	return fresh, s.wrap("see request", rows.Err())
}

// ForgetRequests implements coordinator.ReplayStore.
func (s *Store) ForgetRequests(ctx context.Context, now time.Time) error {
	if s.pgcfg == nil {
		return errNoSharedReplay
	}
	_, err := s.db.ExecContext(ctx, `DELETE FROM requests_seen WHERE until <= $1`, now.UnixNano())
	return s.wrap("forget requests", err)
}
