package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// EnsureNetwork implements coordinator.NetworkStore.
func (s *Store) EnsureNetwork(ctx context.Context, name, domain string) (*coordinator.Network, error) {
	_, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO networks (name, domain, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`),
		name, domain, time.Now().UnixNano())
	if err != nil {
		return nil, s.wrap("ensure network", err)
	}
	n := &coordinator.Network{}
	var created int64
	err = s.db.QueryRowContext(ctx, s.d.rebind(`SELECT id, name, domain, created_at FROM networks WHERE name = ?`), name).
		Scan(&n.ID, &n.Name, &n.Domain, &created)
	if err != nil {
		return nil, s.wrap("ensure network", err)
	}
	n.CreatedAt = fromUnixNano(created)
	return n, nil
}

// Networks implements coordinator.NetworkStore.
func (s *Store) Networks(ctx context.Context) ([]*coordinator.Network, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, domain, created_at FROM networks ORDER BY id`)
	if err != nil {
		return nil, s.wrap("list networks", err)
	}
	defer rows.Close()
	var out []*coordinator.Network
	for rows.Next() {
		n := &coordinator.Network{}
		var created int64
		if err := rows.Scan(&n.ID, &n.Name, &n.Domain, &created); err != nil {
			return nil, s.wrap("list networks", err)
		}
		n.CreatedAt = fromUnixNano(created)
		out = append(out, n)
	}
	return out, s.wrap("list networks", rows.Err())
}

// CreateAuthKey implements coordinator.AuthKeyStore.
func (s *Store) CreateAuthKey(ctx context.Context, k *coordinator.AuthKey) error {
	tags, err := json.Marshal(nonNil(k.Tags))
	if err != nil {
		return err
	}
	err = s.db.QueryRowContext(ctx, s.d.rebind(`INSERT INTO auth_keys
		(network_id, prefix, hash, reusable, ephemeral, expires_at, tags, user_name, use_count, created_at, node_key_expiry, edge)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
		k.NetworkID, k.Prefix, k.Hash, boolInt(k.Reusable), boolInt(k.Ephemeral), unixNano(k.Expiry),
		string(tags), k.User, k.UseCount, unixNano(k.CreatedAt), int64(k.NodeKeyExpiry), boolInt(k.Edge)).Scan(&k.ID)
	return s.wrap("create auth key", err)
}

const authKeyCols = `id, network_id, prefix, hash, reusable, ephemeral, expires_at, tags, user_name, use_count, created_at, node_key_expiry, edge`

func scanAuthKey(sc interface{ Scan(...any) error }) (*coordinator.AuthKey, error) {
	k := &coordinator.AuthKey{}
	var reusable, ephemeral, edge int
	var expires, created, nodeKeyExpiry int64
	var tags string
	if err := sc.Scan(&k.ID, &k.NetworkID, &k.Prefix, &k.Hash, &reusable, &ephemeral, &expires, &tags, &k.User, &k.UseCount, &created, &nodeKeyExpiry, &edge); err != nil {
		return nil, err
	}
	k.NodeKeyExpiry = time.Duration(nodeKeyExpiry)
	k.Reusable, k.Ephemeral, k.Edge = reusable != 0, ephemeral != 0, edge != 0
	k.Expiry, k.CreatedAt = fromUnixNano(expires), fromUnixNano(created)
	if err := json.Unmarshal([]byte(tags), &k.Tags); err != nil {
		return nil, fmt.Errorf("decode tags: %w", err)
	}
	if len(k.Tags) == 0 {
		k.Tags = nil
	}
	return k, nil
}

// AuthKeyByHash implements coordinator.AuthKeyStore.
func (s *Store) AuthKeyByHash(ctx context.Context, hash []byte) (*coordinator.AuthKey, error) {
	k, err := scanAuthKey(s.db.QueryRowContext(ctx, s.d.rebind(`SELECT `+authKeyCols+` FROM auth_keys WHERE hash = ?`), hash))
	return k, s.wrap("auth key by hash", err)
}

// AuthKeys implements coordinator.AuthKeyStore.
func (s *Store) AuthKeys(ctx context.Context) ([]*coordinator.AuthKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+authKeyCols+` FROM auth_keys ORDER BY id`)
	if err != nil {
		return nil, s.wrap("list auth keys", err)
	}
	defer rows.Close()
	var out []*coordinator.AuthKey
	for rows.Next() {
		k, err := scanAuthKey(rows)
		if err != nil {
			return nil, s.wrap("list auth keys", err)
		}
		out = append(out, k)
	}
	return out, s.wrap("list auth keys", rows.Err())
}

// DeleteAuthKey implements coordinator.AuthKeyStore.
func (s *Store) DeleteAuthKey(ctx context.Context, prefix string) error {
	res, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM auth_keys WHERE prefix = ?`), prefix)
	return s.affected("delete auth key", res, err, coordinator.ErrNotFound)
}

