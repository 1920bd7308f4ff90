package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// The coordinator.NodeFeed of a store on PostgreSQL: triggers send a
// notification with the writer's origin and the node's ID for every
// write to a node or its stream state (migration 0006), and with a kind
// and a key for every write to a setting, route or domain (0008);
// ListenNodes listens on a connection of its own.

var _ coordinator.NodeFeed = (*Store)(nil)

// originSetting is the custom setting each connection of a store sets to
// the store's origin; the triggers put it in their notifications.
const originSetting = "beam.origin"

// feedChannelPrefix is the notification channel's name before the
// schema's.
const feedChannelPrefix = "beam_nodes:"

// feedRetry is how long ListenNodes waits before connecting again.
const feedRetry = time.Second

var errNoFeed = errors.New("sqlstore: node changes are followed on PostgreSQL only")

// newOrigin returns a random origin for a store.
func newOrigin() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SharedNodes implements coordinator.NodeFeed: true on PostgreSQL, where
// several coordinators may share the database.
func (s *Store) SharedNodes() bool { return s.pgcfg != nil }

// ListenNodes implements coordinator.NodeFeed.
func (s *Store) ListenNodes(ctx context.Context, resync func(ctx context.Context), changed func(ctx context.Context, ch coordinator.Change), failed func(error)) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	for {
		err := s.listenOnce(ctx, resync, changed)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if failed != nil && err != nil {
			failed(err) // the connection failed or broke: connect again
		}
		t := time.NewTimer(feedRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listenOnce runs one listening connection until it fails or ctx is done.
func (s *Store) listenOnce(ctx context.Context, resync func(ctx context.Context), changed func(ctx context.Context, ch coordinator.Change)) error {
	conn, err := pgx.ConnectConfig(ctx, s.pgcfg.Copy())
	if err != nil {
		return fmt.Errorf("sqlstore: connect listener: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return fmt.Errorf("sqlstore: listener schema: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{feedChannelPrefix + schema}.Sanitize()); err != nil {
		return fmt.Errorf("sqlstore: listen: %w", err)
	}
	resync(ctx)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("sqlstore: wait for notification: %w", err)
		}
		origin, ch, ok := parseChange(n.Payload)
		if !ok || origin == s.origin {
			continue
		}
		changed(ctx, ch)
	}
}

// changeKinds maps a notification's kind to the coordinator's.
var changeKinds = map[string]coordinator.ChangeKind{
	"setting": coordinator.ChangeSetting,
	"route":   coordinator.ChangeRoute,
	"domain":  coordinator.ChangeDomain,
	"pending": coordinator.ChangePending,
}

// parseChange reads a notification's payload: "ORIGIN NODE_ID" for a
// node (migration 0006), "ORIGIN KIND KEY" for the rest (0008).
func parseChange(payload string) (origin string, ch coordinator.Change, ok bool) {
	origin, rest, ok := strings.Cut(payload, " ")
	if !ok {
		return "", ch, false
	}
	kind, k, ok := strings.Cut(rest, " ")
	if !ok {
		id, err := strconv.ParseInt(rest, 10, 64)
		return origin, coordinator.Change{Kind: coordinator.ChangeNode, ID: id}, err == nil
	}
	ch.Kind, ok = changeKinds[kind]
	if !ok {
		return "", ch, false
	}
	if ch.Kind == coordinator.ChangeRoute {
		id, err := strconv.ParseInt(k, 10, 64)
		return origin, coordinator.Change{Kind: ch.Kind, ID: id}, err == nil
	}
	ch.Name = k
	return origin, ch, true
}

// NodeByID implements coordinator.NodeFeed.
func (s *Store) NodeByID(ctx context.Context, id wire.NodeID) (*coordinator.NodeRecord, bool, error) {
	if s.pgcfg == nil {
		return nil, false, errNoFeed
	}
	recs, err := s.queryNodes(ctx, "node by id", ` WHERE n.id = ?`, int64(id))
	if err != nil {
		return nil, false, err
	}
	if len(recs) == 0 {
		return nil, false, fmt.Errorf("%w: node %d", coordinator.ErrNotFound, id)
	}
	return s.withOnline(ctx, recs[0])
}

// withOnline returns rec and whether it streams from another store's
// coordinator.
func (s *Store) withOnline(ctx context.Context, rec *coordinator.NodeRecord) (*coordinator.NodeRecord, bool, error) {
	var origin string
	err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT origin FROM node_online WHERE node_id = ?`), int64(rec.Node.ID)).Scan(&origin)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return rec, false, nil
	case err != nil:
		return nil, false, s.wrap("node online", err)
	}
	return rec, origin != s.origin, nil
}

// NodeByKey implements coordinator.NodeFeed.
func (s *Store) NodeByKey(ctx context.Context, nk key.NodePublic) (*coordinator.NodeRecord, bool, error) {
	if s.pgcfg == nil {
		return nil, false, errNoFeed
	}
	recs, err := s.queryNodes(ctx, "node by key", ` WHERE n.node_key = ?`, nk.String())
	if err != nil {
		return nil, false, err
	}
	if len(recs) == 0 {
		return nil, false, fmt.Errorf("%w: node %s", coordinator.ErrNotFound, nk.ShortString())
	}
	return s.withOnline(ctx, recs[0])
}

// beatStale is how long after its last heartbeat a store's coordinator
// counts as gone: Heartbeat then deletes its stream states.
var beatStale = 15 * time.Second

// dbNow is the database's clock in Unix nanoseconds, in SQL.
const dbNow = `(EXTRACT(EPOCH FROM clock_timestamp()) * 1e9)::BIGINT`

// Heartbeat implements coordinator.NodeFeed: it records that this
// store's coordinator is alive, and deletes the stream states (and
// heartbeats) of coordinators that have not beaten for beatStale, which
// tells the others their nodes went offline; it returns those nodes, and
// whether this store had no beat on record (its first, or after another
// store dropped it as stale).
func (s *Store) Heartbeat(ctx context.Context) (dropped []wire.NodeID, missing bool, err error) {
	if s.pgcfg == nil {
		return nil, false, errNoFeed
	}
	err = s.inTx(ctx, "heartbeat", func(tx *sql.Tx) error {
		dropped = nil
		// xmax is 0 in a row the statement inserted, not updated.
		if err := tx.QueryRowContext(ctx, s.d.rebind(`INSERT INTO coordinator_beats (origin, beat) VALUES (?, `+dbNow+`)
			ON CONFLICT (origin) DO UPDATE SET beat = EXCLUDED.beat RETURNING xmax = 0`), s.origin).Scan(&missing); err != nil {
			return err
		}
		cutoff := `(` + dbNow + ` - ` + strconv.FormatInt(int64(beatStale), 10) + `)`
		rows, err := tx.QueryContext(ctx, `DELETE FROM node_online WHERE origin NOT IN
			(SELECT origin FROM coordinator_beats WHERE beat >= `+cutoff+`) RETURNING node_id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			dropped = append(dropped, wire.NodeID(id))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM coordinator_beats WHERE beat < `+cutoff)
		return err
	})
	return dropped, missing, err
}

// RemoteOnline implements coordinator.NodeFeed.
func (s *Store) RemoteOnline(ctx context.Context) (map[wire.NodeID]bool, error) {
	if s.pgcfg == nil {
		return nil, errNoFeed
	}
	rows, err := s.db.QueryContext(ctx, s.d.rebind(`SELECT node_id FROM node_online WHERE origin <> ?`), s.origin)
	if err != nil {
		return nil, s.wrap("online nodes", err)
	}
	defer rows.Close()
	out := make(map[wire.NodeID]bool)
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, s.wrap("online nodes", err)
		}
		out[wire.NodeID(id)] = true
	}
	return out, s.wrap("online nodes", rows.Err())
}

// SetNodeOnline implements coordinator.NodeFeed.
func (s *Store) SetNodeOnline(ctx context.Context, id wire.NodeID, online bool) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	if !online {
		_, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM node_online WHERE node_id = ? AND origin = ?`), int64(id), s.origin)
		return s.wrap("set node offline", err)
	}
	// A node deleted meanwhile has no row to refer to: nothing to do.
	_, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO node_online (node_id, origin, since)
		SELECT id, ?, ? FROM nodes WHERE id = ?
		ON CONFLICT (node_id) DO UPDATE SET origin = EXCLUDED.origin, since = EXCLUDED.since`),
		s.origin, time.Now().UnixNano(), int64(id))
	return s.wrap("set node online", err)
}
