package policy

import (
	"testing"

	"beam.dev/beam/wire"
)

func TestWithGroupMembers(t *testing.T) {
	p := mustParse(t, scenario)
	s := newScenarioNodes()
	// group:eng may reach its own nodes (autogroup:self); carol is not in it.
	q := p.WithGroupMembers(map[string][]string{"group:eng": {"carol"}, "group:undefined": {"carol"}})
	tests := []struct {
		name     string
		p        *Policy
		src, dst *wire.Node
		want     bool
	}{
		{"carol in group:eng by login", q, s.carol, s.carol, true},
		{"alice still in group:eng", q, s.aliceLaptop, s.alicePhone, true},
		{"original policy unchanged", p, s.carol, s.carol, false},
		{"members replaced, not kept", q.WithGroupMembers(nil), s.carol, s.carol, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Allows(tt.src, tt.dst, protoTCP, 22); got != tt.want {
				t.Errorf("Allows = %v, want %v", got, tt.want)
			}
		})
	}
	if _, ok := q.groups["group:undefined"]; ok {
		t.Error("a group the policy does not define was created")
	}
	if string(q.Source()) != string(p.Source()) {
		t.Error("source changed")
	}
}
