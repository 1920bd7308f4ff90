package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

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

// TestExposeRequestOptions checks that beam expose refuses policy flags the
// edge could not enforce, before anything is sent.
func TestExposeRequestOptions(t *testing.T) {
	good := ExposeOptions{Port: 3000, BasicAuth: []string{"u:p"}, AllowIP: []string{"192.0.2.0/24,198.51.100.7"}, RateLimit: "20/s", HeaderAdd: []string{"X-A: 1"}}
	req, err := good.exposeRequest()
	if err != nil {
		t.Fatal(err)
	}
	if o := req.Options; len(o.BasicAuth) != 1 || bcrypt.CompareHashAndPassword([]byte(o.BasicAuth[0].Secret), []byte("p")) != nil || len(o.AllowIP) != 2 || o.RateLimit.String() != "20/s" || o.HeaderAdd["X-A"] != "1" {
		t.Fatalf("options = %+v", o)
	}
	tests := []struct {
		name string
		o    ExposeOptions
		want string
	}{
		{"rate word", ExposeOptions{RateLimit: "fast"}, "--rate-limit"},
		{"rate zero", ExposeOptions{RateLimit: "0/s"}, "--rate-limit"},
		{"rate unit", ExposeOptions{RateLimit: "5/d"}, "--rate-limit"},
		{"allow junk", ExposeOptions{AllowIP: []string{"office"}}, "--allow-ip"},
		{"deny junk", ExposeOptions{DenyIP: []string{"192.0.2.0/33"}}, "--deny-ip"},
		{"auth form", ExposeOptions{BasicAuth: []string{"nopass"}}, "--basic-auth"},
		{"auth on tcp", ExposeOptions{TCP: true, BasicAuth: []string{"u:p"}}, "only for http"},
		{"cors origin", ExposeOptions{CORS: []string{"app.test"}}, "CORS origin"},
		{"proxy on http", ExposeOptions{ProxyProtocol: "v2"}, "tcp and tls"},
		{"proxy version", ExposeOptions{TCP: true, ProxyProtocol: "v3"}, "--proxy-protocol"},
		{"header form", ExposeOptions{HeaderAdd: []string{"novalue"}}, "--header-add"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Port = 3000
			if _, err := tt.o.exposeRequest(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("exposeRequest = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestBasicAuthSecret checks that a --basic-auth password leaves beam
// expose only as a hash, and that secrets given hashed stay as they are.
func TestBasicAuthSecret(t *testing.T) {
	long := strings.Repeat("t", 73)
	longSum := sha256.Sum256([]byte(long))
	given := "$2a$10$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
	for _, tc := range []struct {
		name, in string
		check    func(secret string) bool
	}{
		{"password", "hunter2", func(s string) bool {
			c, err := bcrypt.Cost([]byte(s))
			return err == nil && c == 10 && bcrypt.CompareHashAndPassword([]byte(s), []byte("hunter2")) == nil
		}},
		{"plain: prefix", "plain:hunter2", func(s string) bool {
			return bcrypt.CompareHashAndPassword([]byte(s), []byte("hunter2")) == nil
		}},
		{"bcrypt given", given, func(s string) bool { return s == given }},
		{"sha256 given", "sha256:" + strings.Repeat("0f", 32), func(s string) bool { return s == "sha256:"+strings.Repeat("0f", 32) }},
		{"bcrypt-sha256 given", "bcrypt-sha256:" + given, func(s string) bool { return s == "bcrypt-sha256:"+given }},
		{"over 72 bytes", long, func(s string) bool {
			h, ok := strings.CutPrefix(s, "bcrypt-sha256:")
			c, err := bcrypt.Cost([]byte(h))
			return ok && err == nil && c == 10 && bcrypt.CompareHashAndPassword([]byte(h), []byte(hex.EncodeToString(longSum[:]))) == nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ExposeOptions{Port: 3000, BasicAuth: []string{"u:" + tc.in}}
			req, err := o.exposeRequest()
			if err != nil {
				t.Fatal(err)
			}
			s := req.Options.BasicAuth[0].Secret
			if !tc.check(s) || strings.Contains(s, "hunter2") {
				t.Errorf("secret %q for %q", s, tc.in)
			}
		})
	}
}
