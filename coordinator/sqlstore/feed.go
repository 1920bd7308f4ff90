package sqlstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// The coordinator.NodeFeed of a store on PostgreSQL: triggers send a
// notification with the writer's origin and the node's ID for every
// write to a node (migration 0006), with the node's ID and its new stream
// state for every write to that (0015), and with a kind and a key for
// every write to a setting, route or domain (0008); ListenNodes listens
// on a connection of its own.

var (
	_ coordinator.NodeFeed    = (*Store)(nil)
	_ coordinator.ClashReader = (*Store)(nil)
	_ coordinator.EdgeAcks    = (*Store)(nil)
)

// originSetting is the custom setting each connection of a store sets to
// the store's origin; the triggers put it in their notifications.
const originSetting = "beam.origin"

// feedChannelPrefix is the notification channel's name before the
// schema's.
const feedChannelPrefix = "beam_nodes:"

// feedRetry is how long ListenNodes waits before connecting again after
// a first failure; each failure in a row doubles it, up to feedRetryMax.
const (
	feedRetry    = time.Second
	feedRetryMax = 5 * time.Second
)

// listenIdle is how long the listener waits for a notification before
// it checks its connection with a query, which must answer within
// listenCheckTimeout: a connection left half open (the database failed
// over, a NAT forgot it) otherwise blocks until TCP gives up, minutes
// later, and every change made meanwhile is missed. Variables for tests.
var (
	listenIdle         = 10 * time.Second
	listenCheckTimeout = 5 * time.Second
)

// listenConnectTimeout bounds the listener's connection and LISTEN.
const listenConnectTimeout = 30 * time.Second

// listenerName is the application_name of the listener's connection,
// which names it in pg_stat_activity.
const listenerName = "beam listener"

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
func (s *Store) ListenNodes(ctx context.Context, resync func(ctx context.Context) error, changed func(ctx context.Context, chs []coordinator.Change) error, failed func(error)) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	wait := feedRetry
	for {
		synced, err := s.listenOnce(ctx, resync, changed)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if failed != nil && err != nil {
			failed(err) // the connection failed or broke: connect again
		}
		if synced {
			wait = feedRetry // it worked for a while: not a failure in a row
		}
		t := time.NewTimer(wait)
		wait = min(2*wait, feedRetryMax)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listenOnce runs one listening connection until it fails or ctx is
// done; synced reports whether it got as far as a successful resync.
func (s *Store) listenOnce(ctx context.Context, resync func(ctx context.Context) error, changed func(ctx context.Context, chs []coordinator.Change) error) (synced bool, err error) {
	cfg := s.pgcfg.Copy()
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = listenerName
	}
	cctx, cancel := context.WithTimeout(ctx, listenConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return false, fmt.Errorf("sqlstore: connect listener: %w", err)
	}
	defer func() {
		// Closing says goodbye to the server, which may not answer.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), listenCheckTimeout)
		defer cancel()
		conn.Close(ctx)
	}()
	var schema string
	if err := conn.QueryRow(cctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return false, fmt.Errorf("sqlstore: listener schema: %w", err)
	}
	if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{feedChannelPrefix + schema}.Sanitize()); err != nil {
		return false, fmt.Errorf("sqlstore: listen: %w", err)
	}
	if err := resync(ctx); err != nil {
		return false, fmt.Errorf("sqlstore: resync after listening: %w", err)
	}
	// A reader takes the notifications off the connection as they come,
	// and this loop applies what it has taken at once: those that came
	// while the last batch was applied (a burst of writes elsewhere,
	// thousands of nodes connecting, costs a read and a lock per batch,
	// not per change), and a lone change without delay.
	rctx, stop := context.WithCancel(ctx)
	notes := make(chan *pgconn.Notification, maxChangeBatch)
	readErr := make(chan error, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			n, err := waitNotification(rctx, conn)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case notes <- n:
			case <-rctx.Done():
				readErr <- rctx.Err()
				return
			}
		}
	}()
	// The connection is closed (deferred above) once the reader is done
	// with it.
	defer func() {
		stop()
		<-readDone
	}()
	var batch changeBatch
	for {
		var n *pgconn.Notification
		select {
		case n = <-notes:
		case err := <-readErr:
			return true, err
		}
		batch.reset()
		s.addChange(&batch, n)
	more:
		for len(batch.chs) < maxChangeBatch && batch.unreadable == "" {
			select {
			case n := <-notes:
				s.addChange(&batch, n)
			default:
				break more
			}
		}
		if len(batch.chs) > 0 {
			if err := changed(ctx, batch.chs); err != nil {
				// The changes are not applied: connect again and resync,
				// as after a break, rather than lose them.
				return true, fmt.Errorf("sqlstore: %w", err)
			}
		}
		if batch.unreadable != "" {
			// A change this store cannot read is still a change: resync
			// rather than lose it.
			return true, fmt.Errorf("sqlstore: unreadable change notification %q (a coordinator of another version on this database?); resyncing", batch.unreadable)
		}
	}
}

