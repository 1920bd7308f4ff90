package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

var (
	_ coordinator.RouteStore  = (*Store)(nil)
	_ coordinator.RouteFeed   = (*Store)(nil)
	_ coordinator.DomainStore = (*Store)(nil)
)

// PutRoute implements coordinator.RouteStore. It is also where two
// coordinators sharing the database cannot both hand out one public name
// or edge port: it fails with coordinator.ErrConflict, storing nothing,
// when another node's route holds r.Host and the two are not both pool
// routes of one network, or when another host holds r's tcp or udp
// public port. Route writes run one at a time (a transaction lock on
// PostgreSQL, the single writer on SQLite), so the check and the write
// see the same routes.
func (s *Store) PutRoute(ctx context.Context, r *coordinator.Route) error {
	opts := "{}"
	if !r.Options.IsZero() {
		b, err := json.Marshal(r.Options)
		if err != nil {
			return fmt.Errorf("sqlstore: put route: %w", err)
		}
		opts = string(b)
	}
	var id int64
	var version string
	err := s.inTx(ctx, "put route", func(tx *sql.Tx) error {
		if s.d.lockTx != nil {
			if err := s.d.lockTx(ctx, tx, lockRoutes); err != nil {
				return err
			}
		}
		if err := s.checkRouteClaim(ctx, tx, r); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, s.d.rebind(`INSERT INTO routes
			(node_id, network_id, host, proto, public_port, port, custom_domain, pool, upstream, options, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (node_id, host, proto) DO UPDATE SET
				public_port = excluded.public_port, port = excluded.port,
				custom_domain = excluded.custom_domain, pool = excluded.pool, upstream = excluded.upstream,
				options = excluded.options
			RETURNING id, `+s.routeVersion()),
			int64(r.NodeID), r.NetworkID, r.Host, r.Proto, int(r.PublicPort), int(r.Port), boolInt(r.CustomDomain), boolInt(r.Pool), r.Upstream, opts,
			unixNano(r.CreatedAt)).Scan(&id, &version)
	})
	if err != nil {
		return err
	}
	r.ID, r.Version = id, version
	return nil
}

// checkRouteClaim returns ErrConflict if r's host or public port belongs
// to another node's route (see PutRoute).
func (s *Store) checkRouteClaim(ctx context.Context, tx *sql.Tx, r *coordinator.Route) error {
	var n int
	err := tx.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM routes
		WHERE host = ? AND node_id <> ? AND (network_id <> ? OR pool = 0 OR ? = 0)`),
		r.Host, int64(r.NodeID), r.NetworkID, boolInt(r.Pool)).Scan(&n)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("sqlstore: put route: %w: %s is published by another node", coordinator.ErrConflict, r.Host)
	}
	if r.PublicPort == 0 {
		return nil
	}
	err = tx.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM routes WHERE proto = ? AND public_port = ? AND host <> ?`),
		r.Proto, int(r.PublicPort), r.Host).Scan(&n)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("sqlstore: put route: %w: %s port %d is published under another name", coordinator.ErrConflict, r.Proto, r.PublicPort)
	}
	return nil
}

// DeleteRoutes implements coordinator.RouteStore.
func (s *Store) DeleteRoutes(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	q := `DELETE FROM routes WHERE id IN (?` + strings.Repeat(", ?", len(ids)-1) + `)`
	_, err := s.db.ExecContext(ctx, s.d.rebind(q), args...)
	return s.wrap("delete routes", err)
}

// Routes implements coordinator.RouteStore.
func (s *Store) Routes(ctx context.Context) ([]*coordinator.Route, error) {
	return s.queryRoutes(ctx, "list routes", "")
}

