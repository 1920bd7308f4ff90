package coordinator_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestRelayTokenOverlap: after a reload replaced the relay token, the
// coordinator still takes the old one at /derp/verify for
// RelayTokenOverlap, and refuses it after; the new one is taken at once.
func TestRelayTokenOverlap(t *testing.T) {
	const oldTok, newTok = "old-relay-token-0123456789", "new-relay-token-0123456789"
	var ahead atomic.Int64
	c := startCoord(t, func(o *coordinator.Options) {
		o.RelayToken = oldTok
		o.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	})
	status := func(tok string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", c.URL+wire.PathDERPVerify+"?key="+newNode(t, c.URL).NodeKey().String(), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if _, relayChanged, err := c.Server.SetTokens(t.Context(), "", newTok); err != nil || !relayChanged {
		t.Fatalf("SetTokens: relay changed %v, %v", relayChanged, err)
	}
	// An unknown key: 403 with a token taken, 401 with one refused.
	for _, tc := range []struct {
		after      time.Duration
		tok        string
		wantStatus int
	}{
		{0, newTok, http.StatusForbidden},
		{0, oldTok, http.StatusForbidden},
		{coordinator.RelayTokenOverlap - time.Minute, oldTok, http.StatusForbidden},
		{coordinator.RelayTokenOverlap + time.Second, oldTok, http.StatusUnauthorized},
		{coordinator.RelayTokenOverlap + time.Second, newTok, http.StatusForbidden},
	} {
		ahead.Store(int64(tc.after))
		if got := status(tc.tok); got != tc.wantStatus {
			t.Errorf("%v after the reload, the %s token: %d, want %d", tc.after, map[string]string{oldTok: "old", newTok: "new"}[tc.tok], got, tc.wantStatus)
		}
	}
}