// ConsumeAuthKey implements coordinator.AuthKeyStore.
func (s *Store) ConsumeAuthKey(ctx context.Context, id int64, now time.Time) error {
	return s.consume(ctx, s.db, id, now)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// consume spends one use of auth key id. It is one conditional UPDATE:
// the row lock it takes makes a concurrent consume of the same key wait,
// and re-check the condition once this one commits (PostgreSQL's READ
// COMMITTED re-evaluates the WHERE on the updated row; SQLite has one
// writer), so a one-off key is spent exactly once.
func (s *Store) consume(ctx context.Context, db execer, id int64, now time.Time) error {
	res, err := db.ExecContext(ctx, s.d.rebind(`UPDATE auth_keys SET use_count = use_count + 1
		WHERE id = ? AND (reusable = 1 OR use_count = 0) AND (expires_at = 0 OR expires_at > ?)`), id, now.UnixNano())
	return s.affected("consume auth key", res, err, coordinator.ErrAuthKeySpent)
}

// affected returns notFound unless the statement changed exactly one row.
func (s *Store) affected(op string, res sql.Result, err error, notFound error) error {
	if err != nil {
		return s.wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return s.wrap(op, err)
	}
	if n == 0 {
		return fmt.Errorf("sqlstore: %s: %w", op, notFound)
	}
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// nodeAddrs splits a node's addresses into its one IPv4 and one IPv6 address.
func nodeAddrs(n *wire.Node) (v4, v6 string, err error) {
	for _, p := range n.Addresses {
		if p.Addr().Is4() {
			v4 = p.Addr().String()
		} else {
			v6 = p.Addr().String()
		}
	}
	if v4 == "" || v6 == "" {
		return "", "", errors.New("node needs one IPv4 and one IPv6 address")
	}
	return v4, v6, nil
}

func nullID(id int64) sql.NullInt64 { return sql.NullInt64{Int64: id, Valid: id != 0} }

// nodeInsertCols are the columns InsertNode writes, in the order of its
// arguments.
const nodeInsertCols = `network_id, node_key, disco_key, name, hostname, os, ipv4, ipv6, endpoints, home_derp, last_seen, key_expiry,
	user_name, tags, ephemeral, auth_key_id, created_at, edge, peer_relay, reg_stamp`

// insertNodeSQL inserts a node on PostgreSQL; insertNodeKeyedSQL does so
// only if it can spend one use of the auth key $21 at the time $22 (the
// conditions of consume), in the same statement.
const (
	insertNodeSQL = `INSERT INTO nodes (` + nodeInsertCols + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING id`
	insertNodeKeyedSQL = `WITH k AS (UPDATE auth_keys SET use_count = use_count + 1
			WHERE id = $21 AND (reusable = 1 OR use_count = 0) AND (expires_at = 0 OR expires_at > $22) RETURNING id)
		INSERT INTO nodes (` + nodeInsertCols + `)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20 FROM k RETURNING id`
)

// InsertNode implements coordinator.NodeStore.
func (s *Store) InsertNode(ctx context.Context, n *coordinator.NodeRecord, now time.Time) error {
	v4, v6, err := nodeAddrs(&n.Node)
	if err != nil {
		return fmt.Errorf("sqlstore: insert node: %w", err)
	}
	eps, _ := json.Marshal(nonNil(n.Node.Endpoints))
	tags, _ := json.Marshal(nonNil(n.Node.Tags))
	disco := ""
	if !n.Node.DiscoKey.IsZero() {
		disco = n.Node.DiscoKey.String()
	}
	args := []any{n.NetworkID, n.Node.Key.String(), disco, n.Node.Name, n.Node.Hostname, n.Node.OS, v4, v6, string(eps), n.Node.HomeDERP,
		unixNano(n.Node.LastSeen), unixNano(n.Node.KeyExpiry), n.Node.User, string(tags), boolInt(n.Node.Ephemeral),
		nullID(n.AuthKeyID), unixNano(n.CreatedAt), boolInt(n.Node.Edge), int(n.Node.PeerRelay), unixNano(n.RegStamp)}
	var id int64
	if s.pgcfg != nil {
		// One statement, so one round trip, and its own transaction.
		// The unique node key, (network, name), IPv4 and IPv6 columns
		// decide a race between two coordinators: the second insert waits
		// for the first and then fails, and with it the key's use in the
		// same statement. The use comes first: the insert happens only if
		// the key could be used (no row to insert otherwise), and
		// concurrent uses of one key wait on its row, as consume's do.
		q := insertNodeSQL
		if n.AuthKeyID != 0 {
			q = insertNodeKeyedSQL
			args = append(args, n.AuthKeyID, now.UnixNano())
		}
		err = s.retry(ctx, "insert node", func() error { return s.db.QueryRowContext(ctx, q, args...).Scan(&id) })
		if errors.Is(err, coordinator.ErrNotFound) && n.AuthKeyID != 0 {
			// No row: the key was spent, expired or deleted.
			return fmt.Errorf("sqlstore: insert node: consume auth key: %w", coordinator.ErrAuthKeySpent)
		}
		if err != nil {
			return err
		}
		n.Node.ID = wire.NodeID(id)
		return nil
	}
	err = s.inTx(ctx, "insert node", func(tx *sql.Tx) error {
		if n.AuthKeyID != 0 {
			if err := s.consume(ctx, tx, n.AuthKeyID, now); err != nil {
				return err
			}
		}
		// SQLite has one writer: the transaction holds the database.
		return tx.QueryRowContext(ctx, `INSERT INTO nodes (`+nodeInsertCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`, args...).Scan(&id)
	})
	if err != nil {
		return err
	}
	n.Node.ID = wire.NodeID(id)
	return nil
}

