// Package sqlstore is the coordinator's database/sql store, on SQLite
// (modernc.org/sqlite, pure Go; the embedded default) or PostgreSQL
// (github.com/jackc/pgx/v5; for several coordinators on one database).
// The schema and the queries that differ are kept per dialect.
//
// Migrations are numbered, embedded .sql files under migrations/<dialect>/,
// applied in order inside transactions and recorded in schema_migrations;
// on PostgreSQL a session advisory lock keeps two coordinators starting at
// once from applying the same migration twice.
//
// What two coordinators on one PostgreSQL database could race for is
// decided by the database, never by a coordinator's memory: node keys,
// names and overlay addresses are unique columns (the loser of a race gets
// coordinator.ErrConflict), a one-off auth key is spent by a conditional
// UPDATE in the transaction that inserts the node (exactly one insert
// wins), and a public name or edge port is claimed under a transaction
// lock that serializes route writes (see PutRoute).
package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"beam.dev/beam/coordinator"
)

//go:embed migrations
var migrationFS embed.FS

// dialect holds what differs between databases.
type dialect struct {
	name string
	// rebind turns a query written with ? placeholders into the dialect's.
	rebind func(string) string
	// isUnique reports whether err is a unique-constraint violation.
	isUnique func(error) bool
	// isRetryable reports whether err means the transaction lost a race
	// to another one (serialization failure, deadlock) and may be retried.
	isRetryable func(error) bool
	// lockTx, if set, takes a lock named by the lock* constants for the
	// rest of the transaction tx; nil where a write transaction already
	// excludes every other writer (SQLite's BEGIN IMMEDIATE).
	lockTx func(ctx context.Context, tx *sql.Tx, lock int64) error
	// lockSession and unlockSession, if set, take and release a lock for
	// as long as conn holds it (migrations).
	lockSession, unlockSession func(ctx context.Context, conn *sql.Conn, lock int64) error
}

// Locks that serialize writers across coordinators sharing a database.
const (
	lockMigrate  = 0x6265616d0001 // "beam" 1: applying migrations
	lockRoutes   = 0x6265616d0002 // "beam" 2: claiming public names and edge ports
	lockReplicas = 0x6265616d0003 // "beam" 3: claiming the replicas' secrets (ClaimSecrets)
)

var sqliteDialect = dialect{
	name:   "sqlite",
	rebind: func(q string) string { return q },
	isUnique: func(err error) bool {
		var se *sqlite.Error
		if errors.As(err, &se) {
			c := se.Code()
			return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
		}
		return false
	},
	isRetryable: func(error) bool { return false },
}

// Store implements coordinator.Store on a database/sql database.
type Store struct {
	db   *sql.DB
	d    dialect
	errs atomic.Uint64 // failed database operations (see wrap)

	// PostgreSQL only (feed.go): the connection settings, for the
	// listener's own connection, and this store's origin, which every
	// connection sets as beam.origin.
	pgcfg  *pgx.ConnConfig
	origin string
	beats  beatState // Heartbeat's
}

var _ coordinator.Store = (*Store)(nil)

// isPostgres reports whether dsn names a PostgreSQL database (a
// postgres:// or postgresql:// URL) rather than a SQLite file.
func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Options are a store's settings besides its DSN; the zero value means
// the defaults.
type Options struct {
	// StaleAfter is how long after its last heartbeat a coordinator on
	// another store sharing the PostgreSQL database counts as gone, its
	// nodes unknown; 0 means DefaultStaleAfter. It should be a few of the
	// coordinators' heartbeat intervals (3 s).
	StaleAfter time.Duration
	// UnknownTimeout is how long the nodes of a gone coordinator stay
	// unknown before they count as offline; 0 means
	// DefaultUnknownTimeout.
	UnknownTimeout time.Duration
}

// Open opens the store at dsn with the default Options.
func Open(ctx context.Context, dsn string) (*Store, error) {
	return OpenWith(ctx, dsn, Options{})
}

// OpenWith opens the store at dsn and brings its schema up to date. dsn is a
// PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=...;
// the database must exist), or else a SQLite file path (created if
// missing) or ":memory:", where query parameters after "?" are passed to
// the driver. Errors never contain the URL's password.
func OpenWith(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if dsn == "" {
		return nil, errors.New("sqlstore: empty DSN")
	}
	if opts.StaleAfter < 0 || opts.UnknownTimeout < 0 {
		return nil, errors.New("sqlstore: negative Options.StaleAfter or UnknownTimeout")
	}
	if isPostgres(dsn) {
		s, err := openPostgres(ctx, dsn)
		if err != nil {
			return nil, err
		}
		s.beats.stale = cmp.Or(opts.StaleAfter, DefaultStaleAfter)
		s.beats.unknownTimeout = cmp.Or(opts.UnknownTimeout, DefaultUnknownTimeout)
		s.beats.judgeAfter = s.beats.stale / 2
		return s, nil
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	full := dsn + sep + "_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", full)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open: %w", err)
	}
	// One connection: SQLite has one writer anyway, and ":memory:" is per
	// connection. The coordinator keeps its hot state in memory.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s := &Store{db: db, d: sqliteDialect}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// StoreErrors returns how many database operations failed (not found
// and unique conflicts excepted), for the coordinator's metrics.
func (s *Store) StoreErrors() uint64 { return s.errs.Load() }

