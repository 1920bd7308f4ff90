// Package console is the coordinator's web console: a small,
// server-rendered admin UI (html/template, no JavaScript) for nodes,
// routes, pending approvals, users, auth keys, the policy and the audit
// log. It runs the coordinator's own admin operations and records each
// action in the audit log as the admin API does, with the actor
// "console:NAME".
//
// Signing in: a person signs in with a one-time link that beam admin
// console prints (signinlink.go), or with the admin token (a login form).
// A sign-in through an identity provider (OIDC) plugs in at
// Console.signIn: its callback handler verifies the provider's answer and
// starts a session for the user's Identity; nothing else changes.
//
// Sessions live in memory on the server (the sign-in form has none: its
// CSRF token is signed, loginform.go); a session signed in with the admin
// token ends when the token is rotated. The browser holds a random ID in
// a cookie that is HttpOnly, SameSite=Strict, Secure (with the __Host-
// prefix) over TLS, and bounded in lifetime (idle and absolute). Every
// state-changing request is a POST that must come from the console's own
// origin (Sec-Fetch-Site, Origin) and carry the session's CSRF token.
// Sign-in attempts are rate-limited per source address, and over plain
// HTTP they are accepted only from loopback (an SSH tunnel). No lasting
// secret ever appears in a URL: the token goes in a form body, a new auth
// key is shown once in the response to the form that created it, and the
// code in a sign-in link works once, for a minute by default.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// Path is where the console is served; the caller routes it there
// (mux.Handle(console.Path, c)).
const Path = "/console/"

// Defaults of Options.
const (
	DefaultSessionIdle     = 30 * time.Minute
	DefaultSessionLifetime = 12 * time.Hour
)

// Options configures a Console.
type Options struct {
	// Coordinator is the coordinator the console administers. Required.
	Coordinator *coordinator.Server
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// SessionIdle ends a session after this long without a request;
	// zero means DefaultSessionIdle.
	SessionIdle time.Duration
	// SessionLifetime ends a session this long after sign-in; zero means
	// DefaultSessionLifetime.
	SessionLifetime time.Duration
	// LoginBurst and LoginInterval limit sign-in attempts per source
	// address: LoginBurst at once, then one per LoginInterval. Zero means
	// 5 and 12 seconds.
	LoginBurst    int
	LoginInterval time.Duration
	// SSOURL, if set, is where the sign-in page's "Sign in with your
	// identity provider" link goes (with ?next=); its callback ends in
	// SignInWith. Empty shows the admin-token form only.
	SSOURL string
	// AdminAuth, if set, admits a request for a sign-in link
	// (SignInLinkPath) whose bearer token is not the admin token, as
	// coordinator.Options.AdminAuth does for the admin API (an admin's
	// OIDC ID token); the link then signs in who. Nil admits the admin
	// token only.
	AdminAuth func(r *http.Request) (who string, ok bool)
}

// Console is the web console, an http.Handler for the paths under Path.
// It keeps its sessions and sign-in limits in memory and starts no
// goroutines.
type Console struct {
	coord    *coordinator.Server
	logger   *slog.Logger
	now      func() time.Time
	sessions *sessionStore
	forms    *loginForms // the sign-in form's CSRF tokens
	limiter  *loginLimiter
	links    *signInLinks                                // one-time sign-in links (signinlink.go)
	ssoURL   string                                      // Options.SSOURL
	auth     func(r *http.Request) (who string, ok bool) // Options.AdminAuth; nil: none
	xorigin  *http.CrossOriginProtection
	mux      *http.ServeMux
	pages    map[string]*template.Template
}

// Bounds on the memory a console uses.
const (
	maxSessions     = 1024
	maxLoginSources = 4096
	maxFormBytes    = 1 << 20
)

//go:embed templates static
var files embed.FS

// New returns a Console for opts.Coordinator.
func New(opts Options) (*Console, error) {
	if opts.Coordinator == nil {
		return nil, errors.New("console: Options.Coordinator is required")
	}
	c := &Console{coord: opts.Coordinator, logger: opts.Logger, now: opts.Now, ssoURL: opts.SSOURL, auth: opts.AdminAuth}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	c.logger = c.logger.With("component", "console")
	if c.now == nil {
		c.now = time.Now
	}
	idle, life := opts.SessionIdle, opts.SessionLifetime
	if idle <= 0 {
		idle = DefaultSessionIdle
	}
	if life <= 0 {
		life = DefaultSessionLifetime
	}
	burst, every := opts.LoginBurst, opts.LoginInterval
	if burst <= 0 {
		burst = 5
	}
	if every <= 0 {
		every = 12 * time.Second
	}
	c.sessions = newSessionStore(c.now, idle, life, maxSessions)
	c.sessions.tokenFP = opts.Coordinator.AdminTokenFingerprint
	c.forms = newLoginForms(c.now, c.sessions.formLifetime)
	c.limiter = newLoginLimiter(c.now, burst, every, maxLoginSources)
	c.links = newSignInLinks(c.now)
	c.xorigin = http.NewCrossOriginProtection()
	pages, err := parsePages(c.funcs())
	if err != nil {
		return nil, err
	}
	c.pages = pages
	c.mux = c.routes()
	return c, nil
}

