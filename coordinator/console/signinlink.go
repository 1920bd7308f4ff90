package console

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"beam.dev/beam/coordinator"
)

// One-time sign-in links spare a person the admin token in a web form,
// and with it the question whether the page asking for it is the
// console: beam admin console, which checks that the server holds the
// coordinator's machine key before it sends the token anywhere, asks
// for a link and prints it.
//
//   - POST SignInLinkPath with "Authorization: Bearer ADMIN-TOKEN" (or
//     a bearer token Options.AdminAuth admits), and optionally a
//     SignInLinkRequest body, answers a SignInLink: the path
//     Path+"signin/CODE", CODE being 32 random bytes in base64url. The
//     console keeps only the code's SHA-256, its expiry, and who asked:
//     the fingerprint of the admin token in force, or the name
//     AdminAuth gave.
//   - GET Path+"signin/CODE" takes the code out of the store whatever
//     happens next, so a link works once. If it had not expired (and,
//     for the admin token, the token was not rotated since), the browser
//     gets the session a sign-in with the admin token (bound to that
//     token) or through the identity provider would give, over TLS or
//     from loopback only, like those sign-ins.
//
// Codes live in memory: a restart, or a coordinator stopping and another
// server taking its port, leaves whoever holds a link with nothing that
// signs in anywhere.

// SignInLinkPath is where beam admin console asks for a one-time sign-in
// link: POST with the admin bearer token, answered with a SignInLink.
const SignInLinkPath = Path + "signin-link"

// Lifetimes of a sign-in link.
const (
	DefaultSignInLinkTTL = 60 * time.Second
	MaxSignInLinkTTL     = 10 * time.Minute
)

// SignInLinkRequest is the optional JSON body of POST SignInLinkPath.
type SignInLinkRequest struct {
	// TTLSeconds is how long the link works, in seconds: zero means
	// DefaultSignInLinkTTL, and more than MaxSignInLinkTTL is cut to it.
	TTLSeconds int `json:"ttl_seconds,omitempty"`
}

// SignInLink is the answer to POST SignInLinkPath.
type SignInLink struct {
	// Path is the link's path, Path+"signin/CODE": the caller appends it
	// to the URL it reached the coordinator at.
	Path string `json:"path"`
	// Expires is when the link stops working, if it was not used before.
	Expires time.Time `json:"expires"`
}

// maxSignInLinks bounds the links waiting to be used; past it, a new one
// replaces the one that expires first.
const maxSignInLinks = 64

// signInLinks holds the codes of unused sign-in links.
type signInLinks struct {
	now func() time.Time

	mu     sync.Mutex // guards byCode
	byCode map[[sha256.Size]byte]linkEntry
}

type linkEntry struct {
	expires time.Time
	// who signs in; for the admin token, tokenBound is set and token is
	// the fingerprint of the admin token that asked.
	who        Identity
	tokenBound bool
	token      [sha256.Size]byte
}

func newSignInLinks(now func() time.Time) *signInLinks {
	return &signInLinks{now: now, byCode: make(map[[sha256.Size]byte]linkEntry)}
}

// create returns a new code for e valid for ttl, and its expiry.
func (sl *signInLinks) create(ttl time.Duration, e linkEntry) (string, time.Time) {
	code := randomToken()
	now := sl.now()
	e.expires = now.Add(ttl)
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for h, e := range sl.byCode {
		if !now.Before(e.expires) {
			delete(sl.byCode, h)
		}
	}
	if len(sl.byCode) >= maxSignInLinks {
		var first [sha256.Size]byte
		var firstExp time.Time
		for h, e := range sl.byCode {
			if firstExp.IsZero() || e.expires.Before(firstExp) {
				first, firstExp = h, e.expires
			}
		}
		delete(sl.byCode, first)
	}
	sl.byCode[sha256.Sum256([]byte(code))] = e
	return code, e.expires
}

// Why take refuses a code.
var (
	errLinkUnknown = errors.New("unknown or used")
	errLinkExpired = errors.New("expired")
)

// take removes code and returns what it was made for; it fails if there
// was no such code or it had expired.
func (sl *signInLinks) take(code string) (linkEntry, error) {
	h := sha256.Sum256([]byte(code))
	now := sl.now()
	sl.mu.Lock()
	e, ok := sl.byCode[h]
	delete(sl.byCode, h)
	sl.mu.Unlock()
	switch {
	case !ok:
		return linkEntry{}, errLinkUnknown
	case !now.Before(e.expires):
		return linkEntry{}, errLinkExpired
	}
	return e, nil
}

