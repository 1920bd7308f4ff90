package policy

import (
	"errors"
	"strings"
	"testing"

	"beam.dev/beam/wire"
)

const testsPolicy = `{
  "groups":    {"group:eng": ["alice", "bob"]},
  "tagOwners": {"tag:db": ["group:eng"], "tag:web": []},
  "hosts":     {"db-primary": "100.64.0.9"},
  "acls": [
    {"action": "accept", "src": ["alice"], "dst": ["tag:db:5432"], "proto": "tcp"},
    {"action": "accept", "src": ["group:eng"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["tag:web"], "dst": ["db-primary:8080"]},
  ],
  "tests": [
    {"src": "alice", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
    {"src": "bob", "deny": ["tag:db:5432", "tag:db:22", "alice:22"]},
    {"src": "tag:web", "accept": ["db-primary:8080", "100.64.0.9:8080"], "deny": ["db-primary:8081"]},
    {"src": "tag:web", "proto": "udp", "accept": ["db-primary:8080"]},
    {"src": "group:eng", "deny": ["tag:web:80"]},
    %s
  ],
}`

func TestValidate(t *testing.T) {
	// Nodes of a network; some users and tags named in tests have none.
	alice := mkNode(1, "alice-laptop", "alice", nil, "100.64.0.1")
	alice2 := mkNode(2, "alice-phone", "alice", nil, "100.64.0.2")
	db := mkNode(3, "db1", "", []string{"tag:db"}, "100.64.0.9")
	db2 := mkNode(4, "db2", "", []string{"tag:db"}, "100.64.0.10")
	tests := []struct {
		name  string
		extra string // an extra test entry, on line 16
		nodes []*wire.Node
		// want is "" for success or the expected message; col its column.
		want string
		col  int
	}{
		{name: "passes with nodes", nodes: []*wire.Node{alice, alice2, db, db2}},
		{name: "passes with no nodes at all", nodes: nil},
		{
			name:  "accept that is denied",
			extra: `{"src": "alice", "accept": ["tag:db:22"]},`,
			nodes: []*wire.Node{alice, db},
			want:  "alice -> tag:db:22: denied, want accepted",
			col:   33,
		},
		{
			name:  "deny that is accepted",
			extra: `{"src": "alice", "accept": ["tag:db:5432"], "deny": ["tag:db:22", "alice:22"]},`,
			nodes: []*wire.Node{alice, alice2, db},
			want:  "alice -> alice:22: accepted, want denied (from alice-laptop to alice-laptop)",
			col:   71,
		},
		{
			name:  "failure on a synthesised user",
			extra: `{"src": "carol", "accept": ["tag:db:5432"]},`,
			nodes: []*wire.Node{alice, db},
			want:  "carol -> tag:db:5432: denied, want accepted",
			col:   33,
		},
		{
			name:  "group member without nodes is synthesised",
			extra: `{"src": "group:eng", "accept": ["tag:db:5432"]},`,
			nodes: []*wire.Node{alice, db},
			want:  "group:eng -> tag:db:5432: denied, want accepted (from a future node of bob to db1)",
			col:   37,
		},
		{
			name:  "self covers only one user",
			extra: `{"src": "bob", "accept": ["alice:22"]},`,
			nodes: []*wire.Node{alice},
			want:  "bob -> alice:22: denied, want accepted",
			col:   31,
		},
		{
			name:  "udp is not tcp",
			extra: `{"src": "alice", "proto": "udp", "accept": ["tag:db:5432"]},`,
			nodes: []*wire.Node{alice, db, db2},
			want:  "alice -> tag:db:5432: denied, want accepted (from alice-laptop to db1)",
			col:   49,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, strings.Replace(testsPolicy, "%s", tt.extra, 1))
			err := p.Validate(tt.nodes)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want failure %q", tt.want)
			}
			if !errors.Is(err, ErrTestFailed) {
				t.Errorf("error %v does not wrap ErrTestFailed", err)
			}
			e, ok := errors.AsType[*Error](err)
			if !ok {
				t.Fatalf("error %v is not an *Error", err)
			}
			if e.Msg != tt.want {
				t.Errorf("message %q, want %q", e.Msg, tt.want)
			}
			if e.Line != 16 || e.Column != tt.col {
				t.Errorf("failure at %d:%d, want 16:%d", e.Line, e.Column, tt.col)
			}
		})
	}
}

func TestValidateReportsFirstFailure(t *testing.T) {
	p := mustParse(t, `{
  "acls": [{"action": "accept", "src": ["alice"], "dst": ["bob:22"]}],
  "tests": [
    {"src": "alice", "accept": ["bob:22"]},
    {"src": "bob", "accept": ["alice:22"]},
    {"src": "alice", "deny": ["bob:22"]},
  ],
}`)
	err := p.Validate(nil)
	e, ok := errors.AsType[*Error](err)
	if !ok {
		t.Fatalf("Validate = %v, want an *Error", err)
	}
	if e.Line != 5 || e.Column != 31 || e.Msg != "bob -> alice:22: denied, want accepted" {
		t.Errorf("got %v, want the test on line 5 column 31", err)
	}
}
