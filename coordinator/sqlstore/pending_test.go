package sqlstore

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestPendingStore: registrations waiting for approval are shared by two
// stores: one registration per node key, one approval wins, and deleted
// and expired ones go.
func TestPendingStore(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	now := time.Unix(1800000000, 0).UTC()
	nk := key.NewNode().Public()
	p := &coordinator.PendingRecord{
		PendingRegistration: wire.PendingRegistration{Code: "ABCD2345", NodeKey: nk, Hostname: "h", OS: "linux", Created: now, Expires: now.Add(10 * time.Minute)},
		Source:              netip.MustParseAddr("198.51.100.7"),
	}
	got, err := a.AddPending(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, got, cmpOpts, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("AddPending (-want +got):\n%s", diff)
	}
	// The same node through the other store gets the registration kept.
	dup := *p
	dup.Code = "WXYZ6789"
	if got, err := b.AddPending(ctx, &dup); err != nil || got.Code != p.Code {
		t.Errorf("AddPending of the same node key = %+v, %v; want code %s", got, err, p.Code)
	}
	if _, err := b.PendingByCode(ctx, dup.Code); !errors.Is(err, coordinator.ErrNotFound) {
		t.Errorf("PendingByCode of the refused duplicate = %v, want ErrNotFound", err)
	}
	// An expired registration of a node (not swept yet) is replaced by
	// the node's next one, and cannot be approved.
	stale := *p
	stale.Code, stale.NodeKey = "STALE234", key.NewNode().Public()
	stale.Created, stale.Expires = time.Now().Add(-time.Hour), time.Now().Add(-time.Minute)
	if _, err := a.AddPending(ctx, &stale); err != nil {
		t.Fatal(err)
	}
	if err := a.ApprovePending(ctx, stale.Code, coordinator.Approval{}); !errors.Is(err, coordinator.ErrConflict) {
		t.Errorf("approval of an expired registration = %v, want ErrConflict", err)
	}
	fresh := stale
	fresh.Code, fresh.Created, fresh.Expires = "FRESH234", time.Now(), time.Now().Add(10*time.Minute)
	if got, err := b.AddPending(ctx, &fresh); err != nil || got.Code != fresh.Code || got.Approval != nil {
		t.Errorf("AddPending over an expired registration = %+v, %v; want code %s", got, err, fresh.Code)
	}
	if err := b.DeletePendings(ctx, []string{fresh.Code}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	ap := coordinator.Approval{User: "alice", Tags: []string{"tag:x"}, Actor: "admin", NodeKeyExpiry: time.Hour}
	if err := b.ApprovePending(ctx, p.Code, ap); err != nil {
		t.Fatal(err)
	}
	if err := a.ApprovePending(ctx, p.Code, coordinator.Approval{User: "bob"}); !errors.Is(err, coordinator.ErrConflict) {
		t.Errorf("second approval = %v, want ErrConflict", err)
	}
	if err := a.ApprovePending(ctx, "NOSUCH22", ap); !errors.Is(err, coordinator.ErrNotFound) {
		t.Errorf("approval of an unknown code = %v, want ErrNotFound", err)
	}
	got, err = a.PendingByCode(ctx, p.Code)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&ap, got.Approval); diff != "" {
		t.Errorf("approval read back (-want +got):\n%s", diff)
	}
	later := *p
	later.Code, later.NodeKey, later.Expires = "LATER234", key.NewNode().Public(), now.Add(time.Hour)
	if _, err := a.AddPending(ctx, &later); err != nil {
		t.Fatal(err)
	}
	if all, err := b.Pendings(ctx); err != nil || len(all) != 2 {
		t.Fatalf("Pendings = %v, %v; want 2", all, err)
	}
	// The first expired by now+20m; the second is deleted by code.
	if err := b.DeletePendings(ctx, nil, now.Add(20*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if all, _ := a.Pendings(ctx); len(all) != 1 || all[0].Code != later.Code {
		t.Errorf("Pendings after deleting the expired = %+v, want %s only", all, later.Code)
	}
	if err := b.DeletePendings(ctx, []string{later.Code}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if all, _ := a.Pendings(ctx); len(all) != 0 {
		t.Errorf("Pendings after deleting by code = %+v, want none", all)
	}
	// SQLite keeps them in memory, in the one coordinator.
	if _, err := openStore(t, dialects[0].dsn(t)).Pendings(ctx); err == nil {
		t.Error("Pendings on SQLite succeeded, want an error")
	}
}
