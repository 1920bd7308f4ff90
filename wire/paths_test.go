package wire_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"beam.dev/beam/wire"
)

// TestPathHelpers checks that each path helper fills its pattern so that
// a net/http.ServeMux serving the pattern matches the path and gives back
// the value, for values that need escaping.
func TestPathHelpers(t *testing.T) {
	helpers := []struct {
		name     string
		pattern  string
		wildcard string
		fill     func(string) string
	}{
		{"ApprovalPagePath", wire.PathApprovalPage, "code", wire.ApprovalPagePath},
		{"AuthKeyPath", wire.PathAuthKey, "prefix", wire.AuthKeyPath},
		{"NodePath", wire.PathNode, "name", wire.NodePath},
		{"NodeExpirePath", wire.PathNodeExpire, "name", wire.NodeExpirePath},
		{"NodeRenamePath", wire.PathNodeRename, "name", wire.NodeRenamePath},
		{"NodeExpiryPath", wire.PathNodeExpiry, "name", wire.NodeExpiryPath},
		{"UserPath", wire.PathUser, "name", wire.UserPath},
		{"RegistrationApprovePath", wire.PathRegistrationApprove, "code", wire.RegistrationApprovePath},
		{"RoutePath", wire.PathRoute, "host", wire.RoutePath},
		{"DomainVerifyPath", wire.PathDomainVerify, "domain", wire.DomainVerifyPath},
		{"DomainPath", wire.PathDomain, "domain", wire.DomainPath},
		{"DNSTXTPath", wire.PathDNSTXT, "name", wire.DNSTXTPath},
	}
	values := []string{"laptop", "_acme-challenge.app.example.test", "a/b", "x y?z#w", "100%", "nodekey:0123abcd", "ü"}
	for _, h := range helpers {
		for _, v := range values {
			t.Run(h.name+"/"+v, func(t *testing.T) {
				var got string
				matched := false
				mux := http.NewServeMux()
				mux.HandleFunc(h.pattern, func(w http.ResponseWriter, r *http.Request) {
					matched = true
					got = r.PathValue(h.wildcard)
				})
				p := h.fill(v)
				mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, p, nil))
				if !matched {
					t.Fatalf("%s(%q) = %q does not match %q", h.name, v, p, h.pattern)
				}
				if got != v {
					t.Errorf("%s(%q) = %q: the pattern gives back %q, want %q", h.name, v, p, got, v)
				}
			})
		}
	}
}
