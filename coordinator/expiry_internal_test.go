package coordinator

import (
	"testing"
	"time"

	"beam.dev/beam/wire"
)

// TestKeyExpiryFor: untagged nodes (a user's, or with neither user nor
// tag) get the coordinator's default; tagged and edge nodes none; an auth
// key's own setting wins.
func TestKeyExpiryFor(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	const def = 48 * time.Hour
	for _, tc := range []struct {
		name string
		ak   *AuthKey
		n    wire.Node
		def  time.Duration
		want time.Duration // 0: never
	}{
		{"user node", &AuthKey{}, wire.Node{User: "alice"}, def, def},
		{"plain key node", &AuthKey{}, wire.Node{}, def, def},
		{"dev mode node (no auth key)", nil, wire.Node{}, def, def},
		{"tagged node", &AuthKey{}, wire.Node{Tags: []string{"tag:server"}}, def, 0},
		{"edge node", &AuthKey{}, wire.Node{Edge: true}, def, 0},
		{"default never", &AuthKey{}, wire.Node{}, -1, 0},
		{"key sets 1h", &AuthKey{NodeKeyExpiry: time.Hour}, wire.Node{Tags: []string{"tag:server"}}, def, time.Hour},
		{"key sets never", &AuthKey{NodeKeyExpiry: -1}, wire.Node{User: "alice"}, def, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := keyExpiryFor(tc.ak, &tc.n, now, tc.def)
			var want time.Time
			if tc.want > 0 {
				want = now.Add(tc.want)
			}
			if !got.Equal(want) {
				t.Errorf("keyExpiryFor = %v, want %v", got, want)
			}
		})
	}
}
