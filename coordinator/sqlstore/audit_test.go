package sqlstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"beam.dev/beam/wire"
)

// TestAudit: AppendAudit stores batches of entries in order, and Audit
// reads the newest back, newest first, with every field.
func TestAudit(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		var all []wire.AuditEntry
		at := time.Unix(1700000000, 0).UTC()
		for _, n := range []int{3, 1, 4} {
			var batch []wire.AuditEntry
			for range n {
				i := len(all) + len(batch)
				batch = append(batch, wire.AuditEntry{Time: at.Add(time.Duration(i) * time.Second), Actor: fmt.Sprintf("node:n%d", i),
					Action: "node.register", Target: fmt.Sprintf("n%d", i), Detail: fmt.Sprintf("detail %d", i)})
			}
			if err := s.AppendAudit(ctx, batch); err != nil {
				t.Fatal(err)
			}
			all = append(all, batch...)
		}
		got, err := s.Audit(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		var want []wire.AuditEntry
		for i := len(all) - 1; i >= len(all)-5; i-- {
			want = append(want, all[i])
		}
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(wire.AuditEntry{}, "ID")); diff != "" {
			t.Errorf("Audit(5) (-want +got):\n%s", diff)
		}
		for i := 1; i < len(got); i++ {
			if got[i].ID >= got[i-1].ID {
				t.Errorf("entry %d has ID %d after ID %d, want IDs falling, newest first", i, got[i].ID, got[i-1].ID)
			}
		}
	})
}
