package sqlstore

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"
)

// TestSeeRequest: of two stores on one database, the first to record a
// request wins until its time is up; stale records are swept.
func TestSeeRequest(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	now := time.Unix(1800000000, 0)
	until := now.Add(time.Minute)
	h := sha256.Sum256([]byte("sealed"))
	for _, step := range []struct {
		s    *Store
		what string
		now  time.Time
		want bool
	}{
		{a, "first sight", now, true},
		{a, "again on the same store", now, false},
		{b, "on another store", now.Add(time.Second), false},
		{b, "on another store once its time is up", until, true},
		{a, "after the other took it over", until.Add(time.Second), false},
	} {
		got, err := step.s.SeeRequest(ctx, h, step.now, step.now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if got != step.want {
			t.Errorf("SeeRequest %s = %v, want %v", step.what, got, step.want)
		}
	}
	other := sha256.Sum256([]byte("other"))
	if fresh, err := a.SeeRequest(ctx, other, now, until); err != nil || !fresh {
		t.Fatalf("SeeRequest of another request = %v, %v; want true", fresh, err)
	}
	if err := b.ForgetRequests(ctx, until.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := a.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM requests_seen`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d records after the sweep (%v), want 1 (the one taken over, until %v)", n, err, until.Add(time.Minute))
	}
}

// TestSeeRequestSQLite: on SQLite (one coordinator) requests are not
// recorded in the store.
func TestSeeRequestSQLite(t *testing.T) {
	s := openStore(t, dialects[0].dsn(t))
	if _, err := s.SeeRequest(t.Context(), [32]byte{}, time.Now(), time.Now()); err == nil {
		t.Error("SeeRequest on SQLite succeeded, want an error")
	}
}

// BenchmarkSeeRequest measures the cost the shared replay check adds to
// each sealed request: one INSERT on the loopback PostgreSQL server.
func BenchmarkSeeRequest(b *testing.B) {
	s, err := Open(b.Context(), pg.NewSchema(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	var buf [8]byte
	i := uint64(0)
	for b.Loop() {
		i++
		binary.BigEndian.PutUint64(buf[:], i)
		if fresh, err := s.SeeRequest(b.Context(), sha256.Sum256(buf[:]), now, now.Add(time.Minute)); err != nil || !fresh {
			b.Fatalf("SeeRequest = %v, %v", fresh, err)
		}
	}
}

// BenchmarkRoundTrip is BenchmarkSeeRequest's baseline: the cheapest
// statement on the same server, one round trip.
func BenchmarkRoundTrip(b *testing.B) {
	s, err := Open(b.Context(), pg.NewSchema(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		var one int
		if err := s.db.QueryRowContext(b.Context(), `SELECT 1`).Scan(&one); err != nil {
			b.Fatal(err)
		}
	}
}
