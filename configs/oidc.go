package configs

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
