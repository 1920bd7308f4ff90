// Package oidclogin lets people join devices to a coordinator by signing
// in at an OpenID Connect provider. It is the coordinator's Approver: a
// node that registers without an auth key is sent to /register/CODE,
// which shows the device and a sign-in link (LoginPath); the provider
// sends the browser back to CallbackPath, and once the ID token checks
// out (see oidcauth) and the person is allowed, a page shows the device
// again with a button "Add this device as EMAIL". Only that button's
// POST to ConfirmPath (same origin, with the CSRF token of the page and
// the cookie set with it) approves the pending registration as their
// user: created then on first sign-in, named by their email, with the
// policy groups their groups claim maps to.
//
// The sign-in alone never approves: a link to LoginPath can be sent to
// anyone, and a browser with a session at the provider comes back
// without a click. Without the confirmation, whoever started beam up
// could have their device joined as the person who followed the link.
//
// The caller routes LoginPath and CallbackPath to the Login
// (mux.Handle(oidclogin.Prefix, l)) and gives it as Options.Approver.
// The same callback signs admins in to the web console (AdminSignIn).
package oidclogin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/oidcauth"
	"beam.dev/beam/wire"
)

// Paths the Login serves, all under Prefix.
const (
	Prefix       = "/oidc/"
	LoginPath    = "/oidc/login/" // + approval code
	CallbackPath = "/oidc/callback"
	AdminPath    = "/oidc/admin"   // ?next=/console/...
	ConfirmPath  = "/oidc/confirm" // POST token=...: add the device signed in for
)

// Bounds of the confirmations waiting for their button (a sign-in done,
// the device not yet added).
const (
	confirmTTL  = 10 * time.Minute
	maxConfirms = 1024
	// confirmCookie + "_" + a hash of the token names the cookie that
	// binds a confirmation to the browser that signed in.
	confirmCookie = "beam_oidc_confirm"
	maxFormBytes  = 4096
)

