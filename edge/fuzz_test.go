package edge

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// captureClientHello returns the bytes a crypto/tls client sends first.
func captureClientHello(t testing.TB, conf *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		tls.Client(a, conf).Handshake()
	}()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, raw, err := readClientHello(b)
	if err != nil {
		t.Fatalf("readClientHello of a crypto/tls hello: %v", err)
	}
	return raw
}

// splitRecords re-frames a one-record ClientHello as records of at most n
// fragment bytes.
func splitRecords(raw []byte, n int) []byte {
	frag := raw[recordHeaderLen:]
	var out []byte
	for len(frag) > 0 {
		k := min(n, len(frag))
		out = append(out, recordTypeHandshake, 3, 1)
		out = binary.BigEndian.AppendUint16(out, uint16(k))
		out = append(out, frag[:k]...)
		frag = frag[k:]
	}
	return out
}

func TestReadClientHello(t *testing.T) {
	raw := captureClientHello(t, &tls.Config{ServerName: "Alpha.Example.Test", NextProtos: []string{"h2", "http/1.1"}})
	noSNI := captureClientHello(t, &tls.Config{InsecureSkipVerify: true})
	tests := []struct {
		name    string
		in      []byte
		sni     string
		alpn    []string
		wantErr bool
	}{
		{"crypto/tls", raw, "Alpha.Example.Test", []string{"h2", "http/1.1"}, false},
		{"split into 100-byte records", splitRecords(raw, 100), "Alpha.Example.Test", []string{"h2", "http/1.1"}, false},
		{"split into 1-byte records", splitRecords(raw, 1), "Alpha.Example.Test", []string{"h2", "http/1.1"}, false},
		{"no SNI", noSNI, "", nil, false},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "", nil, true},
		{"truncated", raw[:len(raw)-10], "", nil, true},
		{"empty", nil, "", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The reader must not read past the ClientHello.
			in := append(slices.Clone(tt.in), "after"...)
			r := bytes.NewReader(in)
			ch, got, err := readClientHello(r)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if ch.ServerName != tt.sni || !slices.Equal(ch.ALPN, tt.alpn) {
				t.Errorf("got %q %q, want %q %q", ch.ServerName, ch.ALPN, tt.sni, tt.alpn)
			}
			if !bytes.Equal(got, tt.in) {
				t.Errorf("raw bytes differ from the input (%d vs %d bytes)", len(got), len(tt.in))
			}
			if rest, _ := io.ReadAll(r); string(rest) != "after" {
				t.Errorf("reader consumed past the ClientHello: left %q", rest)
			}
		})
	}
}

func FuzzClientHello(f *testing.F) {
	// Seeds: a real ClientHello with SNI and ALPN, one without SNI, the
	// same split over records, and non-TLS bytes.
	raw := captureClientHello(f, &tls.Config{ServerName: "a.example.test", NextProtos: []string{"h2"}})
	f.Add(raw)
	f.Add(splitRecords(raw, 7))
	f.Add(captureClientHello(f, &tls.Config{InsecureSkipVerify: true}))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		ch, got, err := readClientHello(bytes.NewReader(in))
		// The raw bytes, also on error, are exactly what was read: a
		// prefix of the input, to be replayed.
		if len(got) > len(in) || !bytes.Equal(got, in[:len(got)]) {
			t.Fatalf("raw bytes (%d) are not a prefix of the input (%d)", len(got), len(in))
		}
		if err == nil {
			// Whatever was parsed, normalising the name must not panic
			// and a normalised name is stable.
			if h, ok := normalizeHost(ch.ServerName); ok {
				if h2, ok2 := normalizeHost(h); !ok2 || h2 != h {
					t.Fatalf("normalizeHost not idempotent on %q", h)
				}
			}
		}
	})
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"alpha.example.test", "alpha.example.test", true},
		{"ALPHA.Example.TEST", "alpha.example.test", true},
		{"alpha.example.test.", "alpha.example.test", true},
		{"alpha.example.test:8443", "alpha.example.test", true},
		{"alpha.example.test.:80", "alpha.example.test", true},
		{"a-b_c.example.test", "a-b_c.example.test", true},
		{"alpha.example.test..", "", false},
		{".alpha.example.test", "", false},
		{"alpha..example.test", "", false},
		{"-alpha.example.test", "", false},
		{"alpha-.example.test", "", false},
		{"alpha.example.test:", "", false},
		{"alpha.example.test:x", "", false},
		{"alpha.example.test:123456", "", false},
		{"127.0.0.1", "", false},
		{"127.0.0.1:80", "", false},
		{"[::1]:80", "", false},
		{"::1", "", false},
		{"", "", false},
		{".", "", false},
		{"exa mple.test", "", false},
		{"ex\x00ample.test", "", false},
		{"bücher.test", "", false},
		{"\u212aelvin.test", "", false}, // Kelvin sign folds to k in Unicode, not here
		{strings.Repeat("a", 64) + ".test", "", false},
		{strings.Repeat("a", 63) + ".test", strings.Repeat("a", 63) + ".test", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := normalizeHost(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("normalizeHost(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{"alpha.example.test", "ALPHA.example.test.", "a.b:80", "[::1]:1", "1.2.3.4", "a..b", "\u212a.test"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		h, ok := normalizeHost(in)
		if !ok {
			if h != "" {
				t.Fatalf("rejected %q but returned %q", in, h)
			}
			return
		}
		// Canonical: idempotent, lower-case ASCII, no trailing dot, and
		// equal to the input folded (so two spellings match one route only
		// if they differ by case, a trailing dot or a port).
		if h2, ok2 := normalizeHost(h); !ok2 || h2 != h {
			t.Fatalf("normalizeHost(%q) = %q, then %q %v", in, h, h2, ok2)
		}
		if strings.HasSuffix(h, ".") || strings.ToLower(h) != h {
			t.Fatalf("normalizeHost(%q) = %q is not canonical", in, h)
		}
		base := in
		if i := strings.LastIndexByte(base, ':'); i >= 0 {
			base = base[:i]
		}
		if !strings.EqualFold(strings.TrimSuffix(base, "."), h) {
			t.Fatalf("normalizeHost(%q) = %q changed more than case, dot and port", in, h)
		}
	})
}

func TestSmuggleScanner(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   bool
	}{
		{"plain", []string{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"}, false},
		{"cl+te", []string{"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"}, true},
		{"split across reads", []string{"POST / HTTP/1.1\r\nCont", "ent-Length : 3\r\nTransfer-Enc", "oding: chunked\r", "\n\r\n"}, true},
		{"separate requests", []string{"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"}, false},
		{"name prefix only", []string{"POST / HTTP/1.1\r\nContent-Lengthy: 3\r\nTransfer-Encoding: chunked\r\n\r\n"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s smuggleScanner
			got := false
			for _, c := range tt.chunks {
				got = s.feed([]byte(c))
			}
			if got != tt.want {
				t.Errorf("flagged = %v, want %v", got, tt.want)
			}
		})
	}
}
