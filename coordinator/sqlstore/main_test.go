package sqlstore

import (
	"os"
	"path/filepath"
	"testing"

	"beam.dev/beam/beamtest/pgtest"
)

// pg is this package's private PostgreSQL server, started by the first
// test that needs it; each test gets a schema of its own.
var pg pgtest.Shared

func TestMain(m *testing.M) { os.Exit(pg.Run(m)) }

// dialects are the databases every store test runs on: dsn returns the
// DSN of a new, empty database for t (on PostgreSQL, a schema of its own).
var dialects = []struct {
	name string
	dsn  func(t *testing.T) string
}{
	{"sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "c.db") }},
	{"postgres", func(t *testing.T) string { return pg.NewSchema(t) }},
}

// forEachDialect runs f as a subtest per dialect.
func forEachDialect(t *testing.T, f func(t *testing.T, dsn string)) {
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) { f(t, d.dsn(t)) })
	}
}

// openStore opens dsn for t, closed when t ends.
func openStore(t *testing.T, dsn string) *Store {
	t.Helper()
	s, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// forEachStore runs f as a subtest per dialect, with a fresh store.
func forEachStore(t *testing.T, f func(t *testing.T, s *Store)) {
	forEachDialect(t, func(t *testing.T, dsn string) { f(t, openStore(t, dsn)) })
}
