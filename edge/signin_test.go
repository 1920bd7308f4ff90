package edge

import (
	"io"
	"net/http"
	"testing"
)

// fakeSignIn admits requests carrying "Authorization: let-me-in" as alice
// and answers 401 itself otherwise, recording the rules it was given.
type fakeSignIn struct{ rules chan []string }

func (f fakeSignIn) Authenticate(w http.ResponseWriter, r *http.Request, rules []string) (Identity, bool) {
	f.rules <- rules
	if r.Header.Get("Authorization") != "let-me-in" {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return Identity{}, false
	}
	return Identity{User: "alice", Email: "alice@example.com"}, true
}

func TestSignIn(t *testing.T) {
	ov := newOverlay()
	fs := fakeSignIn{rules: make(chan []string, 8)}
	e := newTestEdge(t, ov, Options{SignIn: fs})
	seen := make(chan [2]string, 8)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- [2]string{r.Header.Get(SignInUserHeader), r.Header.Get(SignInEmailHeader)}
		io.WriteString(w, "ok")
	}))
	guarded := httpRoute("guarded", a)
	guarded.Policy.SignIn = []string{"group:eng"}
	setRoutes(t, e, guarded, httpRoute("open", a))
	c := clientTo(serveHTTP(t, e))

	tests := []struct {
		name, host, auth string
		wantCode         int
		want             [2]string
	}{
		{"signed in: the edge names the person", "guarded", "let-me-in", 200, [2]string{"alice", "alice@example.com"}},
		{"not signed in: never reaches the app", "guarded", "", 401, [2]string{}},
		{"open route: forged headers stripped", "open", "", 200, [2]string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, _ := get(t, c, "http://"+tt.host+"."+testDomain+"/", "Authorization", tt.auth,
				SignInUserHeader, "mallory", SignInEmailHeader, "mallory@evil.test")
			if code != tt.wantCode {
				t.Fatalf("status %d, want %d", code, tt.wantCode)
			}
			if tt.wantCode != 200 {
				return
			}
			if got := <-seen; got != tt.want {
				t.Errorf("app saw %q, want %q", got, tt.want)
			}
		})
	}
	if got := <-fs.rules; len(got) != 1 || got[0] != "group:eng" {
		t.Errorf("SignIn got rules %q, want [group:eng]", got)
	}
	select {
	case s := <-seen:
		t.Errorf("the app saw a request it should not have: %q", s)
	default:
	}

	// An edge without a SignIn refuses the route rather than serve it open.
	e2 := newTestEdge(t, ov, Options{})
	setRoutes(t, e2, guarded)
	if code, _, _ := get(t, clientTo(serveHTTP(t, e2)), "http://guarded."+testDomain+"/", "Authorization", "let-me-in"); code != http.StatusServiceUnavailable {
		t.Errorf("edge without SignIn: status %d, want 503", code)
	}
}
