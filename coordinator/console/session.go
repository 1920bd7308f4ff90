package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Identity is who a console session belongs to.
type Identity struct {
	// Name names the person: "admin" for the admin token. A sign-in
	// through an identity provider (OIDC) would put the user's name here.
	Name string
	// Method says how they signed in: "admin token".
	Method string
}

// signedIn reports whether id names someone (sessions of the login form
// carry the zero Identity).
func (id Identity) signedIn() bool { return id.Name != "" }

// session is one browser's state on the server. The cookie holds a random
// 32-byte ID; the store keeps only its SHA-256, so the IDs of live
// sessions are nowhere on the server.
type session struct {
	// id is the SHA-256 of the cookie value.
	id [sha256.Size]byte
	// csrf is the token every form of the session carries.
	csrf string
	// who is the signed-in person; zero for the session of a login form.
	who Identity
	// tokenBound says the session was signed in with the admin token
	// whose fingerprint (coordinator.Server.AdminTokenFingerprint) is
	// token: it ends once another token is in force.
	tokenBound bool
	token      [sha256.Size]byte
	created    time.Time
	lastUsed   time.Time

	// flash is a message for the next page the session shows, flashErr
	// whether it reports a failure. Guarded by sessionStore.mu.
	flash    string
	flashErr bool
}

// sessionStore holds the console's sessions in memory: a restart signs
// everyone out. It bounds their number: when full it drops expired
// sessions, then the oldest login-form session, then the oldest of all.
type sessionStore struct {
	now func() time.Time
	// idle and lifetime bound a signed-in session: it ends after idle
	// without a request, and lifetime after sign-in whatever happens.
	idle, lifetime time.Duration
	// formLifetime bounds a login-form session.
	formLifetime time.Duration
	max          int
	// tokenFP returns the fingerprint of the admin token in force, which
	// token-bound sessions must match; nil ends none.
	tokenFP func() [sha256.Size]byte

	mu   sync.Mutex // guards the following fields
	byID map[[sha256.Size]byte]*session
}

func newSessionStore(now func() time.Time, idle, lifetime time.Duration, max int) *sessionStore {
	return &sessionStore{
		now: now, idle: idle, lifetime: lifetime, formLifetime: min(15*time.Minute, lifetime), max: max,
		byID: make(map[[sha256.Size]byte]*session),
	}
}

// randomToken returns 32 random bytes, base64url-encoded.
func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// expiredLocked reports whether ss ended at now. sessionStore.mu held.
func (st *sessionStore) expiredLocked(ss *session, now time.Time) bool {
	if !ss.who.signedIn() {
		return now.Sub(ss.created) >= st.formLifetime
	}
	return now.Sub(ss.created) >= st.lifetime || now.Sub(ss.lastUsed) >= st.idle
}

// create starts a session for who and returns it with the cookie value.
// If token is not nil, who signed in with the admin token whose
// fingerprint it is, and the session ends when that token is replaced.
func (st *sessionStore) create(who Identity, token *[sha256.Size]byte) (*session, string) {
	value := randomToken()
	now := st.now()
	ss := &session{id: sha256.Sum256([]byte(value)), csrf: randomToken(), who: who, created: now, lastUsed: now}
	if token != nil {
		ss.tokenBound, ss.token = true, *token
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.byID) >= st.max {
		st.makeRoomLocked(now)
	}
	st.byID[ss.id] = ss
	return ss, value
}

// makeRoomLocked drops sessions until one more fits. sessionStore.mu held.
func (st *sessionStore) makeRoomLocked(now time.Time) {
	for id, ss := range st.byID {
		if st.expiredLocked(ss, now) {
			delete(st.byID, id)
		}
	}
	for len(st.byID) >= st.max {
		var oldest *session
		for _, ss := range st.byID {
			switch {
			case oldest == nil,
				oldest.who.signedIn() && !ss.who.signedIn(),
				oldest.who.signedIn() == ss.who.signedIn() && ss.created.Before(oldest.created):
				oldest = ss
			}
		}
		delete(st.byID, oldest.id)
	}
}

// lookup returns the live session whose cookie value is value, marking it
// used; nil if there is none.
func (st *sessionStore) lookup(value string) *session {
	if value == "" {
		return nil
	}
	id := sha256.Sum256([]byte(value))
	now := st.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	ss := st.byID[id]
	if ss == nil {
		return nil
	}
	if st.expiredLocked(ss, now) || ss.tokenBound && st.tokenFP != nil && st.tokenFP() != ss.token {
		// Expired, or signed in with an admin token since rotated.
		delete(st.byID, id)
		return nil
	}
	ss.lastUsed = now
	return ss
}

// remove ends ss.
func (st *sessionStore) remove(ss *session) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.byID, ss.id)
}

// setFlash leaves msg for the next page ss shows.
func (st *sessionStore) setFlash(ss *session, msg string, isErr bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	ss.flash, ss.flashErr = msg, isErr
}

// takeFlash returns and clears the message left for ss.
func (st *sessionStore) takeFlash(ss *session) (string, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	msg, isErr := ss.flash, ss.flashErr
	ss.flash, ss.flashErr = "", false
	return msg, isErr
}

// csrfValid reports whether token is ss's CSRF token.
func (ss *session) csrfValid(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(ss.csrf)) == 1
}

// Cookie names. Over TLS the cookie carries the __Host- prefix, which
// browsers accept only with Secure, Path=/ and no Domain, so no other
// host or plain-HTTP page can set or shadow it.
const (
	cookieName       = "beam_console"
	secureCookieName = "__Host-beam_console"
)

// isTLS reports whether the browser reached the console over TLS: on
// this connection, or through a TLS-terminating proxy that says so.
func isTLS(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func sessionCookieName(r *http.Request) string {
	if isTLS(r) {
		return secureCookieName
	}
	return cookieName
}

// sessionCookie returns the cookie that carries value for the session's
// remaining lifetime (maxAge), or one that deletes the cookie if value
// is empty.
func sessionCookie(r *http.Request, value string, maxAge time.Duration) *http.Cookie {
	return strictCookie(sessionCookieName(r), r, value, maxAge)
}

// strictCookie returns the console's cookie name with value for maxAge:
// HttpOnly, SameSite=Strict, Secure over TLS; one that deletes it if
// value is empty.
func strictCookie(name string, r *http.Request, value string, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/",
		HttpOnly: true,
		Secure:   isTLS(r),
		SameSite: http.SameSiteStrictMode,
		MaxAge:   int(maxAge / time.Second),
	}
	if value == "" {
		c.MaxAge = -1
	}
	return c
}

// fromRequest returns r's live session, or nil.
func (st *sessionStore) fromRequest(r *http.Request) *session {
	c, err := r.Cookie(sessionCookieName(r))
	if err != nil {
		return nil
	}
	return st.lookup(c.Value)
}
