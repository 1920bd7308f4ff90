package coordclient

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestEdgeErrorCodes(t *testing.T) {
	tests := []struct {
		code string
		want error
	}{
		{"name_taken", ErrNameTaken},
		{"name_invalid", ErrNameInvalid},
		{"name_reserved", ErrNameReserved},
		{"domain_not_verified", ErrDomainNotVerified},
		{"ports_exhausted", ErrPortsExhausted},
		{"edge_disabled", ErrEdgeDisabled},
		{"edge_proto_not_served", ErrEdgeDisabled},
		{"no_zone", ErrEdgeDisabled},
		{"route_not_found", ErrRouteNotFound},
		{"forbidden", ErrForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			body := fmt.Sprintf(`{"error": "name app.example.test is taken by another network", "code": %q}`, tt.code)
			err := fmt.Errorf("coordclient: expose: %w", errorFromBody(http.StatusConflict, []byte(body)))
			if !errors.Is(err, tt.want) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.want)
			}
			for _, other := range []error{ErrNotFound, ErrNodeNotRegistered, ErrUnauthorized} {
				if errors.Is(err, other) {
					t.Errorf("%s matches %v", tt.code, other)
				}
			}
			if got := err.Error(); got != "coordclient: expose: coordinator: name app.example.test is taken by another network" {
				t.Errorf("message = %q", got)
			}
		})
	}
	// The old codes still map as before.
	if err := errorFromBody(http.StatusForbidden, []byte(`{"error":"x","code":"node_not_registered"}`)); !errors.Is(err, ErrNodeNotRegistered) {
		t.Errorf("node_not_registered = %v", err)
	}
}
