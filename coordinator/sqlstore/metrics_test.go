package sqlstore

import (
	"errors"
	"testing"

	"beam.dev/beam/coordinator"
)

// TestStoreErrors checks what StoreErrors counts: a failed database
// operation, not a row that is not there.
func TestStoreErrors(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dsn string) {
		s, err := Open(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		testStoreErrors(t, s)
	})
}

func testStoreErrors(t *testing.T, s *Store) {
	ctx := t.Context()
	if _, err := s.AuthKeyByHash(ctx, []byte("nosuch")); !errors.Is(err, coordinator.ErrNotFound) {
		t.Fatalf("AuthKeyByHash(nosuch) = %v, want ErrNotFound", err)
	}
	if got := s.StoreErrors(); got != 0 {
		t.Fatalf("after a lookup that found nothing: StoreErrors = %d, want 0", got)
	}
	s.Close()
	if _, err := s.Networks(ctx); err == nil {
		t.Fatal("Networks on a closed database succeeded")
	}
	if got := s.StoreErrors(); got != 1 {
		t.Fatalf("after a failed query: StoreErrors = %d, want 1", got)
	}
}
