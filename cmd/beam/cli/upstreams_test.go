package cli

import (
	"fmt"
	"strings"
	"testing"
)

// TestDefaultUpstreams checks that BEAM_DNS_UPSTREAM replaces the host's
// resolvers as the daemon's default upstreams, and that a bad value is an
// error naming the variable.
func TestDefaultUpstreams(t *testing.T) {
	for _, tc := range []struct {
		env, want, err string
	}{
		{"127.0.0.1:5300", "[127.0.0.1:5300]", ""},
		{"127.0.0.1, 127.0.0.2:54", "[127.0.0.1:53 127.0.0.2:54]", ""},
		{"::1", "[[::1]:53]", ""},
		{"nosuch", "", "BEAM_DNS_UPSTREAM"},
	} {
		f := &Factory{Getenv: func(k string) string {
			if k == "BEAM_DNS_UPSTREAM" {
				return tc.env
			}
			return ""
		}}
		ups, err := defaultUpstreams(f, t.TempDir())
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("BEAM_DNS_UPSTREAM=%q: err %v, want one naming %s", tc.env, err, tc.err)
			}
			continue
		}
		if got := fmt.Sprint(ups); err != nil || got != tc.want {
			t.Errorf("BEAM_DNS_UPSTREAM=%q: got %s, %v; want %s", tc.env, got, err, tc.want)
		}
	}
}
