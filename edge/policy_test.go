package edge

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestPolicies(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	var hits atomic.Int64
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Server", "secret-version")
		w.Header().Set("X-Seen-Add", r.Header.Get("X-Add"))
		w.Header().Set("X-Seen-Cookie", r.Header.Get("Cookie"))
		w.Write([]byte("ok"))
	}))
	bc, err := bcrypt.GenerateFromPassword([]byte("bcpass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("shapass"))
	route := func(name string, p Policy) Route {
		r := httpRoute(name, a)
		r.Policy = p
		return r
	}
	setRoutes(t, e,
		route("auth", Policy{BasicAuth: []BasicAuthUser{
			{User: "bob", Secret: string(bc)},
			{User: "sha", Secret: "sha256:" + hex.EncodeToString(sum[:])},
			{User: "ann", Secret: "plain:annpass"},
		}}),
		route("deny", Policy{DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}),
		route("allow", Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}),
		route("allowed", Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}),
		route("rate", Policy{RateLimit: 0.5, RateBurst: 2}),
		route("hdr", Policy{
			RequestHeaderAdd: map[string]string{"X-Add": "added"}, RequestHeaderRemove: []string{"Cookie"},
			ResponseHeaderAdd: map[string]string{"Strict-Transport-Security": "max-age=60"}, ResponseHeaderRemove: []string{"Server"},
		}),
		route("cors", Policy{CORSOrigins: []string{"https://app.test"}, BasicAuth: []BasicAuthUser{{User: "ann", Secret: "plain:annpass"}}}),
	)
	c := clientTo(serveHTTP(t, e))

	auth := func(u, p string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(u, p)
		return r.Header.Get("Authorization")
	}
	tests := []struct {
		name   string
		url    string
		hdr    []string
		status int
		check  func(t *testing.T, h http.Header)
	}{
		{"auth none", "http://auth.example.test/", nil, 401, func(t *testing.T, h http.Header) {
			if got := h.Get("WWW-Authenticate"); got != `Basic realm="auth.example.test", charset="UTF-8"` {
				t.Errorf("WWW-Authenticate = %q", got)
			}
		}},
		{"auth wrong password", "http://auth.example.test/", []string{"Authorization", auth("bob", "nope")}, 401, nil},
		{"auth wrong user", "http://auth.example.test/", []string{"Authorization", auth("eve", "bcpass")}, 401, nil},
		{"auth other user's password", "http://auth.example.test/", []string{"Authorization", auth("ann", "bcpass")}, 401, nil},
		{"auth bcrypt", "http://auth.example.test/", []string{"Authorization", auth("bob", "bcpass")}, 200, nil},
		{"auth bcrypt cached", "http://auth.example.test/", []string{"Authorization", auth("bob", "bcpass")}, 200, nil},
		{"auth sha256", "http://auth.example.test/", []string{"Authorization", auth("sha", "shapass")}, 200, nil},
		{"auth plain", "http://auth.example.test/", []string{"Authorization", auth("ann", "annpass")}, 200, nil},
		{"deny", "http://deny.example.test/", nil, 403, nil},
		{"allow elsewhere", "http://allow.example.test/", []string{"X-Forwarded-For", "192.0.2.7"}, 403, nil},
		{"allowed", "http://allowed.example.test/", nil, 200, nil},
		{"headers", "http://hdr.example.test/", []string{"Cookie", "s=1", "X-Add", "client"}, 200, func(t *testing.T, h http.Header) {
			if h.Get("X-Seen-Add") != "added" || h.Get("X-Seen-Cookie") != "" {
				t.Errorf("origin saw X-Add %q Cookie %q, want added and none", h.Get("X-Seen-Add"), h.Get("X-Seen-Cookie"))
			}
			if h.Get("Server") != "" || h.Get("Strict-Transport-Security") != "max-age=60" {
				t.Errorf("response Server %q STS %q", h.Get("Server"), h.Get("Strict-Transport-Security"))
			}
		}},
		{"cors simple allowed", "http://cors.example.test/", []string{"Origin", "https://app.test", "Authorization", auth("ann", "annpass")}, 200, func(t *testing.T, h http.Header) {
			if h.Get("Access-Control-Allow-Origin") != "https://app.test" {
				t.Errorf("ACAO = %q", h.Get("Access-Control-Allow-Origin"))
			}
		}},
		{"cors simple other origin", "http://cors.example.test/", []string{"Origin", "https://evil.test", "Authorization", auth("ann", "annpass")}, 200, func(t *testing.T, h http.Header) {
			if h.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("ACAO = %q for a foreign origin", h.Get("Access-Control-Allow-Origin"))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits.Load()
			status, body, h := get(t, c, tt.url, tt.hdr...)
			if status != tt.status {
				t.Fatalf("status %d (%q), want %d", status, body, tt.status)
			}
			if reached := hits.Load() > before; reached != (status == 200) {
				t.Errorf("origin reached = %v with status %d", reached, status)
			}
			if tt.check != nil {
				tt.check(t, h)
			}
		})
	}

	t.Run("cors preflight", func(t *testing.T) {
		before := hits.Load()
		for _, tc := range []struct {
			origin string
			status int
		}{{"https://app.test", 204}, {"https://evil.test", 403}} {
			req, _ := http.NewRequest("OPTIONS", "http://cors.example.test/api", nil)
			req.Header.Set("Origin", tc.origin)
			req.Header.Set("Access-Control-Request-Method", "PUT")
			req.Header.Set("Access-Control-Request-Headers", "content-type")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d", tc.origin, resp.StatusCode, tc.status)
			}
			if tc.status == 204 && (resp.Header.Get("Access-Control-Allow-Origin") != tc.origin ||
				resp.Header.Get("Access-Control-Allow-Headers") != "content-type" ||
				resp.Header.Get("Access-Control-Allow-Methods") == "") {
				t.Errorf("preflight headers %v", resp.Header)
			}
		}
		if hits.Load() != before {
			t.Error("preflight reached the origin")
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		for i := range 2 {
			if status, _, _ := get(t, c, "http://rate.example.test/"); status != 200 {
				t.Fatalf("request %d: status %d, want 200 within the burst", i, status)
			}
		}
		status, _, h := get(t, c, "http://rate.example.test/")
		if status != 429 {
			t.Fatalf("third request: status %d, want 429", status)
		}
		if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
			t.Errorf("Retry-After = %q, want 1 or 2 seconds", h.Get("Retry-After"))
		}
		// Other routes are not limited by this one.
		if status, _, _ := get(t, c, "http://allowed.example.test/"); status != 200 {
			t.Errorf("other route: status %d", status)
		}
	})
}

