package sqlstore

import (
	"context"
	"fmt"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// AppendAudit implements coordinator.AuditStore.
func (s *Store) AppendAudit(ctx context.Context, entries []wire.AuditEntry) (err error) {
	if len(entries) == 0 {
		return nil
	}
	if s.pgcfg != nil {
		// One statement whatever the number of entries, its own
		// transaction; ordinality keeps the IDs in the entries' order.
		ats := make([]int64, len(entries))
		cols := make([][]string, 4)
		for i, e := range entries {
			ats[i] = unixNano(e.Time)
			for j, v := range []string{e.Actor, e.Action, e.Target, e.Detail} {
				cols[j] = append(cols[j], v)
			}
		}
		_, err := s.db.ExecContext(ctx, `INSERT INTO audit_log (at, actor, action, target, detail)
			SELECT at, actor, action, target, detail
			FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) WITH ORDINALITY AS e(at, actor, action, target, detail, i)
			ORDER BY i`, ats, cols[0], cols[1], cols[2], cols[3])
		return s.wrap("append audit", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap("append audit", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	q := s.d.rebind(`INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)`)
	for _, e := range entries {
		if _, err := tx.ExecContext(ctx, q, unixNano(e.Time), e.Actor, e.Action, e.Target, e.Detail); err != nil {
			return s.wrap("append audit", err)
		}
	}
	return s.wrap("append audit", tx.Commit())
}

// Audit implements coordinator.AuditStore.
func (s *Store) Audit(ctx context.Context, limit int) ([]wire.AuditEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("sqlstore: audit: limit %d: %w", limit, coordinator.ErrInvalid)
	}
	rows, err := s.db.QueryContext(ctx, s.d.rebind(`SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?`), limit)
	if err != nil {
		return nil, s.wrap("audit", err)
	}
	defer rows.Close()
	var out []wire.AuditEntry
	for rows.Next() {
		var e wire.AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.Target, &e.Detail); err != nil {
			return nil, s.wrap("audit", err)
		}
		e.Time = fromUnixNano(at)
		out = append(out, e)
	}
	return out, s.wrap("audit", rows.Err())
}