// Options configures a Login.
type Options struct {
	// Coordinator is the coordinator whose registrations are approved.
	// Required.
	Coordinator *coordinator.Server
	// RP is the relying party, its redirect URL routed to CallbackPath.
	// Required.
	RP *oidcauth.RP
	// Allow says who may join devices. Required and not empty.
	Allow *oidcauth.Allow
	// GroupMap maps provider group names to policy groups ("eng" ->
	// "group:engineering"); a provider group not in it maps to
	// "group:" + its name. Only groups the policy defines have effect.
	GroupMap map[string]string
	// NodeKeyExpiry is how long the key of a device joined by a sign-in
	// stays valid (then its user signs in again: beam up
	// --force-reauth); zero means the coordinator's default.
	NodeKeyExpiry time.Duration
	// Admins may sign in to the web console with their login; nil or
	// empty means nobody.
	Admins *oidcauth.Allow
	// AdminSignIn starts a console session for an admin who signed in
	// (the console's SignInWith), then sends the browser to next.
	// Nil disables AdminPath.
	AdminSignIn func(w http.ResponseWriter, r *http.Request, name, method, next string)
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Login is the sign-in Approver and the handler of the paths under Prefix.
type Login struct {
	opts    Options
	coord   *coordinator.Server
	logger  *slog.Logger
	xorigin *http.CrossOriginProtection

	mu       sync.Mutex          // guards the following field
	confirms map[string]*confirm // by token (the page's CSRF token)
}

// confirm is a device sign-in waiting for its person to press "Add".
type confirm struct {
	id      oidcauth.Identity
	name    string // the Beam user
	device  wire.PendingRegistration
	browser [32]byte // SHA-256 of the browser cookie's value
	expires time.Time
}

var _ coordinator.Approver = (*Login)(nil)

// New returns a Login on opts.
func New(opts Options) (*Login, error) {
	if opts.Coordinator == nil || opts.RP == nil {
		return nil, errors.New("oidclogin: Options.Coordinator and RP are required")
	}
	if opts.Allow.Empty() {
		return nil, errors.New("oidclogin: Options.Allow must let someone join (allowed domains, emails or groups)")
	}
	l := &Login{opts: opts, coord: opts.Coordinator, logger: opts.Logger,
		xorigin: http.NewCrossOriginProtection(), confirms: map[string]*confirm{}}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	return l, nil
}

// page is parsed on first use: every process of the one beam binary
// runs this package's init, and only a coordinator serves the page.
var page = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Beam: {{.Title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}
code{background:#f2f2f2;padding:0 .3em}a.button,button{display:inline-block;padding:.5em 1em;background:#1d4ed8;color:#fff;text-decoration:none;border:0;border-radius:4px;font:inherit;cursor:pointer}</style>
</head><body>
<h1 id="title">{{.Title}}</h1>
{{range .Lines}}<p>{{.}}</p>{{end}}
{{if .Device}}<table>
<tr><th align="left">Device</th><td id="hostname"><code>{{.Device.Hostname}}</code></td></tr>
<tr><th align="left">OS</th><td>{{.Device.OS}}</td></tr>
<tr><th align="left">Code</th><td id="code"><code>{{.Device.Code}}</code></td></tr>
</table>{{end}}
{{if .Link}}<p><a id="signin" class="button" href="{{.Link}}">{{.LinkText}}</a></p>{{end}}
{{if .Confirm}}<form method="post" action="{{.Confirm.Action}}"><input type="hidden" name="token" value="{{.Confirm.Token}}">
<p><button id="confirm" type="submit">{{.Confirm.Button}}</button></p></form>{{end}}
{{range .After}}<p>{{.}}</p>{{end}}
</body></html>`))
})

type pageData struct {
	Title          string
	Lines, After   []string
	Device         *wire.PendingRegistration
	Link, LinkText string
	Confirm        *confirmForm
}

type confirmForm struct{ Action, Token, Button string }

func render(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.WriteHeader(status)
	page().Execute(w, d)
}

// ServeApproval implements coordinator.Approver: it shows the waiting
// device and a link to sign in, so nobody adds a device they did not
// mean to by following a link.
func (l *Login) ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration) {
	render(w, http.StatusOK, pageData{
		Title:    "Add a device",
		Lines:    []string{"A device is waiting to join this Beam network. Sign in to add it as yours. Only continue if you just started it (beam up)."},
		Device:   &p,
		Link:     LoginPath + url.PathEscape(p.Code),
		LinkText: "Sign in to add this device",
		After:    []string{"An admin can instead approve it with: beam admin nodes approve " + p.Code},
	})
}

func (l *Login) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == ConfirmPath:
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		l.confirmDevice(w, r)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	case strings.HasPrefix(r.URL.Path, LoginPath):
		l.startDevice(w, r, strings.TrimPrefix(r.URL.Path, LoginPath))
	case r.URL.Path == CallbackPath:
		l.callback(w, r)
	case r.URL.Path == AdminPath && l.opts.AdminSignIn != nil:
		l.opts.RP.Begin(w, r, "console:"+r.URL.Query().Get("next"))
	default:
		http.NotFound(w, r)
	}
}

// pending returns the registration waiting with code, or nil.
func (l *Login) pending(code string) *wire.PendingRegistration {
	for _, p := range l.coord.PendingRegistrations() {
		if strings.EqualFold(p.Code, code) {
			return &p
		}
	}
	return nil
}

func (l *Login) startDevice(w http.ResponseWriter, r *http.Request, code string) {
	if l.pending(code) == nil {
		render(w, http.StatusNotFound, pageData{Title: "No such device", Lines: []string{"No device is waiting with this code; it may have joined or expired. Run beam up on the device again."}})
		return
	}
	l.opts.RP.Begin(w, r, "device:"+code)
}

func (l *Login) callback(w http.ResponseWriter, r *http.Request) {
	id, data, err := l.opts.RP.Finish(w, r)
	if err != nil {
		l.logger.Info("oidc sign-in refused", "err", err, "remote", r.RemoteAddr)
		render(w, http.StatusForbidden, pageData{Title: "Sign-in failed", Lines: []string{strings.TrimPrefix(err.Error(), "oidcauth: ")}})
		return
	}
	switch kind, rest, _ := strings.Cut(data, ":"); kind {
	case "device":
		l.askDevice(w, r, id, rest)
	case "console":
		l.signInAdmin(w, r, id, rest)
	default:
		http.NotFound(w, r)
	}
}

// UserName is the Beam user a sign-in is: the verified email, lower-cased.
func UserName(id *oidcauth.Identity) (string, error) {
	if id.Email == "" || !id.EmailVerified {
		return "", errors.New("your provider did not give a verified email address, which Beam names users by")
	}
	return strings.ToLower(id.Email), nil
}

// policyGroups maps the provider's groups to policy groups.
func (l *Login) policyGroups(groups []string) []string {
	var out []string
	for _, g := range groups {
		if m, ok := l.opts.GroupMap[g]; ok {
			out = append(out, m)
		} else {
			out = append(out, "group:"+g)
		}
	}
	return out
}

// askDevice answers a device sign-in: if the person may join devices,
// it shows the device and a form that adds it as theirs (confirmDevice);
// the sign-in itself approves nothing.
func (l *Login) askDevice(w http.ResponseWriter, r *http.Request, id *oidcauth.Identity, code string) {
	name, err := UserName(id)
	if err != nil {
		render(w, http.StatusForbidden, pageData{Title: "Not allowed", Lines: []string{err.Error() + "."}})
		return
	}
	if !l.opts.Allow.Permits(id) {
		l.logger.Info("oidc sign-in not allowed", "email", name, "sub", id.Subject)
		l.coord.RecordAudit(r.Context(), "oidc:"+name, "oidc.refused", code, "sub="+id.Subject+" not in the allowed domains, emails or groups")
		render(w, http.StatusForbidden, pageData{Title: "Not allowed", Lines: []string{
			name + " may not join devices to this network: the account is not in its allowed domains or email list.",
			"Sign in with another account, or ask an admin.",
		}})
		return
	}
	p := l.pending(code)
	if p == nil {
		render(w, http.StatusNotFound, pageData{Title: "No such device", Lines: []string{"No device is waiting with this code; it may have joined or expired. Run beam up on the device again."}})
		return
	}
	token, browser := random(), random()
	now := time.Now()
	l.mu.Lock()
	l.addConfirmLocked(token, &confirm{id: *id, name: name, device: *p, browser: sha256.Sum256([]byte(browser)), expires: now.Add(confirmTTL)}, now)
	l.mu.Unlock()
	http.SetCookie(w, &http.Cookie{
		Name: confirmCookieName(token), Value: browser, Path: ConfirmPath, MaxAge: int(confirmTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil || strings.HasPrefix(l.opts.RP.RedirectURL(), "https://"), SameSite: http.SameSiteLaxMode,
	})
	render(w, http.StatusOK, pageData{
		Title: "Add this device?",
		Lines: []string{
			"Signed in as " + name + ".",
			"Only add this device if you started it yourself (beam up) just now and it printed this code. If someone sent you a link, do not continue: the device would join the network as yours.",
		},
		Device:  p,
		Confirm: &confirmForm{Action: ConfirmPath, Token: token, Button: "Add this device as " + name},
	})
}

// addConfirmLocked keeps c under token, dropping expired confirmations
// and, at maxConfirms, the one that expires first. l.mu held.
func (l *Login) addConfirmLocked(token string, c *confirm, now time.Time) {
	if len(l.confirms) >= maxConfirms {
		var oldest string
		for k, o := range l.confirms {
			if !now.Before(o.expires) {
				delete(l.confirms, k)
			} else if oldest == "" || o.expires.Before(l.confirms[oldest].expires) {
				oldest = k
			}
		}
		if len(l.confirms) >= maxConfirms {
			delete(l.confirms, oldest)
		}
	}
	l.confirms[token] = c
}

func random() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func confirmCookieName(token string) string {
	h := sha256.Sum256([]byte(token))
	return confirmCookie + "_" + base64.RawURLEncoding.EncodeToString(h[:9])
}

// confirmDevice handles the POST of askDevice's form: from this origin,
// with a token that askDevice issued and the cookie it set in the same
// browser. Then it adds the device as the signed-in person's.
func (l *Login) confirmDevice(w http.ResponseWriter, r *http.Request) {
	if err := l.xorigin.Check(r); err != nil {
		l.logger.Warn("cross-origin device confirmation refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		render(w, http.StatusForbidden, pageData{Title: "Refused", Lines: []string{"Cross-origin request refused."}})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		render(w, http.StatusBadRequest, pageData{Title: "Refused", Lines: []string{"Malformed form."}})
		return
	}
	token := r.PostForm.Get("token")
	var cookie string
	if token != "" {
		if ck, err := r.Cookie(confirmCookieName(token)); err == nil {
			cookie = ck.Value
		}
	}
	now := time.Now()
	l.mu.Lock()
	c := l.confirms[token]
	ok := c != nil && cookie != "" && now.Before(c.expires) && subtle.ConstantTimeCompare(c.browser[:], hashOf(cookie)) == 1
	if ok {
		delete(l.confirms, token) // good once
	}
	l.mu.Unlock()
	if !ok {
		l.logger.Warn("device confirmation without a valid token and cookie refused", "remote", r.RemoteAddr)
		render(w, http.StatusForbidden, pageData{Title: "Refused", Lines: []string{"This confirmation is unknown, used, expired or from another browser. Open the device's sign-in URL again."}})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: confirmCookieName(token), Value: "", Path: ConfirmPath, MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	l.joinDevice(w, r, c)
}

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// joinDevice approves the device of c as c's person.
func (l *Login) joinDevice(w http.ResponseWriter, r *http.Request, c *confirm) {
	ctx := r.Context()
	name, code := c.name, c.device.Code
	if p := l.pending(code); p == nil || p.NodeKey != c.device.NodeKey {
		render(w, http.StatusConflict, pageData{Title: "Device not added", Lines: []string{"No device is waiting with this code any more; it may have joined or expired. Run beam up on the device again."}})
		return
	}
	if err := l.ensureUser(ctx, &c.id, name); err != nil {
		l.logger.Warn("oidc user", "email", name, "err", err)
		render(w, http.StatusForbidden, pageData{Title: "Not allowed", Lines: []string{err.Error()}})
		return
	}
	err := l.coord.ApproveRegistration(ctx, code, coordinator.Approval{User: name, Actor: "oidc:" + name, NodeKeyExpiry: l.opts.NodeKeyExpiry})
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, coordinator.ErrNotFound) || errors.Is(err, coordinator.ErrConflict) {
			status = http.StatusConflict
		}
		render(w, status, pageData{Title: "Device not added", Lines: []string{strings.TrimPrefix(err.Error(), "coordinator: ")}})
		return
	}
	render(w, http.StatusOK, pageData{Title: "Device added", Lines: []string{
		"Signed in as " + name + ". The device " + c.device.Hostname + " joins the network as yours.",
		"You can close this tab.",
	}})
}

// ensureUser creates the user on first sign-in and records the policy
// groups this sign-in brought.
func (l *Login) ensureUser(ctx context.Context, id *oidcauth.Identity, name string) error {
	_, err := l.coord.CreateUser(ctx, name)
	switch {
	case err == nil:
		l.coord.RecordAudit(ctx, "oidc:"+name, "user.create", name, fmt.Sprintf("first sign-in: sub=%s name=%q", id.Subject, id.Name))
	case errors.Is(err, coordinator.ErrConflict):
	case errors.Is(err, coordinator.ErrInvalid):
		return fmt.Errorf("%s cannot be a Beam user name (letters, digits and . - _ @ + only)", name)
	default:
		return errors.New("could not create the user; try again")
	}
	if err := l.coord.BindLogin(ctx, name, coordinator.LoginIdentity{Subject: l.opts.RP.Issuer() + " " + id.Subject, DisplayName: id.Name}); err != nil {
		if errors.Is(err, coordinator.ErrConflict) {
			l.coord.RecordAudit(ctx, "oidc:"+name, "oidc.refused", name, "sub="+id.Subject+" is not the account this user first signed in with")
			return fmt.Errorf("%s is bound to another account at the sign-in provider; ask an admin", name)
		}
		return errors.New("could not record the sign-in; try again")
	}
	if err := l.coord.SetUserGroups(ctx, name, l.policyGroups(id.Groups)); err != nil {
		return errors.New("could not record the user's groups; try again")
	}
	return nil
}

func (l *Login) signInAdmin(w http.ResponseWriter, r *http.Request, id *oidcauth.Identity, next string) {
	if l.opts.AdminSignIn == nil || !l.opts.Admins.Permits(id) {
		who := id.Email
		if who == "" {
			who = id.Subject
		}
		l.coord.RecordAudit(r.Context(), "oidc:"+who, "console.login_failed", who, "not an admin")
		render(w, http.StatusForbidden, pageData{Title: "Not an admin", Lines: []string{who + " is not an admin of this coordinator."}})
		return
	}
	name, err := UserName(id)
	if err != nil {
		render(w, http.StatusForbidden, pageData{Title: "Not allowed", Lines: []string{err.Error() + "."}})
		return
	}
	l.opts.AdminSignIn(w, r, name, "oidc", next)
}
