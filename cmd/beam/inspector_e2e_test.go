package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// into runs a and stores its value in dst, as a step of chromedp.Do.
func into[T any](dst *T, a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		v, err := a(ctx, t)
		*dst = v
		return chromedp.Void{}, err
	}
}

// pageState describes the browser's page for a failure message.
func pageState(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + (document.body ? document.body.innerText : "")`))
	if err != nil {
		return "(page state: " + err.Error() + ")"
	}
	return v
}

// waitPage waits until the JavaScript expression is true in the tab's
// page, across navigations (an evaluation that meets a page being
// replaced fails and is tried again), and returns the page's path.
func waitPage(t *testing.T, ctx context.Context, what, expr string) string {
	t.Helper()
	var path string
	waitFor(t, 15*time.Second, what, func() bool {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		v, err := chromedp.Run(actx, chromedp.Evaluate[string](`document.readyState === 'complete' && (`+expr+`) ? location.pathname : ''`))
		path = v
		return err == nil && v != ""
	})
	return path
}

// pageText returns the text of the element with id in a page that
// waitPage found ready.
func pageText(t *testing.T, ctx context.Context, id string) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('`+id+`').innerText`))
	if err != nil {
		t.Fatalf("read #%s: %v\npage: %s", id, err, pageState(ctx))
	}
	return v
}

// appRequest is what the test's app saw of one request.
type appRequest struct {
	method, path, edited, body string
}

