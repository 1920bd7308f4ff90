package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's Chromium, which the browser tests drive.
const chromiumPath = "/usr/bin/chromium"

// browserLocalOnly are the switches that keep a test's Chromium off the
// network beyond loopback: no background, component, sync, safe browsing,
// translation, optimization or metrics traffic, no QUIC, no prefetch, and
// every name but localhost, *.localhost and 127.0.0.1 fails to resolve
// inside the browser instead of going to the host's resolver.
var browserLocalOnly = map[string]string{
	"disable-quic":                           "",
	"disable-background-networking":          "",
	"disable-component-update":               "",
	"disable-sync":                           "",
	"disable-default-apps":                   "",
	"disable-extensions":                     "",
	"disable-domain-reliability":             "",
	"disable-client-side-phishing-detection": "",
	"safebrowsing-disable-auto-update":       "",
	"no-pings":                               "",
	"no-first-run":                           "",
	"no-default-browser-check":               "",
	"no-proxy-server":                        "",
	"dns-prefetch-disable":                   "",
	"metrics-recording-only":                 "",
	"disable-features":                       "Translate,OptimizationHints,OptimizationGuideModelDownloading,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,NetworkTimeServiceQuerying",
	"host-resolver-rules":                    "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE *.localhost, EXCLUDE 127.0.0.1",
}

// browserOptions are the allocator options of every browser test: headless
// Chromium with a fresh profile and the browserLocalOnly switches.
func browserOptions(profile string) []chromedp.ExecAllocatorOption {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
	)
	for k, v := range browserLocalOnly {
		if v == "" {
			opts = append(opts, chromedp.Flag(k, true))
		} else {
			opts = append(opts, chromedp.Flag(k, v))
		}
	}
	return opts
}

// consoleBrowser starts headless Chromium for t and returns a context
// that drives one tab. It fails the test if Chromium is missing. The
// browser exits when the test ends.
func consoleBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the browser tests need Chromium at %s (Debian: apt-get install chromium): %v", chromiumPath, err)
	}
	profile := t.TempDir() // removed after the browser exits (cleanups run last-in first-out)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), browserOptions(profile)...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first run starts the browser, which lives as long as ctx: no
	// timeout on it (chromedp bounds the start itself).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return ctx
}

