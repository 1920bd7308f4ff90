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