func TestRateLimiterRefills(t *testing.T) {
	l := &clientLimiter{limit: 10, burst: 1, m: map[netip.Addr]*limEntry{}}
	ip := netip.MustParseAddr("192.0.2.1")
	other := netip.MustParseAddr("2001:db8::1")
	now := time.Now()
	if d := l.allow(ip, now); d != 0 {
		t.Fatalf("first: wait %v, want 0", d)
	}
	if d := l.allow(ip, now); d <= 0 || d > 100*time.Millisecond {
		t.Fatalf("second: wait %v, want (0, 100ms]", d)
	}
	if d := l.allow(clientKey(other), now); d != 0 {
		t.Fatalf("other client: wait %v, want 0", d)
	}
	if d := l.allow(ip, now.Add(100*time.Millisecond)); d != 0 {
		t.Fatalf("after refill: wait %v, want 0", d)
	}
	l.prune(now.Add(time.Hour))
	if len(l.m) != 0 {
		t.Errorf("prune left %d entries", len(l.m))
	}
}

// TestBasicAuthBcryptCost refuses routes whose bcrypt hashes cost more
// than MaxBcryptCost: the edge would spend that on every request.
func TestBasicAuthBcryptCost(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a := ov.add(closedPort(t))
	const rest = "abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234" // salt and hash, 53 characters
	for _, tc := range []struct {
		secret string
		want   string // "" for accepted
	}{
		{"$2a$12$" + rest, ""},
		{"$2b$13$" + rest, "bcrypt cost 13 is over 12"},
		{"$2a$16$" + rest, "bcrypt cost 16 is over 12"},
		{"$2y$31$" + rest, "bcrypt cost 31 is over 12"},
	} {
		r := httpRoute("bc", a)
		r.Policy = Policy{BasicAuth: []BasicAuthUser{{User: "u", Secret: tc.secret}}}
		err := e.SetRoutes([]Route{r})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: SetRoutes = %v, want nil", tc.secret[:7], err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: SetRoutes = %v, want an error with %q", tc.secret[:7], err, tc.want)
		}
	}
}

// TestBasicAuthOneCheck sends wrong credentials to a route of 64 bcrypt
// users: each request checks one hash (the user's of that name, or a
// dummy one when no name matches), not 64.
func TestBasicAuthOneCheck(t *testing.T) {
	var checks atomic.Int64
	real := bcryptCompare
	bcryptCompare = func(h, p []byte) error { checks.Add(1); return real(h, p) }
	t.Cleanup(func() { bcryptCompare = real })

	ov := newOverlay()
	e := newTestEdge(t, ov, Options{MaxAuthFailures: -1})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	var users []BasicAuthUser
	for i := range 64 {
		h, err := bcrypt.GenerateFromPassword([]byte("pass"+strconv.Itoa(i)), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, BasicAuthUser{User: "user" + strconv.Itoa(i), Secret: string(h)})
	}
	r := httpRoute("many", a)
	r.Policy = Policy{BasicAuth: users}
	setRoutes(t, e, r)
	c := clientTo(serveHTTP(t, e))
	auth := func(u, p string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(u, p)
		return r.Header.Get("Authorization")
	}
	for _, tc := range []struct {
		name, user, pass string
		status           int
	}{
		{"wrong password", "user7", "nope", 401},
		{"unknown name", "mallory", "nope", 401},
		{"last user", "user63", "pass63", 200},
		{"another's password", "user1", "pass63", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := checks.Load()
			status, body, _ := get(t, c, "http://many.example.test/", "Authorization", auth(tc.user, tc.pass))
			if status != tc.status {
				t.Fatalf("status %d (%q), want %d", status, body, tc.status)
			}
			if n := checks.Load() - before; n != 1 {
				t.Errorf("%d bcrypt checks, want 1", n)
			}
		})
	}
}

