package cli

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/types/key"
)

// TestVerifyTokenOverlap: a relay whose token a reload replaced presents
// the previous one to a coordinator that refuses the new one (401), for
// tokenOverlap and no longer; a key the coordinator refuses with a token
// it takes (403) is not asked again.
func TestVerifyTokenOverlap(t *testing.T) {
	var taken atomic.Value // the token the coordinator takes
	var asked atomic.Int32
	known := key.NewNode().Public()
	coord := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.Header.Get("Authorization") != "Bearer "+taken.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("key") != known.String() {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"allow":false}`))
			return
		}
		w.Write([]byte(`{"allow":true}`))
	}))
	defer coord.Close()
	var ahead atomic.Int64
	v := &verifyToken{url: coord.URL, hc: coord.Client(), now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }}
	const oldTok, newTok = "old-relay-token-0123456789", "new-relay-token-0123456789"
	taken.Store(oldTok)
	v.set(oldTok)
	if err := v.verify(t.Context(), known); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	if !v.set(newTok) {
		t.Fatal("set of a new token reported no change")
	}
	if err := v.verify(t.Context(), known); err != nil {
		t.Errorf("the relay reloaded, the coordinator not yet: %v, want admitted with the old token", err)
	}
	asked.Store(0)
	if err := v.verify(t.Context(), key.NewNode().Public()); !errors.Is(err, derpserver.ErrNotAdmitted) {
		t.Errorf("a stranger in the overlap: %v, want not admitted", err)
	}
	ahead.Store(int64(tokenOverlap + time.Second))
	if err := v.verify(t.Context(), known); !errors.Is(err, derpserver.ErrTokenRefused) {
		t.Errorf("after the overlap, the coordinator still on the old token: %v, want the token refused", err)
	}
	taken.Store(newTok)
	asked.Store(0)
	if err := v.verify(t.Context(), key.NewNode().Public()); !errors.Is(err, derpserver.ErrNotAdmitted) || errors.Is(err, derpserver.ErrTokenRefused) {
		t.Errorf("a stranger, the coordinator on the new token: %v, want not admitted", err)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("a stranger refused with the new token was asked about %d times, want once", n)
	}
	if err := v.verify(t.Context(), known); err != nil {
		t.Errorf("both on the new token: %v", err)
	}
}