// RouteByID implements coordinator.RouteFeed.
func (s *Store) RouteByID(ctx context.Context, id int64) (*coordinator.Route, error) {
	rs, err := s.queryRoutes(ctx, "route by id", ` WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("sqlstore: route by id: %w: route %d", coordinator.ErrNotFound, id)
	}
	return rs[0], nil
}

// queryRoutes returns the routes the condition where (" WHERE ...", with
// args; "" for all) selects, ordered by ID. op names the operation in
// errors.
func (s *Store) queryRoutes(ctx context.Context, op, where string, args ...any) ([]*coordinator.Route, error) {
	rows, err := s.db.QueryContext(ctx, s.d.rebind(`SELECT id, node_id, network_id, host, proto, public_port, port, custom_domain, pool, upstream, options, created_at, `+s.routeVersion()+`
		FROM routes`+where+` ORDER BY id`), args...)
	if err != nil {
		return nil, s.wrap(op, err)
	}
	defer rows.Close()
	var out []*coordinator.Route
	for rows.Next() {
		var (
			r                        coordinator.Route
			nodeID                   int64
			publicPort, port, custom int
			pool                     int
			opts                     string
			created                  int64
		)
		if err := rows.Scan(&r.ID, &nodeID, &r.NetworkID, &r.Host, &r.Proto, &publicPort, &port, &custom, &pool, &r.Upstream, &opts, &created, &r.Version); err != nil {
			return nil, s.wrap(op, err)
		}
		r.NodeID = wire.NodeID(nodeID)
		r.PublicPort, r.Port, r.CustomDomain, r.Pool = uint16(publicPort), uint16(port), custom != 0, pool != 0
		r.CreatedAt = fromUnixNano(created)
		o, err := decodeRouteOptions(opts)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: %s: route %d options: %w", op, r.ID, err)
		}
		r.Options = o
		out = append(out, &r)
	}
	return out, s.wrap(op, rows.Err())
}

// routeVersion is the SQL of a routes row's coordinator.Route.Version:
// its xmin on PostgreSQL (a new one with each write), empty on SQLite.
func (s *Store) routeVersion() string {
	if s.pgcfg == nil {
		return `''`
	}
	return `xmin::text`
}

// AckRoute implements coordinator.EdgeAcks.
func (s *Store) AckRoute(ctx context.Context, id int64, version string, edges []wire.NodeID) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	ids := make([]int64, len(edges))
	for i, e := range edges {
		ids[i] = int64(e)
	}
	// A route or edge deleted meanwhile has nothing to acknowledge.
	_, err := s.db.ExecContext(ctx, `INSERT INTO edge_acks (route_id, edge_id, version)
		SELECT r.id, n.id, $2 FROM routes r, nodes n WHERE r.id = $1 AND n.id = ANY($3)
		ON CONFLICT (route_id, edge_id) DO UPDATE SET version = EXCLUDED.version`, id, version, ids)
	return s.wrap("acknowledge route", err)
}

// RouteAcks implements coordinator.EdgeAcks.
func (s *Store) RouteAcks(ctx context.Context, id int64, version string) ([]wire.NodeID, error) {
	if s.pgcfg == nil {
		return nil, errNoFeed
	}
	rows, err := s.db.QueryContext(ctx, `SELECT edge_id FROM edge_acks WHERE route_id = $1 AND version = $2`, id, version)
	if err != nil {
		return nil, s.wrap("route acknowledgements", err)
	}
	defer rows.Close()
	var out []wire.NodeID
	for rows.Next() {
		var e int64
		if err := rows.Scan(&e); err != nil {
			return nil, s.wrap("route acknowledgements", err)
		}
		out = append(out, wire.NodeID(e))
	}
	return out, s.wrap("route acknowledgements", rows.Err())
}

// decodeRouteOptions reads a route's stored options: wire.RouteOptions as
// JSON, or the string map routes were stored with before options were
// typed (wire.RouteOptionsFromLegacy).
func decodeRouteOptions(s string) (wire.RouteOptions, error) {
	var o wire.RouteOptions
	err := json.Unmarshal([]byte(s), &o)
	if err == nil {
		return o, nil
	}
	var legacy map[string]string
	if json.Unmarshal([]byte(s), &legacy) != nil {
		return o, err
	}
	return wire.RouteOptionsFromLegacy(legacy)
}

// PutDomain implements coordinator.DomainStore.
func (s *Store) PutDomain(ctx context.Context, d *coordinator.Domain) error {
	_, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO domains (network_id, domain, token, verified_at, created_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (network_id, domain) DO UPDATE SET token = excluded.token, verified_at = excluded.verified_at`),
		d.NetworkID, d.Domain, d.Token, unixNano(d.VerifiedAt), unixNano(d.CreatedAt))
	return s.wrap("put domain", err)
}

// DeleteDomain implements coordinator.DomainStore.
func (s *Store) DeleteDomain(ctx context.Context, networkID int64, domain string) error {
	_, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM domains WHERE network_id = ? AND domain = ?`), networkID, domain)
	return s.wrap("delete domain", err)
}

// Domains implements coordinator.DomainStore.
func (s *Store) Domains(ctx context.Context) ([]*coordinator.Domain, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT network_id, domain, token, verified_at, created_at FROM domains ORDER BY domain, network_id`)
	if err != nil {
		return nil, s.wrap("list domains", err)
	}
	defer rows.Close()
	var out []*coordinator.Domain
	for rows.Next() {
		d := &coordinator.Domain{}
		var verified, created int64
		if err := rows.Scan(&d.NetworkID, &d.Domain, &d.Token, &verified, &created); err != nil {
			return nil, s.wrap("list domains", err)
		}
		d.VerifiedAt, d.CreatedAt = fromUnixNano(verified), fromUnixNano(created)
		out = append(out, d)
	}
	return out, s.wrap("list domains", rows.Err())
}