// UpdateNode implements coordinator.NodeStore.
func (s *Store) UpdateNode(ctx context.Context, n *coordinator.NodeRecord) error {
	eps, _ := json.Marshal(nonNil(n.Node.Endpoints))
	disco := ""
	if !n.Node.DiscoKey.IsZero() {
		disco = n.Node.DiscoKey.String()
	}
	res, err := s.db.ExecContext(ctx, s.d.rebind(`UPDATE nodes SET disco_key = ?, hostname = ?, os = ?, endpoints = ?,
		home_derp = ?, peer_relay = ?, last_seen = ? WHERE id = ?`),
		disco, n.Node.Hostname, n.Node.OS, string(eps), n.Node.HomeDERP, int(n.Node.PeerRelay), unixNano(n.Node.LastSeen), int64(n.Node.ID))
	return s.affected("update node", res, err, coordinator.ErrNotFound)
}

// UpdateNodeExpiry implements coordinator.NodeStore.
func (s *Store) UpdateNodeExpiry(ctx context.Context, n *coordinator.NodeRecord) error {
	res, err := s.db.ExecContext(ctx, s.d.rebind(`UPDATE nodes SET key_expiry = ?,
		auth_key_id = (SELECT id FROM auth_keys WHERE id = ?) WHERE id = ?`),
		unixNano(n.Node.KeyExpiry), nullID(n.AuthKeyID), int64(n.Node.ID))
	return s.affected("update node expiry", res, err, coordinator.ErrNotFound)
}

// RenewNode implements coordinator.NodeStore.
func (s *Store) RenewNode(ctx context.Context, n *coordinator.NodeRecord, now time.Time) error {
	return s.inTx(ctx, "renew node", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.d.rebind(`UPDATE nodes SET key_expiry = ?,
			auth_key_id = (SELECT id FROM auth_keys WHERE id = ?) WHERE id = ?`),
			unixNano(n.Node.KeyExpiry), nullID(n.AuthKeyID), int64(n.Node.ID))
		if err := s.affected("renew node", res, err, coordinator.ErrNotFound); err != nil {
			return err
		}
		return s.consume(ctx, tx, n.AuthKeyID, now)
	})
}

