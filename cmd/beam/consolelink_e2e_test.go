package main

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// signInLinkRE matches the line beam admin console prints for the
// coordinator at url.
func signInLinkRE(url string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(url) + `/console/signin/[A-Za-z0-9_-]{43}$`)
}

// consoleLink runs beam admin console with args as the coordinator's
// user finds it (discovery file, its token file) and returns the link.
func (c *cluster) consoleLink(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := c.beam([]string{"BEAM_ADMIN_TOKEN=", "XDG_RUNTIME_DIR=" + c.dir}, append([]string{"admin", "console"}, args...)...)
	link := strings.TrimSpace(out)
	if err != nil || !signInLinkRE(c.url).MatchString(link) {
		t.Fatalf("beam admin console %v: %v; printed %q, want one %s/console/signin/CODE line\n%s", args, err, out, c.url, errOut)
	}
	if !strings.Contains(errOut, "signs in to the web console once") {
		t.Errorf("beam admin console says %q on stderr, want it to say the link works once", errOut)
	}
	return link
}

// openWithoutCookies GETs link as a browser without a session would and
// returns the status and whether the answer started a console session.
func openWithoutCookies(t *testing.T, link string) (int, bool) {
	t.Helper()
	hc := &http.Client{Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(link)
	if err != nil {
		t.Fatalf("GET %s: %v", link, err)
	}
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == "beam_console" && ck.Value != "" {
			return resp.StatusCode, true
		}
	}
	return resp.StatusCode, false
}

// TestConsoleSignInLink: beam admin console prints a link that signs
// headless Chromium in to the console of the real coordinator; the link
// is refused once used, and one that was not used in time is refused
// too. The audit log records how the admin signed in.
func TestConsoleSignInLink(t *testing.T) {
	c := newCluster(t)
	link := c.consoleLink(t)
	ctx := consoleBrowser(t)
	browse(t, ctx, "open the sign-in link",
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.ID("nodes")),
	)
	if loc := read(t, ctx, "location", chromedp.Location()); loc != c.url+"/console/nodes" {
		t.Errorf("the sign-in link led to %q, want %s/console/nodes", loc, c.url)
	}
	if status, session := openWithoutCookies(t, link); status != http.StatusForbidden || session {
		t.Errorf("the link used a second time: status %d, session %v; want 403 and none", status, session)
	}
	// The first browser is still signed in; the spent link does not
	// sign it out or in again.
	browse(t, ctx, "nodes page after the link was spent",
		chromedp.Navigate(c.url+"/console/nodes"),
		chromedp.WaitVisible(chromedp.ID("nodes")),
	)

	late := c.consoleLink(t, "--expiry", "1s")
	<-time.After(2 * time.Second) // past the link's expiry
	if status, session := openWithoutCookies(t, late); status != http.StatusForbidden || session {
		t.Errorf("a link opened after its expiry: status %d, session %v; want 403 and none", status, session)
	}
	fresh := c.consoleLink(t)
	if status, session := openWithoutCookies(t, fresh); status != http.StatusOK || !session {
		t.Errorf("a fresh link: status %d, session %v; want 200 and a session", status, session)
	}

	audit := c.mustBeam("admin", "audit", "--coordinator", c.url)
	for _, want := range []string{"console.link", "via sign-in link", "console.login_failed"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %q:\n%s", want, audit)
		}
	}
	for _, l := range []string{link, late, fresh} {
		if code := l[strings.LastIndex(l, "/")+1:]; strings.Contains(audit, code) {
			t.Errorf("audit log shows a link's code %s:\n%s", code, audit)
		}
	}
}

// recorder is a server on a coordinator's old port: it records every
// request's method, path and Authorization header, and answers each with
// a sign-in form of its own.
type recorder struct {
	srv *http.Server
	mu  sync.Mutex
	got []string // guarded by mu
}

func startRecorder(t *testing.T, addr string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the coordinator's old port: %v", err)
	}
	rec := &recorder{}
	rec.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.got = append(rec.got, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, `<form method="post"><input name="token" type="password"></form>`)
	})}
	go rec.srv.Serve(ln)
	t.Cleanup(func() { rec.srv.Close() })
	return rec
}

func (rec *recorder) requests() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.got...)
}

// TestConsoleSignInLinkImpostor: whatever listens on the port of a
// coordinator that stopped gets nothing usable. A link printed while the
// coordinator ran and opened after it stopped reaches the impostor, but
// its code signs in nowhere, not even at the same coordinator started
// again on the same port. With the coordinator stopped cleanly beam admin
// console finds none; after a crash (the discovery files stay) it finds
// the impostor, which cannot prove the coordinator's machine key, and
// neither prints a link nor sends the admin token.
func TestConsoleSignInLinkImpostor(t *testing.T) {
	c := newCluster(t)
	env := []string{"BEAM_ADMIN_TOKEN=", "XDG_RUNTIME_DIR=" + c.dir}
	link := c.consoleLink(t)
	c.stopCoordinator()

	rec := startRecorder(t, c.addr)
	if status, session := openWithoutCookies(t, link); status != http.StatusOK || session {
		t.Fatalf("the link opened with the impostor on the port: status %d, session %v; want the impostor's page", status, session)
	}
	path := strings.TrimPrefix(link, c.url)
	if got := rec.requests(); len(got) != 1 || got[0] != "GET "+path+" auth=" {
		t.Fatalf("the impostor saw %q, want the link's GET", got)
	}
	out, errOut, err := c.beam(env, "admin", "console")
	if err == nil || strings.TrimSpace(out) != "" || !strings.Contains(errOut, "no coordinator found") {
		t.Errorf("beam admin console after a clean stop: %v, printed %q; want no link and no coordinator found\n%s", err, out, errOut)
	}
	if got := rec.requests(); len(got) != 1 {
		t.Errorf("beam admin console reached the impostor after a clean stop: %q", got)
	}
	rec.srv.Close()

	// What the impostor got does not sign in at the coordinator, back on
	// its port with the same data.
	c.startCoordinator()
	if status, session := openWithoutCookies(t, c.url+path); status != http.StatusForbidden || session {
		t.Errorf("the impostor's copy of the link at the restarted coordinator: status %d, session %v; want 403 and none", status, session)
	}

	// A crash leaves the discovery files, which lead beam admin console
	// to whatever took the port.
	c.coord.Process.Kill()
	c.coord.Wait()
	c.coord = nil
	rec = startRecorder(t, c.addr)
	out, errOut, err = c.beam(env, "admin", "console")
	if err == nil || strings.TrimSpace(out) != "" || !strings.Contains(errOut, "did not prove it holds machine key") {
		t.Errorf("beam admin console with an impostor on the port: %v, printed %q; want no link and the key proof failing\n%s", err, out, errOut)
	}
	for _, r := range rec.requests() {
		if !strings.HasPrefix(r, "GET /key/proof ") || !strings.HasSuffix(r, "auth=") {
			t.Errorf("the impostor got %q; want nothing but the key proof request, without a token", r)
		}
	}
	if len(rec.requests()) == 0 {
		t.Error("beam admin console did not ask the server on the port for the key proof")
	}
}
