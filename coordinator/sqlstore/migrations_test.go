package sqlstore

import (
	"strings"
	"testing"
	"testing/fstest"
)

// TestMigrationsNumberedOnce: each dialect's migrations have distinct
// numbers, and a set where two share one is refused, naming both (the
// second would never run on a database that had the first).
func TestMigrationsNumberedOnce(t *testing.T) {
	for _, d := range []string{"sqlite", "postgres"} {
		if _, err := migrations(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	fsys := fstest.MapFS{
		"migrations/postgres/0001_init.sql":  {Data: []byte("SELECT 1;")},
		"migrations/postgres/0002_a.sql":     {Data: []byte("SELECT 1;")},
		"migrations/postgres/0002_b.sql":     {Data: []byte("SELECT 1;")},
		"migrations/postgres/0003_later.sql": {Data: []byte("SELECT 1;")},
	}
	_, err := migrationsIn(fsys, "postgres")
	if err == nil || !strings.Contains(err.Error(), "0002_a.sql") || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Errorf("two migrations numbered 0002: %v, want an error naming both", err)
	}
}
