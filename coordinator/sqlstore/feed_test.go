package sqlstore

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/wire"
)

// TestHeartbeat: a node streaming from one store's coordinator is online
// for another store; once the first stops beating for beatStale, the
// other's heartbeat drops that stream state.
func TestHeartbeat(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	rec := testNode(n.ID, "alpha", 1)
	if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, missing, err := a.Heartbeat(ctx); err != nil || !missing {
		t.Fatalf("first Heartbeat: missing = %v, %v; want true", missing, err)
	}
	if _, missing, err := a.Heartbeat(ctx); err != nil || missing {
		t.Fatalf("second Heartbeat: missing = %v, %v; want false", missing, err)
	}
	if err := a.SetNodeOnline(ctx, rec.Node.ID, true); err != nil {
		t.Fatal(err)
	}
	if dropped, _, err := b.Heartbeat(ctx); err != nil || len(dropped) != 0 {
		t.Fatalf("Heartbeat while alpha's coordinator beats dropped %v, %v; want none", dropped, err)
	}
	if got, _ := b.RemoteOnline(ctx); !got[rec.Node.ID] {
		t.Fatalf("RemoteOnline on the other store = %v, want alpha (%d) while its coordinator beats", got, rec.Node.ID)
	}
	if _, remote, err := a.NodeByID(ctx, rec.Node.ID); err != nil || remote {
		t.Errorf("NodeByID on alpha's own store: remote = %v, %v; want false", remote, err)
	}
	// a's coordinator stops beating: its last beat is older than beatStale.
	if _, err := a.db.ExecContext(ctx, `UPDATE coordinator_beats SET beat = beat - $1 WHERE origin = $2`, int64(2*beatStale), a.origin); err != nil {
		t.Fatal(err)
	}
	if dropped, _, err := b.Heartbeat(ctx); err != nil || len(dropped) != 1 || dropped[0] != rec.Node.ID {
		t.Errorf("Heartbeat after alpha's coordinator stopped beating dropped %v, %v; want [%d]", dropped, err, rec.Node.ID)
	}
	if got, _ := b.RemoteOnline(ctx); got[rec.Node.ID] {
		t.Errorf("RemoteOnline = %v after alpha's coordinator stopped beating, want alpha gone", got)
	}
	// a's coordinator comes back from its stall: its beat is missing.
	if _, missing, err := a.Heartbeat(ctx); err != nil || !missing {
		t.Errorf("Heartbeat after the stall: missing = %v, %v; want true", missing, err)
	}
	var beats int
	if err := b.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM coordinator_beats`).Scan(&beats); err != nil || beats != 2 {
		t.Errorf("%d heartbeats kept (%v), want 2", beats, err)
	}
}

// TestListenNodesReportsFailures: a listener that cannot connect says why
// each time before it tries again, instead of retrying in silence.
func TestListenNodesReportsFailures(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := s.pgcfg.Copy()
	cfg.Host, cfg.Port, cfg.Fallbacks = "127.0.0.1", uint16(port), nil
	orig := s.pgcfg
	s.pgcfg = cfg // the listener's own connection only
	t.Cleanup(func() { s.pgcfg = orig })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errs := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.ListenNodes(ctx, func(context.Context) {}, func(context.Context, wire.NodeID) {}, func(err error) {
			select {
			case errs <- err:
			default:
			}
		})
	}()
	for i := range 2 {
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "connect listener") {
				t.Errorf("failure %d = %v, want the listener's connect error", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("failure %d never reported", i)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
}
