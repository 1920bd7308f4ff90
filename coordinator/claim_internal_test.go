package coordinator

import (
	"testing"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/wire"
)

// TestMayShareHeldTagsOnly: two nodes share a name pool through a tag only
// while the policy grants it; a tag dropped from tagOwners is not held.
func TestMayShareHeldTagsOnly(t *testing.T) {
	a := &wire.Node{Name: "a", Tags: []string{"tag:web"}}
	b := &wire.Node{Name: "b", Tags: []string{"tag:web"}}
	for _, tc := range []struct {
		name, src string
		want      bool
	}{
		{"listed", `{"tagOwners": {"tag:web": []}}`, true},
		{"dropped", `{"tagOwners": {"tag:db": []}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse([]byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if got := mayShare(p, a, b); got != tc.want {
				t.Errorf("mayShare = %v, want %v", got, tc.want)
			}
		})
	}
}