// Close closes the database.
func (s *Store) Close() error {
	s.forgetBeat()
	return s.db.Close()
}

// connect returns the connection migrations run on. A SQLite file that
// another process is creating or switching to WAL at the same moment
// answers the connection's own pragmas with SQLITE_BUSY without waiting
// on the busy timeout, so that answer is retried for up to connectWait.
func (s *Store) connect(ctx context.Context) (*sql.Conn, error) {
	deadline := time.Now().Add(connectWait)
	delay := 5 * time.Millisecond
	for {
		conn, err := s.db.Conn(ctx)
		if err == nil || s.d.name != "sqlite" || !isSQLiteBusy(err) || time.Now().After(deadline) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// connectWait bounds how long Open waits for a busy SQLite file.
const connectWait = 10 * time.Second

func isSQLiteBusy(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff // the primary code of an extended one
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	}
	return false
}

func (s *Store) migrate(ctx context.Context) (err error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return fmt.Errorf("sqlstore: connect: %w", err)
	}
	defer conn.Close()
	if s.d.lockSession != nil {
		if err := s.d.lockSession(ctx, conn, lockMigrate); err != nil {
			return fmt.Errorf("sqlstore: lock for migrations: %w", err)
		}
		defer func() {
			if uerr := s.d.unlockSession(context.WithoutCancel(ctx), conn, lockMigrate); uerr != nil && err == nil {
				err = fmt.Errorf("sqlstore: unlock after migrations: %w", uerr)
			}
		}()
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("sqlstore: create schema_migrations: %w", err)
	}
	migs, err := migrations(s.d.name)
	if err != nil {
		return err
	}
	for _, m := range migs {
		// Checked inside the transaction: on SQLite it holds the write
		// lock, so another process applying the same migration is done
		// by then (on PostgreSQL the advisory lock already is).
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("sqlstore: begin migration %d: %w", m.version, err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), m.version).Scan(&n); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlstore: check migration %d: %w", m.version, err)
		}
		if n > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, m.body); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlstore: apply migration %s: %w", m.name, err)
		}
		if _, err := tx.ExecContext(ctx, s.d.rebind(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), m.version, time.Now().UnixNano()); err != nil {
			tx.Rollback()
			return fmt.Errorf("sqlstore: record migration %d: %w", m.version, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("sqlstore: commit migration %d: %w", m.version, err)
		}
	}
	return nil
}

// migration is one embedded migration file.
type migration struct {
	version int
	name    string
	body    string
}

// migrations returns the migrations of a dialect in order.
func migrations(dialect string) ([]migration, error) {
	return migrationsIn(migrationFS, dialect)
}

// migrationsIn returns the migrations of a dialect in fsys, in order. Two
// files with one number are refused: the second would never run where
// the first had (its number recorded), as when two changes each added the
// next number.
func migrationsIn(fsys fs.FS, dialect string) ([]migration, error) {
	dir := path.Join("migrations", dialect)
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: read migrations: %w", err)
	}
	var migs []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("sqlstore: bad migration file name %q", e.Name())
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("sqlstore: read migration %s: %w", e.Name(), err)
		}
		migs = append(migs, migration{v, e.Name(), string(body)})
	}
	slices.SortFunc(migs, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(migs); i++ {
		if migs[i].version == migs[i-1].version {
			return nil, fmt.Errorf("sqlstore: migrations %s and %s have the same number", migs[i-1].name, migs[i].name)
		}
	}
	return migs, nil
}

// inTx runs fn in a transaction and commits it. Where the dialect says a
// failure lost a race to another transaction, it runs fn again in a new
// one, a few times.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	const attempts = 5
	for i := 1; ; i++ {
		err := s.tryTx(ctx, fn)
		if err == nil || i == attempts || !s.d.isRetryable(err) {
			return s.wrap(op, err)
		}
	}
}

// retry runs fn, one statement outside a transaction, again where the
// dialect says it lost a race, as inTx does, and wraps its error.
func (s *Store) retry(ctx context.Context, op string, fn func() error) error {
	const attempts = 5
	for i := 1; ; i++ {
		err := fn()
		if err == nil || i == attempts || !s.d.isRetryable(err) || ctx.Err() != nil {
			return s.wrap(op, err)
		}
	}
}

func (s *Store) tryTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// unixNano stores a time; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is the inverse of unixNano.
func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// wrap turns driver errors into the coordinator's sentinels. Errors that
// already carry one (an operation's own ErrNotFound or ErrAuthKeySpent)
// pass through.
func (s *Store) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, coordinator.ErrNotFound), errors.Is(err, coordinator.ErrConflict),
		errors.Is(err, coordinator.ErrAuthKeySpent), errors.Is(err, coordinator.ErrInvalid):
		if strings.HasPrefix(err.Error(), "sqlstore: ") {
			return err
		}
		return fmt.Errorf("sqlstore: %s: %w", op, err)
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("sqlstore: %s: %w", op, coordinator.ErrNotFound)
	case s.d.isUnique(err):
		return fmt.Errorf("sqlstore: %s: %w: %v", op, coordinator.ErrConflict, err)
	}
	s.errs.Add(1)
	return fmt.Errorf("sqlstore: %s: %w", op, err)
}