// handleSignInLink answers POST SignInLinkPath.
func (c *Console) handleSignInLink(w http.ResponseWriter, r *http.Request) {
	// Every request counts against the sign-in attempts of its source,
	// so the token cannot be guessed here faster than in the form.
	if ok, _ := c.limiter.allow(remoteAddr(r)); !ok {
		http.Error(w, "console: too many sign-in attempts from your address; try again later", http.StatusTooManyRequests)
		return
	}
	fp := c.coord.AdminTokenFingerprint() // as in handleLogin
	e, actor, ok := c.linkAsker(r, fp)
	if !ok {
		c.coord.RecordAudit(r.Context(), coordinator.ActorConsole("?"), "console.link_failed", "admin", "wrong admin token from "+remoteAddr(r).String())
		c.logger.Warn("sign-in link asked for with a wrong admin token", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="beam"`)
		http.Error(w, "console: missing or wrong admin token", http.StatusUnauthorized)
		return
	}
	var req SignInLinkRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) || req.TTLSeconds < 0 {
		http.Error(w, "console: malformed request body", http.StatusBadRequest)
		return
	}
	ttl := DefaultSignInLinkTTL
	if req.TTLSeconds > 0 {
		ttl = time.Duration(min(req.TTLSeconds, int(MaxSignInLinkTTL/time.Second))) * time.Second
	}
	code, exp := c.links.create(ttl, e)
	c.coord.RecordAudit(r.Context(), actor, "console.link", e.who.Name, "one-time sign-in link valid for "+ttl.String()+", asked from "+remoteAddr(r).String())
	c.logger.Info("made a one-time sign-in link", "ttl", ttl, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(SignInLink{Path: Path + "signin/" + code, Expires: exp.UTC()})
}

// linkAsker returns the link r asks for, made with the admin token whose
// fingerprint is fp or for whom Options.AdminAuth admits, and the audit
// actor; ok is false if r carries neither.
func (c *Console) linkAsker(r *http.Request, fp [sha256.Size]byte) (e linkEntry, actor string, ok bool) {
	const prefix = "Bearer "
	auth := r.Header.Get("Authorization")
	if len(auth) > len(prefix) && auth[:len(prefix)] == prefix && c.coord.AdminTokenValid(auth[len(prefix):]) {
		return linkEntry{who: Identity{Name: "admin", Method: "sign-in link"}, tokenBound: true, token: fp}, "admin", true
	}
	if c.auth != nil && auth != "" {
		if who, ok := c.auth(r); ok && who != "" {
			return linkEntry{who: Identity{Name: who, Method: "sign-in link"}}, "admin:" + who, true
		}
	}
	return linkEntry{}, "", false
}

// handleSignInWithLink answers GET Path+"signin/CODE".
func (c *Console) handleSignInWithLink(w http.ResponseWriter, r *http.Request) {
	e, err := c.links.take(r.PathValue("code"))
	if err != nil {
		c.coord.RecordAudit(r.Context(), coordinator.ActorConsole("?"), "console.login_failed", "admin", "sign-in link "+err.Error()+", from "+remoteAddr(r).String())
		c.logger.Warn("sign-in link refused", "why", err.Error(), "remote", r.RemoteAddr)
		c.refuse(w, r, http.StatusForbidden, "This sign-in link does not work: it was used already, it expired, or the coordinator restarted since it was made. Run beam admin console again for a new one.")
		return
	}
	if !isTLS(r) && !remoteAddr(r).IsLoopback() {
		// The link is spent: it crossed the network in clear text.
		c.refuse(w, r, http.StatusForbidden, "Sign-in over plain HTTP works only from the coordinator's own machine. Use HTTPS (a TLS proxy in front of the coordinator), or an SSH tunnel.")
		return
	}
	if e.tokenBound && e.token != c.coord.AdminTokenFingerprint() {
		c.refuse(w, r, http.StatusForbidden, "This sign-in link was made with an admin token that has been replaced since. Run beam admin console again.")
		return
	}
	who := e.who
	if old := c.sessions.fromRequest(r); old != nil {
		c.sessions.remove(old)
	}
	var token *[sha256.Size]byte
	if e.tokenBound {
		token = &e.token
	}
	_, value := c.sessions.create(who, token)
	http.SetCookie(w, sessionCookie(r, value, c.sessions.lifetime))
	setLoginCookie(w, r, "", 0)
	c.coord.RecordAudit(r.Context(), coordinator.ActorConsole(who.Name), "console.login", who.Name, "via "+who.Method+" from "+remoteAddr(r).String())
	c.logger.Info("signed in", "who", who.Name, "method", who.Method, "remote", r.RemoteAddr)
	// A page that moves on by itself rather than a redirect: the link
	// may have been opened from another site (a chat, a mail), and the
	// SameSite=Strict cookie would not go with a redirect from there.
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	ssoDone().Execute(w, Path+"nodes")
}