// Approver sends a person who opens a node's approval URL
// (/register/CODE) to the console's page for that node, through the
// sign-in form if needed. Give it to coordinator.Options.Approver.
type Approver struct{}

var _ coordinator.Approver = Approver{}

// ServeApproval implements coordinator.Approver.
func (Approver) ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration) {
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, Path+"approve/"+url.PathEscape(p.Code), http.StatusSeeOther)
}

func (c *Console) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path+"static/", http.StripPrefix(Path, http.FileServerFS(files)))
	mux.HandleFunc("GET "+Path+"login", c.handleLoginForm)
	mux.HandleFunc("POST "+Path+"login", c.handleLogin)
	mux.HandleFunc("POST "+Path+"logout", c.post(c.handleLogout))
	mux.HandleFunc("POST "+SignInLinkPath, c.handleSignInLink)
	mux.HandleFunc("GET "+Path+"signin/{code}", c.handleSignInWithLink)
	mux.HandleFunc("GET "+Path+"{$}", c.get(func(w http.ResponseWriter, r *http.Request, ss *session) {
		http.Redirect(w, r, Path+"nodes", http.StatusSeeOther)
	}))
	mux.HandleFunc("GET "+Path+"nodes", c.get(c.handleNodes))
	mux.HandleFunc("GET "+Path+"pending", c.get(c.handlePending))
	mux.HandleFunc("GET "+Path+"approve/{code}", c.get(c.handleApproveForm))
	mux.HandleFunc("POST "+Path+"approve/{code}", c.post(c.handleApprove))
	mux.HandleFunc("GET "+Path+"routes", c.get(c.handleRoutes))
	mux.HandleFunc("GET "+Path+"users", c.get(c.handleUsers))
	mux.HandleFunc("POST "+Path+"users", c.post(c.handleCreateUser))
	mux.HandleFunc("POST "+Path+"users/{name}/delete", c.post(c.handleDeleteUser))
	mux.HandleFunc("GET "+Path+"keys", c.get(c.handleKeys))
	mux.HandleFunc("POST "+Path+"keys", c.post(c.handleCreateKey))
	mux.HandleFunc("POST "+Path+"keys/{prefix}/revoke", c.post(c.handleRevokeKey))
	mux.HandleFunc("GET "+Path+"policy", c.get(c.handlePolicy))
	mux.HandleFunc("POST "+Path+"policy", c.post(c.handleSetPolicy))
	mux.HandleFunc("GET "+Path+"audit", c.get(c.handleAudit))
	return mux
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// get wraps a page that needs a signed-in session; without one the
// browser goes to the sign-in form, which brings it back here.
func (c *Console) get(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := c.sessions.fromRequest(r)
		if ss == nil || !ss.who.signedIn() {
			http.Redirect(w, r, Path+"login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
			return
		}
		h(w, r, ss)
	}
}

// post wraps a state-changing request: it must come from the console's
// own origin, from a signed-in session, with that session's CSRF token.
func (c *Console) post(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss, ok := c.checkForm(w, r)
		if !ok {
			return
		}
		if !ss.who.signedIn() {
			c.refuse(w, r, http.StatusForbidden, "You are not signed in.")
			return
		}
		h(w, r, ss)
	}
}