// maxChangeBatch bounds how many changes the listener gives at once,
// and how many notifications its reader holds.
const maxChangeBatch = 1000

// changeBatch is the changes of other stores, in the order of their
// first notification, each once; a node's stream state
// (coordinator.ChangePresence) once per node, the latest.
type changeBatch struct {
	chs []coordinator.Change
	// seen holds the changes in chs, by their index; those of stream
	// states without their Presence.
	seen map[coordinator.Change]int
	// unreadable is the payload of a notification parseChange refused,
	// if any: the batch ends there.
	unreadable string
}

func (b *changeBatch) reset() {
	b.chs = b.chs[:0]
	clear(b.seen)
	b.unreadable = ""
}

// addChange adds the change n names to b, unless it is this store's own
// or already there.
func (s *Store) addChange(b *changeBatch, n *pgconn.Notification) {
	origin, ch, streaming, ok := parseChange(n.Payload)
	if !ok {
		b.unreadable = n.Payload
		return
	}
	if origin == s.origin {
		return
	}
	seen := ch
	if ch.Kind == coordinator.ChangePresence {
		// Streaming from this store's coordinator is no presence
		// elsewhere, as nodesWithPresence has it; an online one is
		// recorded as such (beatState.presence), and the next Heartbeat
		// reports it if its coordinator's beat is stale.
		switch {
		case streaming == "" || streaming == s.origin:
			ch.Presence = coordinator.PresenceNone
		default:
			ch.Presence = s.beats.presence(wire.NodeID(ch.ID), 1)
		}
		seen.Presence = 0
	}
	if i, dup := b.seen[seen]; dup {
		b.chs[i] = ch // the latest stream state
		return
	}
	if b.seen == nil {
		b.seen = make(map[coordinator.Change]int)
	}
	b.seen[seen] = len(b.chs)
	b.chs = append(b.chs, ch)
}

// waitNotification waits for conn's next notification, checking the
// connection with a query each listenIdle it is quiet.
func waitNotification(ctx context.Context, conn *pgx.Conn) (*pgconn.Notification, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, listenIdle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			return n, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case wctx.Err() == nil || conn.IsClosed():
			return nil, fmt.Errorf("sqlstore: wait for notification: %w", err)
		}
		// Quiet for listenIdle: is anyone still there? Notifications
		// that come with the answer wait in conn for the next call.
		qctx, cancel := context.WithTimeout(ctx, listenCheckTimeout)
		_, err = conn.Exec(qctx, `SELECT 1`)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("sqlstore: check the listener's connection: %w", err)
		}
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
// node (migration 0006), "ORIGIN online NODE_ID STREAMING" and "ORIGIN
// offline NODE_ID" for its stream state (0015), "ORIGIN KIND KEY" for
// the rest (0008). A stream state comes as a coordinator.ChangePresence
// whose Presence is left to the caller, with the origin the node streams
// from (streaming; "" if none).
func parseChange(payload string) (origin string, ch coordinator.Change, streaming string, ok bool) {
	origin, rest, ok := strings.Cut(payload, " ")
	if !ok {
		return "", ch, "", false
	}
	kind, k, ok := strings.Cut(rest, " ")
	if !ok {
		id, err := strconv.ParseInt(rest, 10, 64)
		return origin, coordinator.Change{Kind: coordinator.ChangeNode, ID: id}, "", err == nil
	}
	switch kind {
	case "online", "offline":
		if kind == "online" {
			if k, streaming, ok = strings.Cut(k, " "); !ok || streaming == "" {
				return "", ch, "", false
			}
		}
		id, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			return "", ch, "", false
		}
		return origin, coordinator.Change{Kind: coordinator.ChangePresence, ID: id}, streaming, true
	}
	ch.Kind, ok = changeKinds[kind]
	if !ok {
		return "", ch, "", false
	}
	if ch.Kind == coordinator.ChangeRoute {
		id, err := strconv.ParseInt(k, 10, 64)
		return origin, coordinator.Change{Kind: ch.Kind, ID: id}, "", err == nil
	}
	ch.Name = k
	return origin, ch, "", true
}

