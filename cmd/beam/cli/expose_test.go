package cli

import "testing"

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in       string
		port     uint16
		upstream string
		ok       bool
	}{
		{"3000", 3000, "", true},
		{"localhost:3000", 3000, "", true},
		{"127.0.0.1:3000", 3000, "", true},
		{"http://localhost:3000", 3000, "", true},
		{"HTTP://LOCALHOST:3000/", 3000, "", true},
		{"https://localhost:8443", 8443, "https://localhost:8443", true},
		{"https://app.lan", 443, "https://app.lan:443", true},
		{"http://printer.lan", 80, "printer.lan:80", true},
		{"127.0.0.2:80", 80, "127.0.0.2:80", true},
		{"198.51.100.7:8080", 8080, "198.51.100.7:8080", true},
		{"[::1]:3000", 3000, "[::1]:3000", true},
		{"0", 0, "", false},
		{"65536", 0, "", false},
		{"app", 0, "", false},
		{"localhost:", 0, "", false},
		{":3000", 0, "", false},
		{"ftp://host:21", 0, "", false},
		{"http://localhost:3000/app", 0, "", false},
		{"http://user@localhost:3000", 0, "", false},
		{"localhost:0", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			port, up, err := parseTarget(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("parseTarget(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if port != tt.port || up != tt.upstream {
				t.Errorf("parseTarget(%q) = %d, %q; want %d, %q", tt.in, port, up, tt.port, tt.upstream)
			}
		})
	}
}

func TestLoopbackHint(t *testing.T) {
	tests := []struct{ url, want string }{
		{"http://alpha.localhost:18080", `from clients that do not resolve *.localhost: http://127.0.0.1:18080 with the header "Host: alpha.localhost" (curl -H 'Host: alpha.localhost' http://127.0.0.1:18080/)`},
		{"https://alpha.example.test", ""},
		{"tcp://localhost:20000", ""},
		{"http://alpha.example.test:8080", ""},
	}
	for _, tt := range tests {
		if got := loopbackHint(tt.url); got != tt.want {
			t.Errorf("loopbackHint(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
}
