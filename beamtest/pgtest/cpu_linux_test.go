package pgtest

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCPU: the server's CPU time takes in what its backends spend, while
// they run and after they exit.
func TestCPU(t *testing.T) {
	s := New(t)
	db, err := s.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), s.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.CPU()
	if err != nil {
		t.Fatal(err)
	}
	// A query that keeps its backend busy for a while.
	const work = `SELECT count(*) FROM generate_series(1, 5000000) AS g WHERE g % 7 = 3`
	var n int64
	if err := conn.QueryRow(t.Context(), work).Scan(&n); err != nil {
		t.Fatal(err)
	}
	running, err := s.CPU()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	// The backend exits once its client has gone; until the postmaster
	// has reaped it, its time may be missing.
	var after time.Duration
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); <-tick.C {
		if after, err = s.CPU(); err != nil {
			t.Fatal(err)
		}
		if after >= running {
			break
		}
	}
	const least = 100 * time.Millisecond
	if running-before < least {
		t.Errorf("CPU %v before the query, %v after it with its backend running; want at least %v more", before, running, least)
	}
	if after < running {
		t.Errorf("CPU %v once the backend exited, less than the %v while it ran", after, running)
	}
}