// NodeByID returns the node with id, and whether it streams from a
// coordinator on another store; coordinator.ErrNotFound if there is no
// such node.
func (s *Store) NodeByID(ctx context.Context, id wire.NodeID) (*coordinator.NodeRecord, coordinator.Presence, error) {
	if s.pgcfg == nil {
		return nil, 0, errNoFeed
	}
	recs, err := s.queryNodes(ctx, "node by id", ` WHERE n.id = ?`, int64(id))
	if err != nil {
		return nil, 0, err
	}
	if len(recs) == 0 {
		return nil, 0, fmt.Errorf("%w: node %d", coordinator.ErrNotFound, id)
	}
	return s.withOnline(ctx, recs[0])
}

// NodesByID implements coordinator.NodeFeed: one read, whatever the
// number of nodes.
func (s *Store) NodesByID(ctx context.Context, ids []wire.NodeID) ([]*coordinator.NodeRecord, map[wire.NodeID]coordinator.Presence, error) {
	if s.pgcfg == nil {
		return nil, nil, errNoFeed
	}
	arg := make([]int64, len(ids))
	for i, id := range ids {
		arg[i] = int64(id)
	}
	return s.nodesWithPresence(ctx, "nodes by id", ` WHERE n.id = ANY(?)`, arg)
}

// NodesClashing implements coordinator.ClashReader: one read, on the
// indexes of the unique columns.
func (s *Store) NodesClashing(ctx context.Context, rec *coordinator.NodeRecord) ([]*coordinator.NodeRecord, map[wire.NodeID]coordinator.Presence, error) {
	if s.pgcfg == nil {
		return nil, nil, errNoFeed
	}
	v4, v6, err := nodeAddrs(&rec.Node)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: nodes clashing: %w", err)
	}
	return s.nodesWithPresence(ctx, "nodes clashing",
		` WHERE n.node_key = ? OR (n.network_id = ? AND n.name = ?) OR n.ipv4 = ? OR n.ipv6 = ?`,
		rec.Node.Key.String(), rec.NetworkID, rec.Node.Name, v4, v6)
}

// nodesWithPresence returns the nodes the condition where selects, and
// the Presence of those among them that stream from a coordinator on
// another store.
func (s *Store) nodesWithPresence(ctx context.Context, op, where string, args ...any) ([]*coordinator.NodeRecord, map[wire.NodeID]coordinator.Presence, error) {
	// Each row comes with its node's stream state, if any: the origin
	// streaming it and its presence (presenceSQL).
	type online struct {
		origin sql.NullString
		p      sql.NullInt64
	}
	var ons []*online
	recs, err := s.queryNodesWith(ctx, op, `, o.origin, `+s.presenceSQL(),
		` LEFT JOIN node_online o ON o.node_id = n.id LEFT JOIN coordinator_beats b ON b.origin = o.origin`,
		where, func() []any {
			on := &online{}
			ons = append(ons, on)
			return []any{&on.origin, &on.p}
		}, args...)
	if err != nil {
		return nil, nil, err
	}
	remote := make(map[wire.NodeID]coordinator.Presence)
	for i, rec := range recs {
		if on := ons[i]; on.origin.Valid && on.origin.String != s.origin {
			remote[rec.Node.ID] = s.beats.presence(rec.Node.ID, int(on.p.Int64))
		}
	}
	return recs, remote, nil
}

// presenceSQL returns the coordinator.Presence of a node_online row o
// joined with its origin's beat b (NULL if none), in SQL: 1 online (the
// origin beats, or stopped cleanly and its grace runs: StopBeating), 2
// unknown (the origin has not beaten for the stale time).
func (s *Store) presenceSQL() string {
	return `CASE WHEN b.stopped_until >= ` + dbNow + ` THEN 1 WHEN b.beat IS NULL OR b.beat < ` + s.staleSQL() + ` THEN 2 ELSE 1 END`
}