// checkForm checks a POST: same origin, a live session, its CSRF token.
// It answers the request itself and reports false if any check fails.
func (c *Console) checkForm(w http.ResponseWriter, r *http.Request) (*session, bool) {
	if err := c.xorigin.Check(r); err != nil {
		c.logger.Warn("cross-origin request refused", "path", r.URL.Path, "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		c.refuse(w, r, http.StatusForbidden, "Cross-origin request refused.")
		return nil, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		c.refuse(w, r, http.StatusBadRequest, "Malformed form.")
		return nil, false
	}
	ss := c.sessions.fromRequest(r)
	if ss == nil {
		c.refuse(w, r, http.StatusForbidden, "Your session ended; sign in again.")
		return nil, false
	}
	if !ss.csrfValid(r.PostForm.Get("csrf")) {
		c.logger.Warn("form without a valid CSRF token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
		c.refuse(w, r, http.StatusForbidden, "Form refused: its CSRF token is missing or wrong. Reload the page and try again.")
		return nil, false
	}
	return ss, true
}

// refuse answers a refused request with a short page.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.render(w, r, status, "refused", nil, pageData{Title: "Refused", Error: msg})
}

// redirectFlash leaves msg for the next page of ss and sends the browser
// to path (after a POST: the browser then GETs it).
func (c *Console) redirectFlash(w http.ResponseWriter, r *http.Request, ss *session, path, msg string, isErr bool) {
	c.sessions.setFlash(ss, msg, isErr)
	http.Redirect(w, r, path, http.StatusSeeOther)
}

// actor is the audit actor of ss's person.
func actor(ss *session) string { return coordinator.ActorConsole(ss.who.Name) }

// remoteAddr is the address r came from; the zero Addr if unknown.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// safeNext returns next if it is a console page to go back to after
// sign-in, else the nodes page: never another site, never a path that
// a browser reads as one (//host, /\host).
func safeNext(next string) string {
	if !strings.HasPrefix(next, Path) || strings.ContainsAny(next, "\\?#") || strings.Contains(next, "//") || strings.HasPrefix(next, Path+"log") || strings.HasPrefix(next, Path+"signin") {
		return Path + "nodes"
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return Path + "nodes"
	}
	return next
}

// signIn starts a session for who, ending the session old (any the
// browser had) so that an ID cannot be fixed in advance, and sends the
// browser to next. token, if not nil, is the fingerprint of the admin
// token who signed in with: the session ends when it is rotated.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request, old *session, who Identity, token *[32]byte, next string) {
	if old != nil {
		c.sessions.remove(old)
	}
	_, value := c.sessions.create(who, token)
	http.SetCookie(w, sessionCookie(r, value, c.sessions.lifetime))
	setLoginCookie(w, r, "", 0)
	c.coord.RecordAudit(r.Context(), coordinator.ActorConsole(who.Name), "console.login", who.Name, "via "+who.Method+" from "+remoteAddr(r).String())
	c.logger.Info("signed in", "who", who.Name, "method", who.Method, "remote", r.RemoteAddr)
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// parsePages parses each page template with the layout.
func parsePages(funcs template.FuncMap) (map[string]*template.Template, error) {
	names, err := fs.Glob(files, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: list templates: %w", err)
	}
	pages := make(map[string]*template.Template)
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(files, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: parse %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// pageData is what every page template gets.
type pageData struct {
	Title string
	// Nav is the current section, for the menu.
	Nav string
	// Who is the signed-in person; zero on the sign-in form.
	Who Identity
	// CSRF is the session's CSRF token, for forms.
	CSRF string
	// Flash is a message from the previous request; Error one about
	// this request's failure.
	Flash    string
	FlashErr bool
	Error    string
	// Pending counts the nodes waiting for approval (the menu shows it).
	Pending int
	// Data is the page's own.
	Data any
}

// render executes page with d, filled in from ss if it is not nil.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page string, ss *session, d pageData) {
	t := c.pages[page]
	if t == nil {
		http.Error(w, "console: no page "+page, http.StatusInternalServerError)
		return
	}
	if ss != nil {
		d.Who, d.CSRF = ss.who, ss.csrf
		if ss.who.signedIn() {
			d.Flash, d.FlashErr = c.sessions.takeFlash(ss)
			d.Pending = len(c.coord.PendingRegistrations())
		}
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "layout", d); err != nil {
		c.logger.Error("render page", "page", page, "err", err)
		http.Error(w, "console: page failed to render", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprint(w, b.String())
}

func (c *Console) funcs() template.FuncMap {
	return template.FuncMap{
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return roughDuration(c.now().Sub(t)) + " ago"
		},
		"until": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			d := t.Sub(c.now())
			if d <= 0 {
				return "expired"
			}
			return "in " + roughDuration(d)
		},
		"when": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"join": strings.Join,
		"path": func() string { return Path },
	}
}

// roughDuration prints d to the largest whole unit: 5s, 3m, 2h, 4d.
func roughDuration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// background is a context for work that must finish even if the browser
// goes away mid-request (an approval, a key created).
func background(r *http.Request) context.Context { return context.WithoutCancel(r.Context()) }