// TestBasicAuthSameWork checks that a wrong password costs the same
// bcrypt work whatever the name: unknown, or a user with a bcrypt hash of
// any of the route's costs, a bcrypt-sha256 hash, a sha256 digest or a
// plain password. It counts the checks at each cost, not wall time.
func TestBasicAuthSameWork(t *testing.T) {
	var mu sync.Mutex
	var costs []int
	real := bcryptCompare
	bcryptCompare = func(h, p []byte) error {
		c, err := bcrypt.Cost(h)
		if err != nil {
			t.Errorf("bcrypt check of a bad hash: %v", err)
		}
		mu.Lock()
		costs = append(costs, c)
		mu.Unlock()
		return real(h, p)
	}
	t.Cleanup(func() { bcryptCompare = real })

	long := strings.Repeat("long-token-", 10) // over bcrypt's 72 bytes
	hash := func(pass string, cost int) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), cost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	longSum := sha256.Sum256([]byte(long))
	deploySum := sha256.Sum256([]byte("deploy-pass"))
	users := []BasicAuthUser{
		{User: "admin", Secret: hash("admin-pass", 6)},
		{User: "ci", Secret: hash("ci-pass", 4)},
		{User: "bot", Secret: "bcrypt-sha256:" + hash(hex.EncodeToString(longSum[:]), 5)},
		{User: "deploy", Secret: "sha256:" + hex.EncodeToString(deploySum[:])},
		{User: "plain", Secret: "plain:plain-pass"},
	}
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{MaxAuthFailures: -1})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	r := httpRoute("mixed", a)
	r.Policy = Policy{BasicAuth: users}
	setRoutes(t, e, r)
	c := clientTo(serveHTTP(t, e))
	auth := func(u, p string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(u, p)
		return r.Header.Get("Authorization")
	}
	send := func(user, pass string) (status int, checked []int) {
		t.Helper()
		mu.Lock()
		costs = nil
		mu.Unlock()
		status, _, _ = get(t, c, "http://mixed.example.test/", "Authorization", auth(user, pass))
		mu.Lock()
		defer mu.Unlock()
		checked = slices.Clone(costs)
		slices.Sort(checked)
		return status, checked
	}
	want := []int{4, 5, 6} // one check at each cost of the route
	for _, user := range []string{"mallory", "admin", "ci", "bot", "deploy", "plain"} {
		status, checked := send(user, "wrong")
		if status != 401 {
			t.Errorf("%s, wrong password: status %d, want 401", user, status)
		}
		if !slices.Equal(checked, want) {
			t.Errorf("%s, wrong password: bcrypt checks at costs %v, want %v", user, checked, want)
		}
	}
	for _, tc := range []struct{ user, pass string }{
		{"admin", "admin-pass"}, {"ci", "ci-pass"}, {"bot", long}, {"deploy", "deploy-pass"}, {"plain", "plain-pass"},
	} {
		if status, _ := send(tc.user, tc.pass); status != 200 {
			t.Errorf("%s, right password: status %d, want 200", tc.user, status)
		}
	}
	// bcrypt-sha256 takes the whole long password, not its first 72 bytes.
	if status, _ := send("bot", long[:72]+"x"); status != 401 {
		t.Errorf("bot, a password sharing the first 72 bytes: status %d, want 401", status)
	}
}

// TestAuthThrottleConcurrent sends 40 wrong passwords at once from one
// address: the attempts under way count, so at most the allowance (10)
// are checked and the rest get 429.
func TestAuthThrottleConcurrent(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	release := make(chan struct{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	// A bcrypt check that waits until every request has arrived: without
	// in-flight counting all 40 would be checked.
	var entered atomic.Int64
	real := bcryptCompare
	bcryptCompare = func(h, p []byte) error {
		if entered.Add(1) == 10 {
			close(release)
		}
		<-release
		return real(h, p)
	}
	t.Cleanup(func() { bcryptCompare = real })
	h, err := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	r := httpRoute("guard", a)
	r.Policy = Policy{BasicAuth: []BasicAuthUser{{User: "u", Secret: string(h)}}}
	setRoutes(t, e, r)
	addr := serveHTTP(t, e)
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth("u", "wrong")
	authz := req.Header.Get("Authorization")
	codes := make(chan int, 40)
	for range 40 {
		go func() {
			req, _ := http.NewRequest("GET", "http://guard.example.test/", nil)
			req.Header.Set("Authorization", authz)
			resp, err := clientTo(addr).Do(req)
			if err != nil {
				t.Error(err)
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	got := map[int]int{}
	for range 40 {
		got[<-codes]++
	}
	if got[401] > 10 || got[401]+got[429] != 40 {
		t.Errorf("40 wrong passwords at once: %v, want at most 10 checked (401), the rest 429", got)
	}
	if n := entered.Load(); n > 10 {
		t.Errorf("%d passwords checked, want at most 10", n)
	}
}