// staleSQL is the time before which a beat is stale, in SQL.
func (s *Store) staleSQL() string {
	return `(` + dbNow + ` - ` + strconv.FormatInt(int64(s.beats.stale), 10) + `)`
}

// withOnline returns rec and whether it streams from another store's
// coordinator.
func (s *Store) withOnline(ctx context.Context, rec *coordinator.NodeRecord) (*coordinator.NodeRecord, coordinator.Presence, error) {
	var origin string
	var p int
	err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT o.origin, `+s.presenceSQL()+` FROM node_online o
		LEFT JOIN coordinator_beats b ON b.origin = o.origin WHERE o.node_id = ?`), int64(rec.Node.ID)).Scan(&origin, &p)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return rec, coordinator.PresenceNone, nil
	case err != nil:
		return nil, 0, s.wrap("node online", err)
	case origin == s.origin:
		return rec, coordinator.PresenceNone, nil
	}
	return rec, s.beats.presence(rec.Node.ID, p), nil
}

// NodeByKey implements coordinator.NodeFeed.
func (s *Store) NodeByKey(ctx context.Context, nk key.NodePublic) (*coordinator.NodeRecord, coordinator.Presence, error) {
	if s.pgcfg == nil {
		return nil, 0, errNoFeed
	}
	recs, err := s.queryNodes(ctx, "node by key", ` WHERE n.node_key = ?`, nk.String())
	if err != nil {
		return nil, 0, err
	}
	if len(recs) == 0 {
		return nil, 0, fmt.Errorf("%w: node %s", coordinator.ErrNotFound, nk.ShortString())
	}
	return s.withOnline(ctx, recs[0])
}

// DefaultStaleAfter is how long after its last heartbeat a store's
// coordinator counts as gone by default (Options.StaleAfter): its nodes
// are then unknown (coordinator.PresenceUnknown) for the others.
const DefaultStaleAfter = 15 * time.Second

// DefaultUnknownTimeout is how long the nodes of a gone coordinator stay
// unknown by default (Options.UnknownTimeout), unless they stream from
// another one: Heartbeat then deletes their stream states (they are
// offline).
const DefaultUnknownTimeout = 2 * time.Minute

// dbNow is the database's clock in Unix nanoseconds, in SQL.
const dbNow = `(EXTRACT(EPOCH FROM clock_timestamp()) * 1e9)::BIGINT`

// beatState is what Heartbeat keeps between calls, and its times.
type beatState struct {
	// stale and unknownTimeout are Options.StaleAfter and
	// UnknownTimeout. judgeAfter is how long a store whose own beats had
	// stopped (the database was down or out of reach, or the coordinator
	// stalled) waits, once it beats again, before it takes other
	// coordinators' stale beats for dead ones: they could not beat
	// either, and need a moment to do so; meanwhile a node keeps the
	// presence the last Heartbeat found. Set when the store opens.
	stale, unknownTimeout, judgeAfter time.Duration

	mu sync.Mutex // guards the following fields
	// unknown holds the unknown nodes at the last Heartbeat, and those a
	// read (presence) found unknown since: a read between two Heartbeats
	// may catch another coordinator's beat stale (it beats late, under
	// load) that both Heartbeats find fresh, and the coordinator keeps
	// what it read until the next Heartbeat reports the node.
	unknown map[wire.NodeID]bool
	// toldOnline holds the nodes of unknown that a read since the last
	// Heartbeat found online (their coordinator beat again): the next
	// Heartbeat reports those it finds unknown still.
	toldOnline map[wire.NodeID]bool
	// beaten is set once a Heartbeat succeeded; freshSince is when this
	// store's beats became fresh again after they had stopped.
	beaten     bool
	freshSince time.Time
}

// judging reports whether stale beats of others count (see judgeAfter).
// bs.mu held.
func (bs *beatState) judgingLocked() bool {
	return time.Since(bs.freshSince) >= bs.judgeAfter
}

// presence is the coordinator.Presence of node id whose row has presence
// p in SQL (1 online, 2 its coordinator's beat is stale): while stale
// beats do not count yet, the node is unknown only if it already was.
// What it returns is recorded, so that the next Heartbeat reports the
// node if it finds otherwise: what a read told the coordinator stays in
// its memory until the node is reported (or written again).
func (bs *beatState) presence(id wire.NodeID, p int) coordinator.Presence {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if p == 2 && (bs.judgingLocked() || bs.unknown[id]) {
		if bs.unknown == nil {
			bs.unknown = make(map[wire.NodeID]bool)
		}
		bs.unknown[id] = true
		return coordinator.PresenceUnknown
	}
	if bs.unknown[id] {
		if bs.toldOnline == nil {
			bs.toldOnline = make(map[wire.NodeID]bool)
		}
		bs.toldOnline[id] = true
	}
	return coordinator.PresenceOnline
}

// Heartbeat implements coordinator.NodeFeed: it records that this
// store's coordinator is alive; finds the nodes of coordinators that have
// not beaten for the stale time (unknown) and returns those that became or
// stopped being unknown since its last call, or since a read (NodeByID,
// NodeByKey, RemoteOnline) told otherwise; and deletes the stream
// states (and heartbeats) of coordinators that have not beaten for
// the stale time + the unknown timeout, which tells the others their nodes went
// offline, returning those nodes too. missing reports whether this store
// had no beat on record (its first, or after another store dropped it as
// gone). After this store's own beats had stopped, it judges no one
// before judgeAfter has passed.
func (s *Store) Heartbeat(ctx context.Context) (changed []wire.NodeID, missing bool, err error) {
	if s.pgcfg == nil {
		return nil, false, errNoFeed
	}
	s.beats.mu.Lock()
	beaten := s.beats.beaten
	judging := s.beats.judgingLocked()
	s.beats.mu.Unlock()
	var unknown map[wire.NodeID]bool
	var wasFresh bool
	err = s.inTx(ctx, "heartbeat", func(tx *sql.Tx) error {
		changed, unknown = nil, make(map[wire.NodeID]bool)
		err := tx.QueryRowContext(ctx, s.d.rebind(`SELECT beat >= `+s.staleSQL()+`
			FROM coordinator_beats WHERE origin = ?`), s.origin).Scan(&wasFresh)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// xmax is 0 in a row the statement inserted, not updated.
		if err := tx.QueryRowContext(ctx, s.d.rebind(`INSERT INTO coordinator_beats (origin, beat) VALUES (?, `+dbNow+`)
			ON CONFLICT (origin) DO UPDATE SET beat = EXCLUDED.beat RETURNING xmax = 0`), s.origin).Scan(&missing); err != nil {
			return err
		}
		// A first beat judges at once; one after this store's beats had
		// stopped waits (judgeAfter).
		wasFresh = wasFresh || !beaten
		if !wasFresh || !judging {
			ids, err := queryIDs(ctx, tx, `SELECT o.node_id FROM node_online o
				LEFT JOIN coordinator_beats b ON b.origin = o.origin WHERE `+s.presenceSQL()+` = 2`)
			for _, id := range ids {
				unknown[id] = true
			}
			return err
		}
		// Gone: an origin that has not beaten for the stale time and the
		// unknown timeout, or that stopped cleanly and whose grace is over.
		gone := `(` + dbNow + ` - ` + strconv.FormatInt(int64(s.beats.stale+s.beats.unknownTimeout), 10) + `)`
		over := `stopped_until < ` + dbNow
		ids, err := queryIDs(ctx, tx, `DELETE FROM node_online WHERE origin NOT IN
			(SELECT origin FROM coordinator_beats WHERE beat >= `+gone+` AND NOT coalesce(`+over+`, false)) RETURNING node_id`)
		if err != nil {
			return err
		}
		changed = ids
		if _, err := tx.ExecContext(ctx, `DELETE FROM coordinator_beats WHERE beat < `+gone+` OR `+over); err != nil {
			return err
		}
		ids, err = queryIDs(ctx, tx, `SELECT o.node_id FROM node_online o
			LEFT JOIN coordinator_beats b ON b.origin = o.origin WHERE `+s.presenceSQL()+` = 2`)
		for _, id := range ids {
			unknown[id] = true
		}
		return err
	})
	if err != nil {
		return nil, false, err
	}
	s.beats.mu.Lock()
	defer s.beats.mu.Unlock()
	s.beats.beaten = true
	if !wasFresh {
		s.beats.freshSince = time.Now()
	}
	if !s.beats.judgingLocked() {
		// Stale beats do not count yet: a node is unknown only if it was.
		for id := range unknown {
			if !s.beats.unknown[id] {
				delete(unknown, id)
			}
		}
	}
	for id := range unknown {
		if !s.beats.unknown[id] {
			changed = append(changed, id)
		}
	}
	for id := range s.beats.unknown {
		if !unknown[id] || s.beats.toldOnline[id] {
			changed = append(changed, id)
		}
	}
	s.beats.unknown, s.beats.toldOnline = unknown, nil
	slices.Sort(changed)
	return slices.Compact(changed), missing, nil
}

// queryIDs runs q, which returns node IDs, in tx.
func queryIDs(ctx context.Context, tx *sql.Tx, q string) ([]wire.NodeID, error) {
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []wire.NodeID
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, wire.NodeID(id))
	}
	return ids, rows.Err()
}

// forgetBeat deletes this store's heartbeat, as its coordinator stops:
// the others need not wait for it to go stale before a coordinator with
// new secrets may start (see LiveCoordinators). A beat StopBeating
// recorded stays, for the grace of its nodes. Best effort.
func (s *Store) forgetBeat() {
	if s.pgcfg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.db.ExecContext(ctx, `DELETE FROM coordinator_beats WHERE origin = $1 AND stopped_until IS NULL`, s.origin)
}

// StopBeating implements coordinator.NodeFeed: this store's beat is
// recorded as stale at once (the coordinator no longer counts as
// running: LiveCoordinators, ClaimSecrets) and as stopped until grace
// from now, by the database's clock.
func (s *Store) StopBeating(ctx context.Context, grace time.Duration) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO coordinator_beats (origin, beat, stopped_until)
		VALUES ($1, `+s.staleSQL()+` - 1, `+dbNow+` + $2)
		ON CONFLICT (origin) DO UPDATE SET beat = EXCLUDED.beat, stopped_until = EXCLUDED.stopped_until`,
		s.origin, int64(max(grace, 0)))
	return s.wrap("stop beating", err)
}