// DeleteNode implements coordinator.NodeStore.
func (s *Store) DeleteNode(ctx context.Context, id wire.NodeID) error {
	res, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM nodes WHERE id = ?`), int64(id))
	return s.affected("delete node", res, err, coordinator.ErrNotFound)
}

// Nodes implements coordinator.NodeStore.
func (s *Store) Nodes(ctx context.Context) ([]*coordinator.NodeRecord, error) {
	return s.queryNodes(ctx, "list nodes", "")
}

// queryNodes returns the nodes that the condition where (" WHERE ...",
// with args; "" for all) selects, ordered by ID. op names the operation
// in errors.
func (s *Store) queryNodes(ctx context.Context, op, where string, args ...any) ([]*coordinator.NodeRecord, error) {
	return s.queryNodesWith(ctx, op, "", "", where, nil, args...)
}

// queryNodesWith is queryNodes with more: cols are more columns (each
// with a leading comma), joins more tables, and scan returns where to
// scan each row's extra columns (called once per row, in order).
func (s *Store) queryNodesWith(ctx context.Context, op, cols, joins, where string, scan func() []any, args ...any) ([]*coordinator.NodeRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.d.rebind(`SELECT n.id, n.network_id, n.node_key, n.disco_key, n.name, w.domain, n.hostname, n.os,
		n.ipv4, n.ipv6, n.endpoints, n.home_derp, n.last_seen, n.key_expiry, n.user_name, n.tags, n.ephemeral, n.auth_key_id, n.created_at, n.edge, n.peer_relay, n.reg_stamp`+cols+`
		FROM nodes n JOIN networks w ON w.id = n.network_id`+joins+where+` ORDER BY n.id`), args...)
	if err != nil {
		return nil, s.wrap(op, err)
	}
	defer rows.Close()
	var out []*coordinator.NodeRecord
	for rows.Next() {
		var (
			r                                       coordinator.NodeRecord
			id                                      int64
			nodeKey, disco, domain, v4, v6, eps, tg string
			lastSeen, expiry, created, regStamp     int64
			ephemeral, edge, peerRelay              int
			authKey                                 sql.NullInt64
		)
		dest := []any{&id, &r.NetworkID, &nodeKey, &disco, &r.Node.Name, &domain, &r.Node.Hostname, &r.Node.OS,
			&v4, &v6, &eps, &r.Node.HomeDERP, &lastSeen, &expiry, &r.Node.User, &tg, &ephemeral, &authKey, &created, &edge, &peerRelay, &regStamp}
		if scan != nil {
			dest = append(dest, scan()...)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, s.wrap(op, err)
		}
		if err := decodeNode(&r, id, nodeKey, disco, domain, v4, v6, eps, tg); err != nil {
			return nil, fmt.Errorf("sqlstore: %s: node %d: %w", op, id, err)
		}
		r.Node.LastSeen, r.Node.KeyExpiry, r.CreatedAt = fromUnixNano(lastSeen), fromUnixNano(expiry), fromUnixNano(created)
		r.RegStamp = fromUnixNano(regStamp)
		r.Node.Ephemeral, r.Node.Edge = ephemeral != 0, edge != 0
		r.Node.PeerRelay = uint16(peerRelay)
		r.AuthKeyID = authKey.Int64
		out = append(out, &r)
	}
	return out, s.wrap(op, rows.Err())
}

func decodeNode(r *coordinator.NodeRecord, id int64, nodeKey, disco, domain, v4, v6, eps, tags string) error {
	r.Node.ID = wire.NodeID(id)
	if err := r.Node.Key.UnmarshalText([]byte(nodeKey)); err != nil {
		return err
	}
	if disco != "" {
		var dk key.DiscoPublic
		if err := dk.UnmarshalText([]byte(disco)); err != nil {
			return err
		}
		r.Node.DiscoKey = dk
	}
	a4, err := netip.ParseAddr(v4)
	if err != nil {
		return err
	}
	a6, err := netip.ParseAddr(v6)
	if err != nil {
		return err
	}
	r.Node.Addresses = []netip.Prefix{netip.PrefixFrom(a4, 32), netip.PrefixFrom(a6, 128)}
	r.Node.DNSName = r.Node.Name + "." + domain + "."
	if err := json.Unmarshal([]byte(eps), &r.Node.Endpoints); err != nil {
		return err
	}
	if len(r.Node.Endpoints) == 0 {
		r.Node.Endpoints = nil
	}
	if err := json.Unmarshal([]byte(tags), &r.Node.Tags); err != nil {
		return err
	}
	if len(r.Node.Tags) == 0 {
		r.Node.Tags = nil
	}
	return nil
}

// Setting implements coordinator.SettingStore.
func (s *Store) Setting(ctx context.Context, name string) ([]byte, error) {
	var v []byte
	err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT value FROM settings WHERE name = ?`), name).Scan(&v)
	return v, s.wrap("get setting", err)
}

// SetSetting implements coordinator.SettingStore.
func (s *Store) SetSetting(ctx context.Context, name string, value []byte) error {
	_, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO settings (name, value) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`), name, value)
	return s.wrap("set setting", err)
}

// SetSettings implements coordinator.SettingStore.
func (s *Store) SetSettings(ctx context.Context, values map[string][]byte) error {
	return s.inTx(ctx, "set settings", func(tx *sql.Tx) error {
		for name, v := range values {
			if _, err := tx.ExecContext(ctx, s.d.rebind(`INSERT INTO settings (name, value) VALUES (?, ?)
				ON CONFLICT (name) DO UPDATE SET value = excluded.value`), name, v); err != nil {
				return err
			}
		}
		return nil
	})
}
