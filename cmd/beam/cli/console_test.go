package cli

import (
	"strings"
	"testing"
)

func TestPrintConsoleURL(t *testing.T) {
	tests := []struct {
		base, want string
		tunnel     bool
	}{
		{"http://127.0.0.1:9080", "web console at http://127.0.0.1:9080/console/ (sign in with a one-time link: beam admin console; or with the admin token in data/admin.token)\n", false},
		{"http://localhost:9080/", "web console at http://localhost:9080/console/", false},
		{"https://coord.example.com", "web console at https://coord.example.com/console/", false},
		{"http://example.com:8080", "web console at http://example.com:8080/console/", true},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			var b strings.Builder
			printConsoleURL(&b, tt.base, "data")
			got := b.String()
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("got %q, want it to start with %q", got, tt.want)
			}
			if tunnel := strings.Contains(got, "ssh -L 8080:127.0.0.1:8080 example.com"); tunnel != tt.tunnel {
				t.Errorf("got %q: SSH tunnel hint %v, want %v", got, tunnel, tt.tunnel)
			}
		})
	}
}
