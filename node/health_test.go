package node

import (
	"errors"
	"fmt"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/wire"
)

// TestHealthText checks that status shows a coordinator's refusal as the
// sentence for a user, not as a chain of package names, and any other
// error as it is.
func TestHealthText(t *testing.T) {
	refused := fmt.Errorf("register: %w", &coordclient.Error{Status: 401, Code: wire.CodeUnauthorized, Message: "auth key is not valid"})
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"coded refusal", refused, wire.CodeUnauthorized.UserMessage()},
		{"uncoded refusal", &coordclient.Error{Status: 500, Message: "database is locked"}, "the coordinator refused: database is locked"},
		{"plain error", errors.New("engine: bind udp: address in use"), "engine: bind udp: address in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := healthText(tt.err); got != tt.want {
				t.Errorf("healthText(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
	if wire.CodeUnauthorized.UserMessage() == "" {
		t.Fatal("wire.CodeUnauthorized has no user message; the first case proves nothing")
	}
}
