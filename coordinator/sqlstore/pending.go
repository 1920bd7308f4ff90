package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"beam.dev/beam/coordinator"
)

var _ coordinator.ApprovalStore = (*Store)(nil)

var errNoPending = errors.New("sqlstore: pending registrations are kept on PostgreSQL only")

// AddPending implements coordinator.ApprovalStore. An expired
// registration of the same node (not swept yet) is replaced.
func (s *Store) AddPending(ctx context.Context, p *coordinator.PendingRecord) (*coordinator.PendingRecord, error) {
	if s.pgcfg == nil {
		return nil, errNoPending
	}
	src := ""
	if p.Source.IsValid() {
		src = p.Source.String()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO pending_registrations (code, node_key, hostname, os, source, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (node_key) DO UPDATE
		SET code = EXCLUDED.code, hostname = EXCLUDED.hostname, os = EXCLUDED.os, source = EXCLUDED.source,
			created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, approval = ''
		WHERE pending_registrations.expires_at <= EXCLUDED.created_at`,
		p.Code, p.NodeKey.String(), p.Hostname, p.OS, src, unixNano(p.Created), unixNano(p.Expires))
	if err != nil {
		return nil, s.wrap("add pending registration", err)
	}
	recs, err := s.queryPendings(ctx, "add pending registration", ` WHERE node_key = $1`, p.NodeKey.String())
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 { // approved and deleted meanwhile
		return nil, fmt.Errorf("sqlstore: add pending registration: %w", coordinator.ErrConflict)
	}
	return recs[0], nil
}

// PendingByCode implements coordinator.ApprovalStore.
func (s *Store) PendingByCode(ctx context.Context, code string) (*coordinator.PendingRecord, error) {
	if s.pgcfg == nil {
		return nil, errNoPending
	}
	recs, err := s.queryPendings(ctx, "pending registration", ` WHERE code = $1`, code)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("sqlstore: pending registration %s: %w", code, coordinator.ErrNotFound)
	}
	return recs[0], nil
}

// Pendings implements coordinator.ApprovalStore.
func (s *Store) Pendings(ctx context.Context) ([]*coordinator.PendingRecord, error) {
	if s.pgcfg == nil {
		return nil, errNoPending
	}
	return s.queryPendings(ctx, "list pending registrations", "")
}

// ApprovePending implements coordinator.ApprovalStore.
func (s *Store) ApprovePending(ctx context.Context, code string, a coordinator.Approval) error {
	if s.pgcfg == nil {
		return errNoPending
	}
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("sqlstore: approve: %w", err)
	}
	var approved string
	err = s.db.QueryRowContext(ctx, `SELECT approval FROM pending_registrations WHERE code = $1`, code).Scan(&approved)
	if err != nil {
		return s.wrap("approve", err)
	}
	// Only one approval wins: the update takes a row still waiting, and
	// not expired (the sweep deletes expired rows only now and then).
	res, err := s.db.ExecContext(ctx, `UPDATE pending_registrations SET approval = $1 WHERE code = $2 AND approval = '' AND expires_at > $3`,
		string(b), code, time.Now().UnixNano())
	return s.affected("approve", res, err, coordinator.ErrConflict)
}

// DeletePendings implements coordinator.ApprovalStore.
func (s *Store) DeletePendings(ctx context.Context, codes []string, now time.Time) error {
	if s.pgcfg == nil {
		return errNoPending
	}
	var conds []string
	var args []any
	if len(codes) > 0 {
		args = append(args, codes)
		conds = append(conds, `code = ANY($1)`)
	}
	if !now.IsZero() {
		args = append(args, now.UnixNano())
		conds = append(conds, fmt.Sprintf(`expires_at <= $%d`, len(args)))
	}
	if len(conds) == 0 {
		return nil
	}
	_, err := s.db.ExecContext(ctx, `DELETE FROM pending_registrations WHERE `+strings.Join(conds, " OR "), args...)
	return s.wrap("delete pending registrations", err)
}

// queryPendings returns the registrations the condition where selects.
func (s *Store) queryPendings(ctx context.Context, op, where string, args ...any) ([]*coordinator.PendingRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT code, node_key, hostname, os, source, created_at, expires_at, approval
		FROM pending_registrations`+where+` ORDER BY created_at`, args...)
	if err != nil {
		return nil, s.wrap(op, err)
	}
	defer rows.Close()
	var out []*coordinator.PendingRecord
	for rows.Next() {
		var (
			p                 coordinator.PendingRecord
			nk, src, approval string
			created, expires  int64
		)
		if err := rows.Scan(&p.Code, &nk, &p.Hostname, &p.OS, &src, &created, &expires, &approval); err != nil {
			return nil, s.wrap(op, err)
		}
		if err := p.NodeKey.UnmarshalText([]byte(nk)); err != nil {
			return nil, fmt.Errorf("sqlstore: %s: %s: %w", op, p.Code, err)
		}
		if src != "" {
			if p.Source, err = netip.ParseAddr(src); err != nil {
				return nil, fmt.Errorf("sqlstore: %s: %s: %w", op, p.Code, err)
			}
		}
		p.Created, p.Expires = fromUnixNano(created), fromUnixNano(expires)
		if approval != "" {
			p.Approval = new(coordinator.Approval)
			if err := json.Unmarshal([]byte(approval), p.Approval); err != nil {
				return nil, fmt.Errorf("sqlstore: %s: %s: %w", op, p.Code, err)
			}
		}
		out = append(out, &p)
	}
	return out, s.wrap(op, rows.Err())
}
