package configs

import (
	"fmt"
	"strconv"
)

// OIDCProvider names an OpenID Connect provider and the client registered
// there (beam coordinator, beam server, beam edge: --oidc-issuer ...).
type OIDCProvider struct {
	// Issuer is the provider's issuer URL; "" turns sign-in off.
	Issuer string `json:"oidc_issuer"`
	// ClientID is the client registered at the provider.
	ClientID string `json:"oidc_client_id"`
	// ClientSecretFile holds the client secret.
	ClientSecretFile string `json:"oidc_client_secret_file"`
	// Scopes are requested besides openid.
	Scopes []string `json:"oidc_scopes"`
	// GroupsClaim is the ID token claim listing the user's groups.
	GroupsClaim string `json:"oidc_groups_claim"`
	// MaxSignIns and MaxSignInsPerAddress bound the sign-ins in flight
	// (started and not finished, each kept up to 10 minutes) in all and
	// from one client address: past one, an older sign-in is dropped
	// (never a new one refused). 0 means the default (4096 and 64), -1
	// no limit.
	MaxSignIns           int `json:"oidc_max_sign_ins"`
	MaxSignInsPerAddress int `json:"oidc_max_sign_ins_per_address"`
}

// check checks the caps on sign-ins in flight.
func (o *OIDCProvider) check(c *checker) {
	for _, f := range []struct {
		flag string
		v    int
		def  int
	}{{"--oidc-max-sign-ins", o.MaxSignIns, 4096}, {"--oidc-max-sign-ins-per-address", o.MaxSignInsPerAddress, 64}} {
		if f.v < -1 || f.v > 1_000_000 {
			c.add(f.flag, strconv.Itoa(f.v), fmt.Sprintf("want 1 to 1000000 sign-ins in flight, 0 for the default (%d) or -1 for no limit", f.def))
		}
	}
	if o.MaxSignIns > 0 && o.MaxSignInsPerAddress > o.MaxSignIns {
		c.add("--oidc-max-sign-ins-per-address", strconv.Itoa(o.MaxSignInsPerAddress),
			fmt.Sprintf("want at most --oidc-max-sign-ins (%d): one address cannot have more than all of them", o.MaxSignIns))
	}
}

// OIDC is sign-in at an OpenID Connect provider for the coordinator:
// devices join as the person who signs in, admins sign in to the console.
type OIDC struct {
	OIDCProvider
	// RedirectURL is the callback URL registered at the provider; ""
	// means http://ADDR/oidc/callback for a concrete address.
	RedirectURL string `json:"oidc_redirect_url"`
	// GroupMap maps provider groups to policy groups (NAME=group:X).
	GroupMap []string `json:"oidc_group_map"`
	// AllowedDomains, AllowedEmails and AllowedGroups say who may join
	// devices; at least one is needed with an Issuer.
	AllowedDomains []string `json:"oidc_allowed_domains"`
	AllowedEmails  []string `json:"oidc_allowed_emails"`
	AllowedGroups  []string `json:"oidc_allowed_groups"`
	// Admins may sign in to the web console: emails, *@DOMAIN or group:NAME.
	Admins []string `json:"oidc_admins"`
	// KeyLifetime is how long a device joined by a sign-in stays valid
	// ("720h"); "" means the node key expiry.
	KeyLifetime string `json:"oidc_key_lifetime"`
}

// DefaultOIDCProvider returns the provider settings' defaults (the
// scopes and groups claim; sign-in itself is off).
func DefaultOIDCProvider() OIDCProvider {
	return OIDCProvider{Scopes: []string{"email", "profile"}, GroupsClaim: "groups"}
}
