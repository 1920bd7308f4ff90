package wire

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want Rate
		ok   bool
	}{
		{"20/s", Rate{20, time.Second}, true},
		{"600/m", Rate{600, time.Minute}, true},
		{" 5000/hour ", Rate{5000, time.Hour}, true},
		{"1/min", Rate{1, time.Minute}, true},
		{"1000000/s", Rate{1000000, time.Second}, true},
		{"0/s", Rate{}, false},
		{"-1/s", Rate{}, false},
		{"1.5/s", Rate{}, false},
		{"1000001/s", Rate{}, false},
		{"20", Rate{}, false},
		{"20/d", Rate{}, false},
		{"fast", Rate{}, false},
		{"", Rate{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("ParseRate(%q) = %+v, %v; want %+v, ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
			if tt.ok {
				if back, err := ParseRate(got.String()); err != nil || back != got {
					t.Errorf("ParseRate(%q) = %+v, %v; want %+v", got.String(), back, err, got)
				}
			}
		})
	}
}

func TestRouteOptionsValidate(t *testing.T) {
	auth := []BasicAuthUser{{User: "u", Secret: "plain:p"}}
	bcrypt := "$2a$10$" + strings.Repeat("a", 53)
	tests := []struct {
		name  string
		o     RouteOptions
		proto string
		want  string // "" for valid, else a part of the error
	}{
		{"zero", RouteOptions{}, "udp", ""},
		{"everything http", RouteOptions{
			BasicAuth: []BasicAuthUser{{User: "a", Secret: "plain:x"}, {User: "b", Secret: "sha256:" + strings.Repeat("0f", 32)}, {User: "c", Secret: bcrypt}},
			AllowIP:   []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, DenyIP: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")},
			RateLimit: Rate{20, time.Second}, HeaderAdd: map[string]string{"X-A": "b c"}, HeaderRemove: []string{"Cookie"},
			CORS: []string{"*", "https://app.test:8443"},
		}, "http", ""},
		{"proxy tcp", RouteOptions{ProxyProtocol: 2, RateLimit: Rate{1, time.Hour}}, "tcp", ""},
		{"proxy tls", RouteOptions{ProxyProtocol: 1}, "tls", ""},
		{"auth on tcp", RouteOptions{BasicAuth: auth}, "tcp", "basic auth works only for http"},
		{"headers on udp", RouteOptions{HeaderRemove: []string{"X"}}, "udp", "header rewriting works only for http"},
		{"cors on tls", RouteOptions{CORS: []string{"*"}}, "tls", "CORS works only for http"},
		{"proxy on http", RouteOptions{ProxyProtocol: 1}, "http", "only for tcp and tls"},
		{"proxy v3", RouteOptions{ProxyProtocol: 3}, "tcp", "want 1 or 2"},
		{"empty user", RouteOptions{BasicAuth: []BasicAuthUser{{Secret: "plain:p"}}}, "http", "basic auth user"},
		{"same user twice", RouteOptions{BasicAuth: []BasicAuthUser{{User: "ann", Secret: "plain:p"}, {User: "bob", Secret: "plain:q"}, {User: "ann", Secret: "plain:r"}}}, "http", `basic auth user "ann" given twice`},
		{"users differing in case", RouteOptions{BasicAuth: []BasicAuthUser{{User: "ann", Secret: "plain:p"}, {User: "Ann", Secret: "plain:q"}}}, "http", ""},
		{"colon user", RouteOptions{BasicAuth: []BasicAuthUser{{User: "a:b", Secret: "plain:p"}}}, "http", "basic auth user"},
		{"bare secret", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "hunter2"}}}, "http", "must start with"},
		{"empty password", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "plain:"}}}, "http", "empty password"},
		{"short sha", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "sha256:00"}}}, "http", "64 hex"},
		{"bad bcrypt", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2a$10$short"}}}, "http", "bcrypt"},
		{"bcrypt cost 12", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2b$12$" + strings.Repeat("a", 53)}}}, "http", ""},
		{"bcrypt cost 13", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2a$13$" + strings.Repeat("a", 53)}}}, "http", "bcrypt cost 13"},
		{"bcrypt cost 16", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2a$16$" + strings.Repeat("a", 53)}}}, "http", "bcrypt cost 16"},
		{"bcrypt cost 31", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2y$31$" + strings.Repeat("a", 53)}}}, "http", "bcrypt cost 31"},
		{"bcrypt cost 3", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "$2a$03$" + strings.Repeat("a", 53)}}}, "http", "bcrypt cost 3"},
		{"bcrypt-sha256", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "bcrypt-sha256:$2a$10$" + strings.Repeat("a", 53)}}}, "http", ""},
		{"bcrypt-sha256 cost 13", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "bcrypt-sha256:$2a$13$" + strings.Repeat("a", 53)}}}, "http", "bcrypt cost 13"},
		{"bcrypt-sha256 not bcrypt", RouteOptions{BasicAuth: []BasicAuthUser{{User: "u", Secret: "bcrypt-sha256:" + strings.Repeat("0f", 32)}}}, "http", "not a bcrypt hash"},
		{"zero prefix", RouteOptions{AllowIP: []netip.Prefix{{}}}, "http", "not a network prefix"},
		{"unmasked", RouteOptions{DenyIP: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}, "tcp", "not a network prefix"},
		{"zero count", RouteOptions{RateLimit: Rate{0, time.Second}}, "http", "the count"},
		{"odd period", RouteOptions{RateLimit: Rate{5, 2 * time.Second}}, "http", "the period"},
		{"header name", RouteOptions{HeaderAdd: map[string]string{"X A": "1"}}, "http", "header"},
		{"header value", RouteOptions{HeaderAdd: map[string]string{"X-A": "1\r\nX-B: 2"}}, "http", "header"},
		{"remove name", RouteOptions{HeaderRemove: []string{""}}, "http", "not a header name"},
		{"cors path", RouteOptions{CORS: []string{"https://a.test/x"}}, "http", "CORS origin"},
		{"cors scheme", RouteOptions{CORS: []string{"ftp://a.test"}}, "http", "CORS origin"},
		{"two problems", RouteOptions{ProxyProtocol: 9, RateLimit: Rate{0, time.Second}}, "tcp", "the count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate(tt.proto)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestRouteOptionsJSON(t *testing.T) {
	o := RouteOptions{
		BasicAuth: []BasicAuthUser{{User: "u", Secret: "plain:p"}},
		AllowIP:   []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		RateLimit: Rate{600, time.Minute},
		HeaderAdd: map[string]string{"X-A": "1"},
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"basic_auth":[{"user":"u","secret":"plain:p"}],"allow_ip":["192.0.2.0/24"],"rate_limit":"600/m","header_add":{"X-A":"1"}}`
	if string(b) != want {
		t.Fatalf("JSON = %s, want %s", b, want)
	}
	var back RouteOptions
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(o) {
		t.Fatalf("round trip = %+v, %v; want %+v", back, err, o)
	}
	if b, _ := json.Marshal(ExposeRequest{Proto: "http"}); strings.Contains(string(b), "options") {
		t.Errorf("zero options are sent: %s", b)
	}
}

func TestRouteOptionsFromLegacy(t *testing.T) {
	got, err := RouteOptionsFromLegacy(map[string]string{
		"basic_auth":     "u:p, v:sha256:" + strings.Repeat("00", 32),
		"allow_ip":       "192.0.2.0/24, 198.51.100.7",
		"rate_limit":     "20/s",
		"header_add":     "X-A: 1\nX-B: two",
		"header_remove":  "Cookie",
		"cors":           "https://a.test",
		"proxy_protocol": "v2",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := RouteOptions{
		BasicAuth:     []BasicAuthUser{{User: "u", Secret: "plain:p"}, {User: "v", Secret: "sha256:" + strings.Repeat("00", 32)}},
		AllowIP:       []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.7/32")},
		RateLimit:     Rate{20, time.Second},
		HeaderAdd:     map[string]string{"X-A": "1", "X-B": "two"},
		HeaderRemove:  []string{"Cookie"},
		CORS:          []string{"https://a.test"},
		ProxyProtocol: 2,
	}
	if !got.Equal(want) {
		t.Fatalf("RouteOptionsFromLegacy = %+v, want %+v", got, want)
	}
	for _, bad := range []map[string]string{{"rate_limit": "fast"}, {"allow_ip": "nope"}, {"proxy_protocol": "v3"}, {"rm_rf": "/"}} {
		if _, err := RouteOptionsFromLegacy(bad); err == nil {
			t.Errorf("RouteOptionsFromLegacy(%v) = nil error", bad)
		}
	}
}

// FuzzParseRate checks that ParseRate never panics and that what it
// accepts is valid and survives its text form.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{
		"20/s", "600/m", "5000/h", "1/min", // the forms users type
		"0/s", "-1/s", "1e3/s", "99999999999999999999/s", // counts out of range
		"20", "/s", "20/", "20/d", "20/s/s", "", // missing or odd parts
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			return
		}
		if err := (RouteOptions{RateLimit: r}).Validate("http"); err != nil {
			t.Fatalf("ParseRate(%q) = %+v, which does not validate: %v", s, r, err)
		}
		if back, err := ParseRate(r.String()); err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %+v; its text %q reads back as %+v, %v", s, r, r.String(), back, err)
		}
	})
}

// FuzzRouteOptions decodes route options as the coordinator and the edge
// do: decoding never panics, and options that validate survive a JSON
// round trip unchanged and still validate.
func FuzzRouteOptions(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"basic_auth":[{"user":"u","secret":"plain:p"}],"rate_limit":"20/s"}`, // a typical http route
		`{"allow_ip":["192.0.2.0/24"],"deny_ip":["2001:db8::/32"]}`,            // IP lists
		`{"rate_limit":"0/s"}`, `{"rate_limit":"5/d"}`, `{"rate_limit":"x"}`, // bad rates
		`{"allow_ip":["192.0.2.1/24"]}`, `{"allow_ip":"192.0.2.0/24"}`, // unmasked; the legacy string form
		`{"header_add":{"X-A":"1\r\nX-B: 2"}}`, `{"cors":["https://a.test","*"]}`, // headers and CORS
		`{"proxy_protocol":2}`, `{"proxy_protocol":-1}`, `{"unknown":1}`, `[]`, `null`,
	} {
		f.Add([]byte(s), "http")
	}
	f.Add([]byte(`{"proxy_protocol":1}`), "tcp")
	f.Fuzz(func(t *testing.T, b []byte, proto string) {
		var o RouteOptions
		if json.Unmarshal(b, &o) != nil || o.Validate(proto) != nil {
			return
		}
		enc, err := json.Marshal(o)
		if err != nil {
			t.Fatalf("marshal %+v: %v", o, err)
		}
		var back RouteOptions
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("decode %s: %v", enc, err)
		}
		if !back.Equal(o) {
			t.Fatalf("round trip of %s: %+v, want %+v", enc, back, o)
		}
		if err := back.Validate(proto); err != nil {
			t.Fatalf("round trip of %s no longer validates: %v", enc, err)
		}
	})
}
