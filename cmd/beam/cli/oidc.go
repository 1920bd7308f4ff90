package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/console"
	"beam.dev/beam/coordinator/oidclogin"
	"beam.dev/beam/edge"
	"beam.dev/beam/edge/edgeoidc"
	"beam.dev/beam/oidcauth"
	"beam.dev/beam/wire"
)

// registerOIDCProvider registers the --oidc-* flags naming the provider
// and client, which beam edge shares with beam coordinator and server.
func registerOIDCProvider(fl *pflag.FlagSet, o *configs.OIDCProvider, what string) {
	fl.StringVar(&o.Issuer, "oidc-issuer", "", "OpenID Connect provider's issuer URL: "+what)
	fl.StringVar(&o.ClientID, "oidc-client-id", "", "client ID registered at the provider")
	fl.StringVar(&o.ClientSecretFile, "oidc-client-secret-file", "", "file holding the client secret")
	def := configs.DefaultOIDCProvider()
	fl.StringSliceVar(&o.Scopes, "oidc-scopes", def.Scopes, "scopes to request besides openid (add groups if your provider needs it for the groups claim)")
	fl.StringVar(&o.GroupsClaim, "oidc-groups-claim", def.GroupsClaim, "ID token claim listing the user's groups")
	fl.IntVar(&o.MaxSignIns, "oidc-max-sign-ins", 0, "sign-ins in flight kept (started, not finished; up to 10 minutes each), past which the oldest of the busiest address is dropped (0: 4096; -1: no limit)")
	fl.IntVar(&o.MaxSignInsPerAddress, "oidc-max-sign-ins-per-address", 0, "sign-ins in flight kept from one client address, past which its oldest is dropped (0: 64; -1: no limit)")
}

// registerOIDC registers the --oidc-* flags of beam coordinator and beam
// server: sign-in through an OpenID Connect provider.
func registerOIDC(fl *pflag.FlagSet, o *configs.OIDC) {
	registerOIDCProvider(fl, &o.OIDCProvider, "devices join by signing in there, and routes exposed with --oidc sign people in there")
	fl.StringVar(&o.RedirectURL, "oidc-redirect-url", "", "callback URL registered at the provider (default http://ADDR/oidc/callback)")
	fl.StringSliceVar(&o.GroupMap, "oidc-group-map", nil, "map a provider group to a policy group: NAME=group:POLICYNAME (default: group:NAME)")
	fl.StringSliceVar(&o.AllowedDomains, "oidc-allowed-domains", nil, "email domains whose users may join devices")
	fl.StringSliceVar(&o.AllowedEmails, "oidc-allowed-emails", nil, "email addresses that may join devices")
	fl.StringSliceVar(&o.AllowedGroups, "oidc-allowed-groups", nil, "provider groups whose members may join devices")
	fl.StringSliceVar(&o.Admins, "oidc-admins", nil, "who may sign in to the web console with their login: emails, *@DOMAIN or group:NAME (a provider group)")
	fl.StringVar(&o.KeyLifetime, "oidc-key-lifetime", "", "how long a device joined by a sign-in stays valid before its user signs in again (e.g. 720h; default --node-key-expiry)")
}