// liveSQL counts the coordinators of other stores that beat (within
// the stale time), in SQL with the store's origin as its one parameter.
func (s *Store) liveSQL() string {
	return `SELECT COUNT(*) FROM coordinator_beats WHERE origin <> ? AND beat >= ` + s.staleSQL()
}

// LiveCoordinators returns how many coordinators on other stores beat
// (within the time after which their nodes turn unknown).
func (s *Store) LiveCoordinators(ctx context.Context) (int, error) {
	if s.pgcfg == nil {
		return 0, errNoFeed
	}
	var n int
	err := s.db.QueryRowContext(ctx, s.d.rebind(s.liveSQL()), s.origin).Scan(&n)
	return n, s.wrap("live coordinators", err)
}

// ClaimSecrets implements coordinator.NodeFeed. Claims take a lock of
// the database: two coordinators starting at once claim one after the
// other, and the second finds the first's beat, which the claim records.
func (s *Store) ClaimSecrets(ctx context.Context, secrets map[string][]byte) (stored map[string][]byte, ok bool, err error) {
	if s.pgcfg == nil {
		return nil, false, errNoFeed
	}
	err = s.inTx(ctx, "claim secrets", func(tx *sql.Tx) error {
		stored, ok = nil, true
		if err := s.d.lockTx(ctx, tx, lockReplicas); err != nil {
			return err
		}
		var live int
		if err := tx.QueryRowContext(ctx, s.d.rebind(s.liveSQL()), s.origin).Scan(&live); err != nil {
			return err
		}
		if live > 0 {
			stored = make(map[string][]byte)
			for name, mine := range secrets {
				var v []byte
				err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&v)
				switch {
				case errors.Is(err, sql.ErrNoRows):
					continue
				case err != nil:
					return err
				}
				stored[name] = v
				ok = ok && bytes.Equal(v, mine)
			}
			if !ok {
				return nil
			}
		}
		for name, v := range secrets {
			if _, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET value = excluded.value`, name, v); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO coordinator_beats (origin, beat) VALUES ($1, `+dbNow+`)
			ON CONFLICT (origin) DO UPDATE SET beat = EXCLUDED.beat`, s.origin)
		return err
	})
	return stored, ok, err
}

