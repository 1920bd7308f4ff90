// Package sqlstore is the coordinator's database/sql store. SQLite
// (modernc.org/sqlite, pure Go) is the default; the schema and queries are
// kept per dialect so PostgreSQL can be added next to it.
//
// Migrations are numbered, embedded .sql files under migrations/<dialect>/,
// applied in order inside transactions and recorded in schema_migrations.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
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
}

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
}

// Store implements coordinator.Store on a database/sql database.
type Store struct {
	db   *sql.DB
	d    dialect
	errs atomic.Uint64 // failed database operations (see wrap)
}

var _ coordinator.Store = (*Store)(nil)

// Open opens the store at dsn and brings its schema up to date. dsn is a
// SQLite file path (created if missing) or ":memory:"; query parameters
// after "?" are passed to the driver. PostgreSQL URLs are not supported yet.
func Open(ctx context.Context, dsn string) (*Store, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return nil, errors.New("sqlstore: PostgreSQL is not supported yet")
	}
	if dsn == "" {
		return nil, errors.New("sqlstore: empty DSN")
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
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("sqlstore: create schema_migrations: %w", err)
	}
	dir := path.Join("migrations", s.d.name)
	entries, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return fmt.Errorf("sqlstore: read migrations: %w", err)
	}
	type mig struct {
		version int
		name    string
	}
	var migs []mig
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return fmt.Errorf("sqlstore: bad migration file name %q", e.Name())
		}
		migs = append(migs, mig{v, e.Name()})
	}
	slices.SortFunc(migs, func(a, b mig) int { return a.version - b.version })
	for _, m := range migs {
		var n int
		if err := s.db.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), m.version).Scan(&n); err != nil {
			return fmt.Errorf("sqlstore: check migration %d: %w", m.version, err)
		}
		if n > 0 {
			continue
		}
		body, err := fs.ReadFile(migrationFS, path.Join(dir, m.name))
		if err != nil {
			return fmt.Errorf("sqlstore: read migration %s: %w", m.name, err)
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("sqlstore: begin migration %d: %w", m.version, err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
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

// wrap turns driver errors into the coordinator's sentinels.
func (s *Store) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("sqlstore: %s: %w", op, coordinator.ErrNotFound)
	case s.d.isUnique(err):
		return fmt.Errorf("sqlstore: %s: %w: %v", op, coordinator.ErrConflict, err)
	}
	s.errs.Add(1)
	return fmt.Errorf("sqlstore: %s: %w", op, err)
}