// clientSecret reads --oidc-client-secret-file; "" without one.
func oidcClientSecret(o *configs.OIDCProvider) (string, error) {
	if o.ClientSecretFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(o.ClientSecretFile)
	if err != nil {
		return "", fmt.Errorf("read --oidc-client-secret-file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// edgeSignIn is the edge's sign-in for routes exposed with --oidc; nil
// without --oidc-issuer (such routes then get 503).
func edgeSignIn(o *configs.OIDCProvider, logger *slog.Logger) (edge.SignIn, error) {
	if o.Issuer == "" {
		return nil, nil
	}
	secret, err := oidcClientSecret(o)
	if err != nil {
		return nil, err
	}
	s, err := edgeoidc.New(edgeoidc.Options{Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret,
		Scopes: o.Scopes, GroupsClaim: o.GroupsClaim, Logger: logger.With("component", "edge-oidc"),
		MaxSignIns: o.MaxSignIns, MaxSignInsPerAddress: o.MaxSignInsPerAddress})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// oidcSetup is OIDC sign-in built from the flags: an Approver to give
// the coordinator before it exists, then attach.
type oidcSetup struct {
	o      *configs.OIDC
	rp     *oidcauth.RP
	allow  *oidcauth.Allow
	admins *oidcauth.Allow
	login  *oidclogin.Login
}

// ServeApproval implements coordinator.Approver once attach has run.
func (s *oidcSetup) ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration) {
	s.login.ServeApproval(w, r, p)
}

// newOIDC checks the flags and discovers the provider; nil, nil if
// --oidc-issuer is not set.
func newOIDC(ctx context.Context, o *configs.OIDC, addr string, logger *slog.Logger) (*oidcSetup, error) {
	if o.Issuer == "" {
		if o.ClientID != "" || o.ClientSecretFile != "" || len(o.AllowedDomains)+len(o.AllowedEmails)+len(o.AllowedGroups)+len(o.Admins) > 0 {
			return nil, errors.New("the --oidc-* flags need --oidc-issuer")
		}
		return nil, nil
	}
	if o.ClientID == "" {
		return nil, errors.New("--oidc-issuer needs --oidc-client-id")
	}
	secret, err := oidcClientSecret(&o.OIDCProvider)
	if err != nil {
		return nil, err
	}
	redirect := o.RedirectURL
	if redirect == "" {
		host, port, err := net.SplitHostPort(addr)
		ip := net.ParseIP(host)
		if err != nil || port == "0" || host == "" || (ip != nil && ip.IsUnspecified()) {
			return nil, fmt.Errorf("--oidc-issuer needs --oidc-redirect-url: the URL at which browsers reach this server's %s (register it at the provider)", oidclogin.CallbackPath)
		}
		redirect = "http://" + net.JoinHostPort(host, port) + oidclogin.CallbackPath
	}
	var rules []string
	for _, d := range o.AllowedDomains {
		rules = append(rules, "email:*@"+strings.TrimPrefix(d, "@"))
	}
	for _, e := range o.AllowedEmails {
		rules = append(rules, "email:"+e)
	}
	for _, g := range o.AllowedGroups {
		rules = append(rules, "group:"+strings.TrimPrefix(g, "group:"))
	}
	allow, err := oidcauth.ParseAllow(rules)
	if err != nil {
		return nil, fmt.Errorf("--oidc-allowed-*: %w", err)
	}
	if allow.Empty() {
		return nil, errors.New("--oidc-issuer needs --oidc-allowed-domains, --oidc-allowed-emails or --oidc-allowed-groups: who may join devices")
	}
	rp, err := oidcauth.New(ctx, oidcauth.Options{
		Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret, RedirectURL: redirect,
		Scopes: o.Scopes, GroupsClaim: o.GroupsClaim, Logger: logger.With("component", "oidc"),
		MaxSignIns: o.MaxSignIns, MaxSignInsPerAddress: o.MaxSignInsPerAddress,
	})
	if err != nil {
		return nil, err
	}
	var adminRules []string
	for _, a := range o.Admins {
		if strings.HasPrefix(a, "group:") || strings.HasPrefix(a, "email:") {
			adminRules = append(adminRules, a)
		} else {
			adminRules = append(adminRules, "email:"+a)
		}
	}
	admins, err := oidcauth.ParseAllow(adminRules)
	if err != nil {
		return nil, fmt.Errorf("--oidc-admins: %w", err)
	}
	return &oidcSetup{o: o, rp: rp, allow: allow, admins: admins}, nil
}

// adminAuth admits an admin API request (coordinator.Options.AdminAuth)
// whose bearer token is an ID token of one of --oidc-admins.
func (s *oidcSetup) adminAuth(r *http.Request) (string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || s.admins.Empty() || strings.Count(tok, ".") != 2 {
		return "", false
	}
	id, err := s.rp.VerifyIDToken(r.Context(), tok)
	if err != nil || !s.admins.Permits(id) {
		return "", false
	}
	if id.Email == "" || !id.EmailVerified {
		return "sub:" + id.Subject, true
	}
	return id.Email, true
}

// adminURL is where the console's sign-in page links for a sign-in at
// the provider; empty without --oidc-admins.
func (s *oidcSetup) adminURL() string {
	if s == nil || len(s.o.Admins) == 0 {
		return ""
	}
	return oidclogin.AdminPath
}

// attach builds the sign-in handler for coord and the console, and
// routes it on mux.
func (s *oidcSetup) attach(coord *coordinator.Server, con *console.Console, mux *http.ServeMux, logger *slog.Logger) error {
	groupMap := map[string]string{}
	for _, m := range s.o.GroupMap {
		from, to, ok := strings.Cut(m, "=")
		if !ok || from == "" || !strings.HasPrefix(to, "group:") {
			return fmt.Errorf("bad --oidc-group-map %q: want PROVIDER_GROUP=group:NAME", m)
		}
		groupMap[from] = to
	}
	admins := s.admins
	var err error
	var lifetime time.Duration
	if s.o.KeyLifetime != "" {
		lifetime, err = parseExpiryArg(s.o.KeyLifetime)
		if err != nil {
			return fmt.Errorf("--oidc-key-lifetime: %w", err)
		}
	}
	opts := oidclogin.Options{Coordinator: coord, RP: s.rp, Allow: s.allow, GroupMap: groupMap,
		NodeKeyExpiry: lifetime, Admins: admins, Logger: logger.With("component", "oidc")}
	if !admins.Empty() {
		opts.AdminSignIn = con.SignInWith
	}
	s.login, err = oidclogin.New(opts)
	if err != nil {
		return err
	}
	mux.Handle(oidclogin.Prefix, s.login)
	return nil
}