// RemoteOnline implements coordinator.NodeFeed.
func (s *Store) RemoteOnline(ctx context.Context) (map[wire.NodeID]coordinator.Presence, error) {
	if s.pgcfg == nil {
		return nil, errNoFeed
	}
	rows, err := s.db.QueryContext(ctx, s.d.rebind(`SELECT o.node_id, `+s.presenceSQL()+` FROM node_online o
		LEFT JOIN coordinator_beats b ON b.origin = o.origin WHERE o.origin <> ?`), s.origin)
	if err != nil {
		return nil, s.wrap("online nodes", err)
	}
	defer rows.Close()
	out := make(map[wire.NodeID]coordinator.Presence)
	for rows.Next() {
		var id int64
		var p int
		if err := rows.Scan(&id, &p); err != nil {
			return nil, s.wrap("online nodes", err)
		}
		out[wire.NodeID(id)] = s.beats.presence(wire.NodeID(id), p)
	}
	return out, s.wrap("online nodes", rows.Err())
}

// SetNodeOnline records one node's stream state as SetStreamStates
// does. A row's since is the database's clock: at's age is taken from
// the database's now.
func (s *Store) SetNodeOnline(ctx context.Context, id wire.NodeID, online bool, at time.Time) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	if !online {
		_, err := s.db.ExecContext(ctx, s.d.rebind(`DELETE FROM node_online WHERE node_id = ? AND origin = ?`), int64(id), s.origin)
		return s.wrap("set node offline", err)
	}
	// A node deleted meanwhile has no row to refer to: nothing to do. A
	// row of another coordinator is taken only if its stream began
	// before this one's.
	age := max(time.Since(at), 0)
	_, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO node_online (node_id, origin, since)
		SELECT id, ?, `+dbNow+` - ? FROM nodes WHERE id = ?
		ON CONFLICT (node_id) DO UPDATE SET origin = EXCLUDED.origin, since = EXCLUDED.since
		WHERE node_online.origin = EXCLUDED.origin OR node_online.since <= EXCLUDED.since`),
		s.origin, int64(age), int64(id))
	return s.wrap("set node online", err)
}

// streamStatesChunk bounds the nodes one statement of SetStreamStates
// writes.
const streamStatesChunk = 1000

// SetStreamStates implements coordinator.NodeFeed: a statement per
// streamStatesChunk nodes going online, and one per as many going
// offline, with the conditions of SetNodeOnline.
func (s *Store) SetStreamStates(ctx context.Context, states []coordinator.StreamState) error {
	if s.pgcfg == nil {
		return errNoFeed
	}
	var onIDs, onAges, offIDs []int64
	for _, st := range states {
		if st.Online {
			onIDs = append(onIDs, int64(st.ID))
			onAges = append(onAges, int64(max(time.Since(st.At), 0)))
		} else {
			offIDs = append(offIDs, int64(st.ID))
		}
	}
	for len(offIDs) > 0 {
		n := min(len(offIDs), streamStatesChunk)
		if _, err := s.db.ExecContext(ctx, `DELETE FROM node_online WHERE node_id = ANY($1) AND origin = $2`, offIDs[:n], s.origin); err != nil {
			return s.wrap("set nodes offline", err)
		}
		offIDs = offIDs[n:]
	}
	for len(onIDs) > 0 {
		n := min(len(onIDs), streamStatesChunk)
		_, err := s.db.ExecContext(ctx, `INSERT INTO node_online (node_id, origin, since)
			SELECT n.id, $1, `+dbNow+` - v.age FROM unnest($2::BIGINT[], $3::BIGINT[]) AS v(id, age) JOIN nodes n ON n.id = v.id
			ON CONFLICT (node_id) DO UPDATE SET origin = EXCLUDED.origin, since = EXCLUDED.since
			WHERE node_online.origin = EXCLUDED.origin OR node_online.since <= EXCLUDED.since`,
			s.origin, onIDs[:n], onAges[:n])
		if err != nil {
			return s.wrap("set nodes online", err)
		}
		onIDs, onAges = onIDs[n:], onAges[n:]
	}
	return nil
}
