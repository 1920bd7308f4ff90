package main

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestBasicAuthBounds plays a client against a basic-auth route of the
// real beam server: a bcrypt hash the edge would spend seconds on for
// every request is refused when the route is published, and 40 wrong
// passwords sent at once from one address are not all checked: at most
// the allowance (10 a minute) gets 401, the rest 429. A password given
// in clear leaves beam expose only as a bcrypt hash.
func TestBasicAuthBounds(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secret page") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	// Cost 16 takes seconds a check, 31 days: refused, with the reason.
	for _, cost := range []string{"16", "31"} {
		hash := "$2a$" + cost + "$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
		_, errOut, err := c.beam(nil, alpha.args("expose", port, "--name", "bc"+cost, "--basic-auth", "u:"+hash, "--bg")...)
		if err == nil || !strings.Contains(errOut, "bcrypt cost "+cost) {
			t.Errorf("expose with a bcrypt hash of cost %s: err %v, stderr %q; want a refusal naming the cost", cost, err, errOut)
		}
	}

	hash, err := bcrypt.GenerateFromPassword([]byte("right-password"), 10)
	if err != nil {
		t.Fatal(err)
	}
	c.mustBeam(alpha.args("expose", port, "--name", "vault", "--basic-auth", "admin:"+string(hash), "--bg")...)
	edgeURL := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	try := func(src net.IP, pass string) int {
		t.Helper()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
		tr := &http.Transport{DialContext: d.DialContext}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", edgeURL, nil)
		req.Host = "vault.localhost"
		req.SetBasicAuth("admin", pass)
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Errorf("GET vault.localhost: %v", err)
			return 0
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	waitFor(t, 10*time.Second, "the route takes the password", func() bool { return try(source(1), "right-password") == 200 })

	codes := make(chan int, 40)
	for i := range 40 {
		go func() { codes <- try(source(0), "guess-"+strconv.Itoa(i)) }()
	}
	got := map[int]int{}
	for range 40 {
		got[<-codes]++
	}
	t.Logf("40 wrong passwords at once from one address: %v", got)
	if got[401] > 10 || got[401]+got[429] != 40 {
		t.Errorf("40 wrong passwords at once: %v, want at most 10 checked (401) and the rest 429", got)
	}
	if code := try(source(1), "right-password"); code != 200 {
		t.Errorf("another address with the right password: %d, want 200", code)
	}

	// A password given in clear is hashed by beam expose: it works, and
	// neither the coordinator, the daemons nor their logs hold it.
	const clear = "clear-text-password-4711"
	c.mustBeam(alpha.args("expose", port, "--name", "plainpw", "--basic-auth", "admin:"+clear, "--bg")...)
	waitFor(t, 10*time.Second, "the route takes the password", func() bool {
		req, _ := http.NewRequest("GET", edgeURL, nil)
		req.Host = "plainpw.localhost"
		req.SetBasicAuth("admin", clear)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	filepath.WalkDir(c.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(clear)) {
			t.Errorf("%s holds the route's password in clear", path)
		}
		return nil
	})
}