// TestInspectorInBrowser drives the inspector of a real daemon in headless
// Chromium: a request made through the edge appears in the open list
// live, its detail shows the pretty-printed JSON body, Replay sends it to
// the app again and marks the new exchange, edit-and-replay sends the
// edited request, and a page on another origin that knows the session
// token still cannot make the inspector replay anything.
func TestInspectorInBrowser(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()

	got := make(chan appRequest, 16)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- appRequest{method: r.Method, path: r.URL.RequestURI(), edited: r.Header.Get("X-Edited"), body: string(b)}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"seen":%q,"n":1}`, r.URL.Path)
	})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(aln)
	t.Cleanup(func() { app.Close() })
	appPort := aln.Addr().(*net.TCPAddr).Port

	out, errOut, err := c.beam(nil, alpha.args("expose", strconv.Itoa(appPort), "--bg")...)
	if err != nil {
		t.Fatalf("beam expose: %v\n%s", err, errOut)
	}
	m := regexp.MustCompile(`inspect requests at ((http://127\.0\.0\.1:\d+)/\?token=(\S+))`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("beam expose did not print the inspector URL with its token; stderr:\n%s", errOut)
	}
	access, insp, tok := m[1], m[2], m[3]
	publicURL := strings.TrimSpace(out)
	host := strings.TrimPrefix(publicURL, "http://")

	bctx := consoleBrowser(t)
	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate(access), chromedp.WaitVisible(chromedp.CSS(`#empty`))); err != nil {
		t.Fatalf("open the inspector: %v\npage: %s", err, pageState(bctx))
	}
	// The pages are under a base path the access cookie is scoped to.
	base := waitPage(t, ctx, "the list", `!!document.getElementById('requests')`)
	if !strings.HasPrefix(base, "/s/") || !strings.HasSuffix(base, "/") {
		t.Fatalf("the access URL led to %q, want the list under a base path /s/KEY/", base)
	}

	// A request through the edge (retried until the edge has the route).
	edgeReq := func() (*http.Response, error) {
		req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/hello?x=1", httpPort), strings.NewReader(`{"hello":"world","list":[1,2]}`))
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		return http.DefaultClient.Do(req)
	}
	waitFor(t, 10*time.Second, "the app answers through the edge", func() bool {
		resp, err := edgeReq()
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if r := <-got; r.method != "POST" || r.path != "/hello?x=1" {
		t.Fatalf("app got %+v", r)
	}

	// It appears in the open page without a reload.
	row := `#rows tr[data-path="/hello?x=1"] a`
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row)), chromedp.Click(chromedp.CSS(row))); err != nil {
		t.Fatalf("see the request live and open it: %v\npage: %s", err, pageState(bctx))
	}
	origPath := waitPage(t, ctx, "the request's page", `!!document.getElementById('replay')`)
	origID, ok := strings.CutPrefix(origPath, base+"requests/")
	if !ok {
		t.Fatalf("the request's page is at %q, want it under %s", origPath, base)
	}
	reqBody, respHead := pageText(t, ctx, "request-body"), pageText(t, ctx, "response-headers")
	if !strings.Contains(reqBody, "\"hello\": \"world\",\n") || !strings.Contains(respHead, "200") {
		t.Fatalf("detail: request body %q (want pretty JSON), response head %q", reqBody, respHead)
	}

	// Replay: the app gets the same request; the new exchange is marked.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#replay`))); err != nil {
		t.Fatalf("replay: %v\npage: %s", err, pageState(bctx))
	}
	replayPath := waitPage(t, ctx, "the replay's page", `!!document.getElementById('replay-mark')`)
	mark := pageText(t, ctx, "replay-mark")
	if r := <-got; r.method != "POST" || r.path != "/hello?x=1" || r.body != `{"hello":"world","list":[1,2]}` {
		t.Fatalf("replayed request at the app: %+v", r)
	}
	if !strings.Contains(mark, "replay of "+origID) || strings.Contains(mark, "edited") {
		t.Fatalf("replay mark %q, want replay of %s", mark, origID)
	}

	// Edit and replay (on the replay's page): method, path, a header
	// and the body.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#edit summary`)),
		chromedp.WaitVisible(chromedp.CSS(`#edit-path`)),
		chromedp.SetValue(chromedp.CSS(`#edit-method`), "PUT"),
		chromedp.SetValue(chromedp.CSS(`#edit-path`), "/edited?y=2"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('edit-headers').value += "\nX-Edited: yes"`),
		chromedp.SetValue(chromedp.CSS(`#edit-body`), "edited body"),
		chromedp.Click(chromedp.CSS(`#edit-send`)),
	); err != nil {
		t.Fatalf("edit and replay: %v\npage: %s", err, pageState(bctx))
	}
	waitPage(t, ctx, "the edited replay's page", `location.pathname !== '`+replayPath+`' && !!document.getElementById('replay-mark')`)
	mark = pageText(t, ctx, "replay-mark")
	if r := <-got; r != (appRequest{method: "PUT", path: "/edited?y=2", edited: "yes", body: "edited body"}) {
		t.Fatalf("edited request at the app: %+v", r)
	}
	if !strings.Contains(mark, "edited") {
		t.Fatalf("edited replay mark %q", mark)
	}
	// Both replays are marked in the list too.
	if err := chromedp.Do(ctx, chromedp.Navigate(insp+base)); err != nil {
		t.Fatalf("back to the list: %v", err)
	}
	waitPage(t, ctx, "the list", `!!document.getElementById('requests')`)
	if marks := pageText(t, ctx, "rows"); strings.Count(marks, "replay") != 2 || strings.Count(marks, "replay, edited") != 1 {
		t.Fatalf("replays marked in the list: %q; want two, one edited", marks)
	}

	// A page on another origin, even one that knows the session token,
	// cannot make the inspector replay: not by fetch with the token
	// header (the preflight is refused), not by a simple form post.
	var token struct{ Token string }
	if err := inspectorGet(insp+"/api/session", tok, &token); err != nil || token.Token == "" {
		t.Fatalf("session token: %+v, %v", token, err)
	}
	// The other origin is a server on another 127.0.0.1 port; it keeps
	// the cookies the browser sends it (cookies are not kept apart by
	// port) to send them on to the inspector.
	var evilMu sync.Mutex
	var evilCookies []string
	evil := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilMu.Lock()
		evilCookies = append(evilCookies, r.Header.Values("Cookie")...)
		evilMu.Unlock()
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><title>evil</title>
<form id="f" method="post" action="%[1]s/requests/%[2]s/replay"><input name="token" value="%[3]s"></form>
<script>
async function attack() {
  const out = [];
  try {
    const r = await fetch('%[1]s/api/requests/http', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Beam-Inspector-Token': '%[3]s'}, body: JSON.stringify({id: '%[2]s'})});
    out.push('fetch:' + r.status);
  } catch (e) { out.push('fetch:failed'); }
  try {
    await fetch('%[1]s/requests/%[2]s/replay', {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'token=%[3]s'});
    out.push('nocors:sent');
  } catch (e) { out.push('nocors:failed'); }
  try {
    const r = await fetch('%[1]s/api/session');
    out.push('session:' + (await r.text()));
  } catch (e) { out.push('session:failed'); }
  document.title = out.join(' ');
}
attack();
</script>`, insp, origID, token.Token)
	})}
	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go evil.Serve(eln)
	t.Cleanup(func() { evil.Close() })
	var title string
	if err := chromedp.Do(ctx,
		chromedp.Navigate("http://"+eln.Addr().String()+"/"),
		chromedp.Poll[chromedp.Void](`document.title.includes('session:')`, chromedp.WithPollingTimeout(15*time.Second)),
		into(&title, chromedp.Title()),
		chromedp.Submit(chromedp.CSS(`#f`)),
	); err != nil {
		t.Fatalf("the other origin's page: %v\npage: %s", err, pageState(bctx))
	}
	waitPage(t, ctx, "the answer to the other origin's form post", `location.href.includes('/replay') && document.body.innerText.length > 0`)
	refused, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(title, "fetch:failed") || !strings.Contains(title, "session:failed") {
		t.Fatalf("the other origin's fetches: %q; want them refused", title)
	}
	if !strings.Contains(refused, "cross-origin requests are refused") {
		t.Fatalf("the other origin's form post got %q", refused)
	}
	var list struct{ Requests []struct{ Replay bool } }
	if err := inspectorGet(insp+"/api/requests/http", tok, &list); err != nil {
		t.Fatal(err)
	}
	replays := 0
	for _, r := range list.Requests {
		if r.Replay {
			replays++
		}
	}
	select {
	case r := <-got:
		t.Fatalf("the app got a request from the other origin's page: %+v", r)
	default:
	}
	if replays != 2 {
		t.Fatalf("%d replays in the API list, want 2 (none from the other origin)", replays)
	}

	// The other port's server got no inspector cookie from the browser,
	// and what cookies it got do not open the inspector.
	cookieGet := func(path, cookie string) int {
		req, _ := http.NewRequest("GET", insp+path, nil)
		req.Header.Set("Cookie", cookie)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	evilMu.Lock()
	sent := slices.Clone(evilCookies)
	evilMu.Unlock()
	for _, c := range sent {
		if strings.Contains(c, "beam_inspector") {
			t.Errorf("the server on another port got the inspector's cookie: %q", c)
		}
		if code := cookieGet("/api/requests/http", c); code != http.StatusUnauthorized {
			t.Errorf("the other port's cookies %q sent on to the inspector: %d, want 401", c, code)
		}
	}
	// Nor does the cookie's value open anything without the base path.
	cs, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{insp + base}})
	if err != nil {
		t.Fatal(err)
	}
	var jar []string
	for _, c := range cs.Cookies {
		jar = append(jar, c.Name+"="+c.Value)
	}
	if len(jar) != 1 || cs.Cookies[0].Path != base {
		t.Fatalf("the browser's inspector cookies: %q (path %v), want one scoped to %s", jar, cs.Cookies, base)
	}
	if code := cookieGet(base+"api/requests/http", jar[0]); code != http.StatusOK {
		t.Fatalf("the browser's cookie under the base path: %d, want 200", code)
	}
	for _, path := range []string{"/", "/api/requests/http", "/api/session"} {
		if code := cookieGet(path, jar[0]); code != http.StatusUnauthorized {
			t.Errorf("the browser's cookie sent to %s, outside the base path: %d, want 401", path, code)
		}
	}
	t.Logf("browser part took %v", time.Since(start).Round(time.Millisecond))
}