// browse runs browser steps, each page load or wait bounded, failing the
// test on error.
func browse(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// read runs one browser action that returns a value, like browse.
func read[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// TestConsoleInBrowser plays the console's main flow in headless Chromium
// against the real beam binary: a device without an auth key waits for
// approval; its approval URL leads to the console's sign-in; a wrong
// token is refused, the right one opens the device's approve page;
// approving it lets beam up finish and the device shows up online in the
// nodes list. Then a page on another site posts a form to the console
// and is refused.
func TestConsoleInBrowser(t *testing.T) {
	c := newCluster(t)
	logb, _ := os.ReadFile(filepath.Join(c.dir, "coord.log"))
	if want := "web console at " + c.url + "/console/"; !strings.Contains(string(logb), want) {
		t.Errorf("beam coordinator did not print %q:\n%s", want, logb)
	}
	ctx := consoleBrowser(t)

	d := c.device("laptop")
	up, stdout, code := upAwaitingApproval(t, c, d, "60s")
	defer up.Process.Kill()

	// The approval URL beam up prints leads to the sign-in form.
	browse(t, ctx, "open the approval URL",
		chromedp.Navigate(c.url+"/register/"+code),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	if loc, want := read(t, ctx, "location", chromedp.Location()), c.url+"/console/login?next=%2Fconsole%2Fapprove%2F"+code; loc != want {
		t.Errorf("approval URL led to %q, want %q", loc, want)
	}

	browse(t, ctx, "sign in with a wrong token",
		chromedp.SendKeys(chromedp.ID("token"), "not-the-admin-token"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("error")),
	)
	if msg := read(t, ctx, "error text", chromedp.Text(chromedp.ID("error"))); !strings.Contains(msg, "Wrong admin token") {
		t.Fatalf("wrong token: page says %q, want Wrong admin token", msg)
	}

	browse(t, ctx, "sign in with the admin token",
		chromedp.SendKeys(chromedp.ID("token"), c.token),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("approve-button")),
	)
	if host := read(t, ctx, "hostname", chromedp.Text(chromedp.ID("hostname"))); host != "laptop" {
		t.Fatalf("approve page shows hostname %q, want laptop", host)
	}

	browse(t, ctx, "approve",
		chromedp.Click(chromedp.ID("approve-button")),
		chromedp.WaitVisible(chromedp.ID("flash")),
	)
	if msg := read(t, ctx, "flash text", chromedp.Text(chromedp.ID("flash"))); !strings.Contains(msg, "Approved laptop") {
		t.Fatalf("after approve: page says %q", msg)
	}
	waited := make(chan error, 1)
	go func() { waited <- up.Wait() }()
	select {
	case err := <-waited:
		if err != nil || !strings.HasPrefix(stdout.String(), "laptop 100.64.") {
			t.Fatalf("beam up after approval in the console: %v, printed %q", err, stdout.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("beam up did not finish within 30 s of the approval")
	}

	// The nodes list shows it online once its map stream is up.
	row := regexp.MustCompile(`(?s)<tr id="node-default-laptop">(.*?)</tr>`)
	var last string
	waitFor(t, 15*time.Second, "laptop online in the console's nodes list", func() bool {
		browse(t, ctx, "load the nodes list", chromedp.Navigate(c.url+"/console/nodes"))
		table := read(t, ctx, "nodes table", chromedp.OuterHTML(chromedp.ID("nodes")))
		m := row.FindStringSubmatch(table)
		if m == nil {
			last = table
			return false
		}
		last = m[1]
		return strings.Contains(m[1], `<span class="on">online</span>`)
	})
	if !strings.Contains(last, "100.64.") || !strings.Contains(last, "protocol ") {
		t.Errorf("laptop's row lacks its address or version: %s", last)
	}

	// A page on another site (localhost is another site than 127.0.0.1)
	// posts a form to the console, as a CSRF attack would; the signed-in
	// browser sends it, and the console refuses it.
	evil := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/console/users"><input name="name" value="mallory"><button id="go" type="submit">go</button></form>`, c.url)
	})}
	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go evil.Serve(eln)
	t.Cleanup(func() { evil.Close() })
	evilURL := fmt.Sprintf("http://localhost:%d/", eln.Addr().(*net.TCPAddr).Port)
	browse(t, ctx, "cross-site form post",
		chromedp.Navigate(evilURL),
		chromedp.Click(chromedp.ID("go")),
		chromedp.WaitReady(chromedp.ID("error")),
	)
	body := read(t, ctx, "refusal text", chromedp.Text(chromedp.ID("error")))
	if loc := read(t, ctx, "location", chromedp.Location()); !strings.HasPrefix(loc, c.url+"/console/users") || !strings.Contains(body, "refused") {
		t.Errorf("cross-site post: at %q the page says %q; want the console refusing it", loc, body)
	}
	browse(t, ctx, "users list", chromedp.Navigate(c.url+"/console/users"))
	if users := read(t, ctx, "users table", chromedp.OuterHTML(chromedp.ID("users"))); strings.Contains(users, "mallory") {
		t.Errorf("the cross-site post created a user:\n%s", users)
	}
	if out := c.mustBeam("admin", "audit", "--coordinator", c.url); !strings.Contains(out, "console:admin") || !strings.Contains(out, "node.approve") {
		t.Errorf("audit log lacks the console's approval:\n%s", out)
	}
}

// TestBrowserStaysLocal checks that the browser of the browser tests runs
// with every browserLocalOnly switch, that it still loads pages on
// 127.0.0.1 and *.localhost, and that any other name fails inside the
// browser (the resolver rules) rather than being looked up.
func TestBrowserStaysLocal(t *testing.T) {
	ctx := consoleBrowser(t)
	cl, err := chromedp.CallBrowser(ctx, cdpbrowser.GetBrowserCommandLine, cdp.Empty{})
	if err != nil {
		t.Fatalf("browser command line: %v", err)
	}
	args := cl.Arguments
	for k, v := range browserLocalOnly {
		want := "--" + k
		if v != "" {
			want += "=" + v
		}
		if !slices.Contains(args, want) {
			t.Errorf("Chromium runs without %s; its command line: %q", want, args)
		}
	}
	if t.Failed() {
		t.FailNow() // no stray lookup below without the rules
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "page of "+r.Host) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"127.0.0.1", "localhost", "app.localhost"} {
		u := fmt.Sprintf("http://%s:%d/", host, port)
		browse(t, ctx, "open "+u, chromedp.Navigate(u))
		body := read(t, ctx, "page", chromedp.Text("body"))
		if want := fmt.Sprintf("page of %s:%d", host, port); strings.TrimSpace(body) != want {
			t.Errorf("%s shows %q, want %q", u, body, want)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stray := fmt.Sprintf("http://stray.beam.test:%d/", port)
	if err := chromedp.Do(sctx, chromedp.Navigate(stray)); err == nil || !strings.Contains(err.Error(), "ERR_NAME_NOT_RESOLVED") {
		t.Fatalf("navigate to %s: %v, want net::ERR_NAME_NOT_RESOLVED from the browser's resolver rules", stray, err)
	}
}
