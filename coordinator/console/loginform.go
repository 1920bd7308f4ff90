package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"time"
)

// The sign-in form keeps nothing on the server, so that anyone may load
// it any number of times: its CSRF token is signed, not stored. Loading
// the form sets a pre-login cookie holding 32 random bytes (kept if the
// browser already has one), and the form carries
//
//	base64url(8B big-endian expiry, Unix seconds | HMAC-SHA256(key, loginMACLabel | cookie | expiry))
//
// with key the console's own random key. A sign-in is taken only with the
// cookie and an unexpired token made for it: a page on another site can
// neither read the token nor set the cookie (HttpOnly, SameSite=Strict,
// __Host- over TLS), and a token is worth nothing without its cookie.
// A console restart makes open forms stale, as it ends sessions.

// loginMACLabel separates the form's MACs from any other use of the key.
const loginMACLabel = "beam console login form\x00"

// Cookie names of the pre-login cookie, as the session cookie's.
const (
	loginCookieName       = "beam_console_login"
	secureLoginCookieName = "__Host-beam_console_login"
)

// loginForms makes and checks the sign-in form's CSRF tokens.
type loginForms struct {
	key      [32]byte
	now      func() time.Time
	lifetime time.Duration // of a form
}

func newLoginForms(now func() time.Time, lifetime time.Duration) *loginForms {
	lf := &loginForms{now: now, lifetime: lifetime}
	rand.Read(lf.key[:])
	return lf
}

func (lf *loginForms) mac(cookie string, expiry uint64) []byte {
	m := hmac.New(sha256.New, lf.key[:])
	m.Write([]byte(loginMACLabel))
	m.Write([]byte(cookie))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], expiry)
	m.Write(b[:])
	return m.Sum(nil)
}

// token returns a form token for the pre-login cookie value cookie,
// valid for lf.lifetime.
func (lf *loginForms) token(cookie string) string {
	expiry := uint64(lf.now().Add(lf.lifetime).Unix())
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 8+sha256.Size), expiry)
	return base64.RawURLEncoding.EncodeToString(append(b, lf.mac(cookie, expiry)...))
}

// valid reports whether token is an unexpired form token made for
// cookie.
func (lf *loginForms) valid(cookie, token string) bool {
	if cookie == "" || token == "" {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != 8+sha256.Size {
		return false
	}
	expiry := binary.BigEndian.Uint64(b[:8])
	if int64(expiry) <= lf.now().Unix() {
		return false
	}
	return hmac.Equal(b[8:], lf.mac(cookie, expiry))
}

func loginCookieNameFor(r *http.Request) string {
	if isTLS(r) {
		return secureLoginCookieName
	}
	return loginCookieName
}

// loginCookie returns r's pre-login cookie value, "" if none.
func loginCookie(r *http.Request) string {
	c, err := r.Cookie(loginCookieNameFor(r))
	if err != nil || len(c.Value) > 64 {
		return ""
	}
	return c.Value
}

// setLoginCookie sets the pre-login cookie to value for maxAge, or
// deletes it if value is empty.
func setLoginCookie(w http.ResponseWriter, r *http.Request, value string, maxAge time.Duration) {
	http.SetCookie(w, strictCookie(loginCookieNameFor(r), r, value, maxAge))
}
