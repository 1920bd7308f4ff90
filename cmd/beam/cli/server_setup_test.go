package cli

import (
	"bytes"
	"strings"
	"testing"

	"beam.dev/beam/configs"
)

// TestServerACMEDirectory checks which ACME directory beam server uses
// and which settings it refuses before running.
func TestServerACMEDirectory(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantCA  string
		wantErr string
	}{
		{"public default", []string{"--domain", "example.test"}, letsEncryptProduction, ""},
		{"staging", []string{"--domain", "example.test", "--acme-staging"}, letsEncryptStaging, ""},
		{"own CA", []string{"--domain", "example.test", "--acme-ca", "https://ca.example.test/dir"}, "https://ca.example.test/dir", ""},
		{"plain HTTP", []string{"--domain", "example.test", "--https-addr", ""}, "", ""},
		{"dev", []string{"--dev"}, "", ""},
		{"both", []string{"--domain", "example.test", "--acme-staging", "--acme-ca", "https://ca.example.test/dir"}, "", "--acme-staging and --acme-ca"},
		{"no zone", []string{"--domain", "example.test", "--dns-addr", ""}, "", "no way to get certificates"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got *ServerOptions
			f := &Factory{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}
			cmd := NewCmdServer(f, func(o *ServerOptions) error { got = o; return nil })
			quiet(cmd, tc.args)
			err := cmd.Execute()
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want it to say %q", err, tc.wantErr)
				}
				if got != nil {
					t.Error("ran despite the error")
				}
			case err != nil:
				t.Fatalf("err %v", err)
			case got.ACMECA != tc.wantCA:
				t.Errorf("ACME directory %q, want %q", got.ACMECA, tc.wantCA)
			}
		})
	}
}

// TestServerSetupWarnings checks the loud warnings of a public server:
// plain HTTP only, and listeners or public addresses on loopback.
func TestServerSetupWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"defaults", []string{"--domain", "example.test", "--public-ip", "203.0.113.10"}, nil},
		{"no public address", []string{"--domain", "example.test"}, []string{"no --public-ip"}},
		{"plain HTTP", []string{"--domain", "example.test", "--https-addr", "", "--public-ip", "203.0.113.10"}, []string{"no HTTPS"}},
		{"loopback", []string{"--domain", "example.test", "--addr", "127.0.0.1:8080", "--http-addr", "[::1]:80", "--public-ip", "127.0.0.1"},
			[]string{"--addr 127.0.0.1:8080 listens on loopback only", "--http-addr [::1]:80 listens on loopback only", "--public-ip 127.0.0.1 is not a public address"}},
		{"dev", []string{"--dev"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errOut bytes.Buffer
			f := &Factory{Out: &bytes.Buffer{}, ErrOut: &errOut}
			cmd := NewCmdServer(f, func(*ServerOptions) error { return nil })
			quiet(cmd, tc.args)
			if err := cmd.Execute(); err != nil {
				t.Fatal(err)
			}
			got := errOut.String()
			if n := strings.Count(got, "WARNING: "); n != len(tc.want) {
				t.Errorf("%d warnings, want %d:\n%s", n, len(tc.want), got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("no warning %q in:\n%s", w, got)
				}
			}
		})
	}
}

// TestPublicSetupSummary checks the records and ports a public server
// tells its operator to create and open.
func TestPublicSetupSummary(t *testing.T) {
	o := &ServerOptions{Server: configs.Server{Domain: "example.test", Addr: ":8080", HTTPAddr: ":80", HTTPSAddr: ":443", STUNAddr: ":3478",
		Zone:     configs.Zone{DNSAddr: ":53", PublicIPs: []string{"203.0.113.10", "2001:db8::10"}},
		TCPPorts: "20000-20999", ACMECA: letsEncryptProduction}}
	var b bytes.Buffer
	printPublicSetup(&b, o, "http://example.test:8080")
	got := b.String()
	for _, want := range []string{
		"devices join at:       http://example.test:8080",
		"beam expose gives:     https://NAME.example.test\n",
		"example.test. NS ns1.example.test.",
		"ns1.example.test. A 203.0.113.10",
		"ns1.example.test. AAAA 2001:db8::10",
		"tcp+udp 53, tcp 80, tcp 443, tcp 8080, udp 3478, udp 3479 (second STUN port), tcp 20000-20999",
		letsEncryptProduction,
		"app.customer.com. CNAME NAME.example.test.",
		"the TXT record beam admin domains verify app.customer.com prints",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	o.HTTPSAddr, o.HTTPAddr, o.PublicIPs = "", ":8081", nil
	b.Reset()
	printPublicSetup(&b, o, "http://example.test:8080")
	got = b.String()
	for _, want := range []string{"beam expose gives:     http://NAME.example.test:8081", "ns1.example.test. A PUBLIC-IP", "--public-ip PUBLIC-IP"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
}