// inspectorGet GETs an inspector API URL, with the access token tok,
// into v.
func inspectorGet(u, tok string, v any) error {
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Beam-Inspector-Token", tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// TestInspectorShowsConnections checks that the inspector lists the
// connections of a tcp route (forwarded by the engine, not relayed as
// HTTP) while they are open and, once closed, with their sizes.
func TestInspectorShowsConnections(t *testing.T) {
	c, _ := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	echo := echoServer(t)
	out, errOut, err := c.beam(nil, alpha.args("expose", "--tcp", strconv.Itoa(echo), "--bg")...)
	if err != nil {
		t.Fatalf("beam expose --tcp: %v\n%s", err, errOut)
	}
	m := regexp.MustCompile(`inspect connections at (http://127\.0\.0\.1:\d+)/\?token=(\S+)`).FindStringSubmatch(errOut)
	pm := regexp.MustCompile(`^tcp://[^:]+:(\d+)$`).FindStringSubmatch(strings.TrimSpace(out))
	if m == nil || pm == nil {
		t.Fatalf("beam expose --tcp printed %q, stderr:\n%s", out, errOut)
	}
	insp, tok := m[1], m[2]
	// Another user of the machine, without the printed token, sees
	// nothing.
	for _, path := range []string{"/", "/api/session", "/api/requests/http"} {
		resp, err := http.Get(insp + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %s, want 401", path, resp.Status)
		}
	}
	type conn struct {
		Kind, Took string
		Size       int64
		Port       int
	}
	conns := func() []conn {
		var list struct{ Requests []conn }
		if err := inspectorGet(insp+"/api/requests/http", tok, &list); err != nil {
			t.Fatal(err)
		}
		return list.Requests
	}
	var nc net.Conn
	waitFor(t, 5*time.Second, "edge tcp port open", func() bool {
		nc, err = net.Dial("tcp", "127.0.0.1:"+pm[1])
		return err == nil
	})
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 5)
	if _, err := fmt.Fprint(nc, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo through the route: %q, %v", buf, err)
	}
	waitFor(t, 5*time.Second, "the open connection in the inspector", func() bool {
		cs := conns()
		return len(cs) == 1 && cs[0].Kind == "tcp" && cs[0].Took == "open" && cs[0].Port == echo
	})
	nc.Close()
	waitFor(t, 5*time.Second, "the closed connection with its size", func() bool {
		cs := conns()
		return len(cs) == 1 && cs[0].Took != "open" && cs[0].Size == 5
	})
}
