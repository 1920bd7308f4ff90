package cli

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordinator/console"
)

func TestAskSignInLink(t *testing.T) {
	const code = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456"
	tests := []struct {
		name    string
		status  int
		body    string
		want    string // the link's path, or a part of the error
		wantErr bool
	}{
		{"link", 200, `{"path":"/console/signin/` + code + `","expires":"2026-01-02T03:04:05Z"}`, "/console/signin/" + code, false},
		{"wrong token", 401, "console: missing or wrong admin token", "refused the admin token", true},
		{"older coordinator", 404, "404 page not found", "makes no sign-in links", true},
		{"limited", 429, "too many", "too many sign-in attempts", true},
		{"other status", 500, "boom\nsecond line", "500 Internal Server Error: boom", true},
		{"not JSON", 200, "<html>", "answered the sign-in link request", true},
		{"path elsewhere", 200, `{"path":"/console/nodes"}`, "answered the sign-in link request", true},
		{"path with a query", 200, `{"path":"/console/signin/x?next=//evil.example"}`, "answered the sign-in link request", true},
		{"path with a host", 200, `{"path":"//evil.example/console/signin/x"}`, "answered the sign-in link request", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotAuth, gotBody string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != console.SignInLinkPath {
					http.NotFound(w, r)
					return
				}
				gotAuth = r.Header.Get("Authorization")
				b, _ := io.ReadAll(r.Body)
				gotBody = string(b)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			link, err := askSignInLink(t.Context(), srv.URL+"/", "tok", 90*time.Second)
			if gotAuth != "Bearer tok" || gotBody != `{"ttl_seconds":90}` {
				t.Errorf("request: Authorization %q, body %q; want Bearer tok and ttl_seconds 90", gotAuth, gotBody)
			}
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("got %q, %v; want an error saying %q", link, err, tt.want)
				}
				return
			}
			if err != nil || link != srv.URL+tt.want {
				t.Errorf("got %q, %v; want %s", link, err, srv.URL+tt.want)
			}
		})
	}
}

// TestAskSignInLinkFailover: of several coordinator URLs, the first that
// answers makes the link, and the link is on that URL.
func TestAskSignInLinkFailover(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"path":"/console/signin/abc"}`)
	}))
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	link, err := askSignInLink(t.Context(), down.URL+", "+srv.URL, "tok", time.Minute)
	if err != nil || link != srv.URL+"/console/signin/abc" {
		t.Errorf("got %q, %v; want the link on %s", link, err, srv.URL)
	}
	_, err = askSignInLink(t.Context(), down.URL, "tok", time.Minute)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the coordinator") {
		t.Errorf("none answering: got %v, want cannot reach the coordinator", err)
	}
}
