package cli

import (
	"io"
	"slices"
	"strings"
	"testing"
)

// TestOIDCConfigFile: the --oidc-* settings come from a config file as
// from flags, for beam coordinator and (the provider part) beam edge.
func TestOIDCConfigFile(t *testing.T) {
	f := &Factory{In: strings.NewReader(""), Out: io.Discard, ErrOut: io.Discard}
	path := writeConfig(t, `{
		"oidc_issuer": "https://id.example.com",
		"oidc_client_id": "beam",
		"oidc_client_secret_file": "/etc/beam/oidc.secret",
		"oidc_scopes": ["email", "groups"],
		"oidc_allowed_domains": ["example.com"],
		"oidc_admins": ["alice@example.com", "group:it"],
		"oidc_key_lifetime": "720h",
	}`)
	var got *CoordinatorOptions
	cmd := NewCmdCoordinator(f, func(o *CoordinatorOptions) error { got = o; return nil })
	quiet(cmd, []string{"--config", path, "--oidc-client-id", "beam-flag"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ what, got, want string }{
		{"issuer", got.OIDC.Issuer, "https://id.example.com"},
		{"client id (flag over file)", got.OIDC.ClientID, "beam-flag"},
		{"secret file", got.OIDC.ClientSecretFile, "/etc/beam/oidc.secret"},
		{"scopes", strings.Join(got.OIDC.Scopes, ","), "email,groups"},
		{"groups claim (default)", got.OIDC.GroupsClaim, "groups"},
		{"allowed domains", strings.Join(got.OIDC.AllowedDomains, ","), "example.com"},
		{"admins", strings.Join(got.OIDC.Admins, ","), "alice@example.com,group:it"},
		{"key lifetime", got.OIDC.KeyLifetime, "720h"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}

	epath := writeConfig(t, `{"oidc_issuer": "https://id.example.com", "oidc_client_id": "edge", "domain": "edge.example"}`)
	var e *EdgeOptions
	ecmd := NewCmdEdge(f, &instanceFlags{state: t.TempDir()}, func(o *EdgeOptions) error { e = o; return nil })
	quiet(ecmd, []string{"--config", epath})
	if err := ecmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if e.Issuer != "https://id.example.com" || e.ClientID != "edge" || !slices.Equal(e.Scopes, []string{"email", "profile"}) {
		t.Errorf("edge: issuer %q client %q scopes %q", e.Issuer, e.ClientID, e.Scopes)
	}
	// The edge has no device sign-in: a coordinator-only key is refused.
	bad := writeConfig(t, `{"oidc_admins": ["alice@example.com"]}`)
	ecmd = NewCmdEdge(f, &instanceFlags{state: t.TempDir()}, func(o *EdgeOptions) error { return nil })
	quiet(ecmd, []string{"--config", bad})
	if err := ecmd.Execute(); err == nil {
		t.Error("beam edge accepted oidc_admins")
	}
}
