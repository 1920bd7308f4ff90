package pgtest

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestServer starts a server, uses a database on it as a test would, and
// checks that Close stops the server and removes its directory.
func TestServer(t *testing.T) {
	s := New(t)
	db, err := s.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), s.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRow(t.Context(), `SELECT current_database() || ' ' || current_user`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := db + " " + User; got != want {
		t.Errorf("connected to %q, want %q", got, want)
	}
	conn.Close(t.Context())
	if err := s.DropDatabase(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	default:
		t.Error("server still running after Close")
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory after Close: %v, want it gone", err)
	}
	if !strings.Contains(s.Log(), "ready to accept connections") {
		t.Errorf("server log lacks its start:\n%s", s.Log())
	}
}

// TestNewSchema: each schema DSN sees its own tables only.
func TestNewSchema(t *testing.T) {
	s := New(t)
	var vals []string
	for _, v := range []string{"one", "two"} {
		dsn := s.NewSchema(t)
		conn, err := pgx.Connect(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(t.Context())
		if _, err := conn.Exec(t.Context(), `CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('`+v+`')`); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := conn.QueryRow(t.Context(), `SELECT string_agg(v, ',') FROM t`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		vals = append(vals, got)
	}
	if got := strings.Join(vals, " "); got != "one two" {
		t.Errorf("the schemas' tables hold %q, want %q", got, "one two")
	}
}

// TestStopStart: a server stopped by Stop refuses connections and keeps
// its data; Start serves it again on the same DSN.
func TestStopStart(t *testing.T) {
	s := New(t)
	dsn := s.NewDatabase(t)
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), `CREATE TABLE kept (v TEXT); INSERT INTO kept VALUES ('before')`); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), `SELECT 1`); err == nil {
		t.Error("a connection opened before Stop still works after it")
	}
	conn.Close(t.Context())
	if c, err := pgx.Connect(t.Context(), dsn); err == nil {
		c.Close(t.Context())
		t.Fatal("connected to a stopped server")
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err == nil {
		t.Error("Start of a running server succeeded")
	}
	conn, err = pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect after Start: %v", err)
	}
	defer conn.Close(t.Context())
	var got string
	if err := conn.QueryRow(t.Context(), `SELECT v FROM kept`).Scan(&got); err != nil || got != "before" {
		t.Errorf("after the restart the row is %q (%v), want %q", got, err, "before")
	}
}
