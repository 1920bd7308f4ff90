package configs

import (
	"os"
	"strings"
	"testing"
)

func TestExampleDERPMap(t *testing.T) {
	b, err := os.ReadFile("derpmap.example.json")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseDERPMap(b)
	if err != nil {
		t.Fatalf("example relay map: %v", err)
	}
	if len(m.Regions) != 2 || len(m.Regions[1].Nodes) != 2 {
		t.Fatalf("regions = %+v", m.Regions)
	}
}

func TestParseDERPMapErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", `{"regions":{},"extra":1}`, "unknown field"},
		{"empty", `{"regions":{}}`, "no regions"},
		{"id mismatch", `{"regions":{"1":{"region_id":2,"nodes":[{"name":"a","url":"http://r"}]}}}`, "must be positive"},
		{"bad url", `{"regions":{"1":{"region_id":1,"nodes":[{"name":"a","url":"ftp://r"}]}}}`, "want http(s)"},
		{"bad stun", `{"regions":{"1":{"region_id":1,"nodes":[{"name":"a","url":"http://r","stun_addr":"nope"}]}}}`, "stun_addr"},
		{"trailing", `{"regions":{"1":{"region_id":1,"nodes":[{"name":"a","url":"http://r"}]}}} {}`, "trailing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDERPMap([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func FuzzParseDERPMap(f *testing.F) {
	f.Add([]byte(`{"regions":{"1":{"region_id":1,"nodes":[{"name":"a","url":"http://r","stun_addr":"r:3478"}]}}}`))
	f.Add([]byte(`{"regions":{"1":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseDERPMap(b)
		if err == nil && ValidateDERPMap(m) != nil {
			t.Fatal("parsed map fails validation")
		}
	})
}

func TestCheckDomain(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"localhost", true}, {"example.test", true}, {"a-b.c1.test", true}, {strings.Repeat("a", 63) + ".test", true},
		{"", false}, {"a..b", false}, {".a", false}, {"a.", false}, {"-a.test", false}, {"a-.test", false},
		{"A.test", false}, {"a_b.test", false}, {"a b", false}, {strings.Repeat("a", 64), false},
		{strings.Repeat("abcdefgh.", 29) + "test", false},
	} {
		if err := CheckDomain(tc.in); (err == nil) != tc.ok {
			t.Errorf("CheckDomain(%q) = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in          string
		first, last uint16
		ok          bool
	}{
		{"20000-20999", 20000, 20999, true}, {"80", 80, 80, true}, {"1-65535", 1, 65535, true},
		{"0-10", 0, 0, false}, {"10-9", 0, 0, false}, {"1-65536", 0, 0, false}, {"a-b", 0, 0, false}, {"", 0, 0, false}, {"-", 0, 0, false},
	} {
		f, l, err := ParsePortRange(tc.in)
		if (err == nil) != tc.ok || f != tc.first || l != tc.last {
			t.Errorf("ParsePortRange(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, f, l, err, tc.first, tc.last, tc.ok)
		}
	}
}

func TestParseByteRate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"", 0, ""},
		{"0", 0, ""},
		{"100Mbit", 12_500_000, ""},
		{"100mbit/s", 12_500_000, ""},
		{"2.5Gbit", 312_500_000, ""},
		{"64kbit", 8_000, ""},
		{"12MiB", 12 << 20, ""},
		{"500kB", 500_000, ""},
		{"1 GB", 1_000_000_000, ""},
		{"100Gbit", 12_500_000_000, ""},
		{"100", 0, "unit"},
		{"fast", 0, "unknown unit"},
		{"Mbit", 0, "not a number"},
		{"-5Mbit", 0, "not a number"},
		{"10parsecs", 0, "unknown unit"},
		{"63kbit", 0, "64kbit to 100Gbit"},
		{"101Gbit", 0, "64kbit to 100Gbit"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseByteRate(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseByteRate(%q) = %d, %v; want an error saying %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseByteRate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
			if got == 0 {
				return
			}
			// FormatByteRate writes what ParseByteRate reads back.
			if back, err := ParseByteRate(FormatByteRate(got)); err != nil || back != got {
				t.Errorf("ParseByteRate(FormatByteRate(%d) = %q) = %d, %v", got, FormatByteRate(got), back, err)
			}
		})
	}
}

// TestRelayLimits: the relay limits' defaults, "off", and what Validate
// refuses, naming the flag.
func TestRelayLimits(t *testing.T) {
	for _, tc := range []struct {
		rate, burst         string
		wantRate, wantBurst int64
	}{
		{"", "", DefaultRelayRate, DefaultRelayBurst},
		{"0", "0", DefaultRelayRate, DefaultRelayBurst},
		{"100Mbit", "1MiB", 12_500_000, 1 << 20},
		{"off", "", 0, DefaultRelayBurst},
		{"OFF", "64KiB", 0, 64 << 10},
	} {
		l := RelayLimits{RelayRate: tc.rate, RelayBurst: tc.burst}
		d := DefaultDERP()
		d.RelayLimits = l
		if err := d.Validate(); err != nil {
			t.Errorf("rate %q burst %q: %v", tc.rate, tc.burst, err)
			continue
		}
		if r, b := l.Bytes(); r != tc.wantRate || b != tc.wantBurst {
			t.Errorf("rate %q burst %q: got %d B/s, %d B; want %d, %d", tc.rate, tc.burst, r, b, tc.wantRate, tc.wantBurst)
		}
	}
	if DefaultRelayRate == 0 {
		t.Error("the relay rate has no default limit")
	}
	for _, tc := range []struct{ rate, burst, flag string }{
		{"fast", "", "--relay-rate"},
		{"10", "", "--relay-rate"},
		{"1kbit", "", "--relay-rate"},
		{"", "1kB", "--relay-burst"},
		{"", "2GiB", "--relay-burst"},
		{"", "off", "--relay-burst"},
	} {
		s := Server{Domain: "a.test", Addr: ":1", RelayLimits: RelayLimits{RelayRate: tc.rate, RelayBurst: tc.burst}}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("rate %q burst %q: err %v, want it to name %s", tc.rate, tc.burst, err, tc.flag)
		}
	}
}
