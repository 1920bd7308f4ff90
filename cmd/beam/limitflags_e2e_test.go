package main

import (
	"errors"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/oidctest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestNodeRateFlag: beam server --node-rate 1 lets a registered device
// send 1 sealed request a second in bursts of 10: within the burst its
// requests are served at once, past it one waits the Retry-After of the
// 429 its client gets (coordclient sends it again then).
func TestNodeRateFlag(t *testing.T) {
	c, _ := startDevServerWith(t, 0, "--node-rate", "1")
	cc, err := coordclient.New(coordclient.Options{ServerURL: c.url, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Register(t.Context(), coordclient.RegisterParams{Hostname: "busy"}); err != nil {
		t.Fatalf("register in dev mode: %v", err)
	}
	var took []time.Duration
	for range 14 {
		start := time.Now()
		_, err := cc.Expose(t.Context(), wire.ExposeRequest{Name: "none", Proto: "http", Remove: true})
		if !errors.Is(err, coordclient.ErrRouteNotFound) {
			t.Fatalf("expose remove: %v, want ErrRouteNotFound (the request served)", err)
		}
		took = append(took, time.Since(start))
	}
	t.Logf("14 requests took %v", took)
	held := 0
	for _, d := range took[10:] {
		if d >= 900*time.Millisecond {
			held++
		}
	}
	if held == 0 {
		t.Errorf("requests 11-14 of one device took %v: none held back by --node-rate 1 (bursts of 10)", took[10:])
	}
}

// TestLimitFlagsRefused: out-of-range values of the request-rate and
// sign-in cap flags, or of their config file keys, stop beam coordinator
// and beam server at start with an error naming the flag, its key and
// what is allowed.
func TestLimitFlagsRefused(t *testing.T) {
	bin := buildBeam(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "coordinator.hujson")
	if err := os.WriteFile(cfg, []byte(`{"node_rate": 5000000, "oidc_max_sign_ins_per_address": -3}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, bin: bin, dir: dir}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"coordinator", "--addr", addr, "--data", filepath.Join(dir, "c1"), "--node-rate", "-2"},
			[]string{`bad --node-rate "-2" (config key node_rate)`, "-1 for no limit"}},
		{[]string{"coordinator", "--addr", addr, "--data", filepath.Join(dir, "c2"), "--oidc-max-sign-ins", "-5"},
			[]string{`bad --oidc-max-sign-ins "-5" (config key oidc_max_sign_ins)`}},
		{[]string{"coordinator", "--config", cfg, "--addr", addr, "--data", filepath.Join(dir, "c3")},
			[]string{`bad --node-rate "5000000" (config key node_rate)`, `bad --oidc-max-sign-ins-per-address "-3"`}},
		{[]string{"server", "--dev", "--addr", addr, "--data", filepath.Join(dir, "s1"), "--http-addr", "", "--https-addr", "", "--stun-addr", "", "--dns-addr", "",
			"--oidc-max-sign-ins", "10", "--oidc-max-sign-ins-per-address", "20"},
			[]string{`bad --oidc-max-sign-ins-per-address "20" (config key oidc_max_sign_ins_per_address)`, "at most --oidc-max-sign-ins (10)"}},
		{[]string{"server", "--dev", "--addr", addr, "--data", filepath.Join(dir, "s2"), "--http-addr", "", "--https-addr", "", "--stun-addr", "", "--dns-addr", "",
			"--node-rate", "-9"},
			[]string{`bad --node-rate "-9"`}},
	} {
		_, errOut, err := c.beam(nil, tc.args...)
		if err == nil {
			t.Errorf("beam %s: started, want it refused", strings.Join(tc.args, " "))
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("beam %s: stderr %q, want it to say %q", strings.Join(tc.args, " "), errOut, w)
			}
		}
	}
}

// TestOIDCSignInCapFlag: beam coordinator --oidc-max-sign-ins-per-address
// 2 keeps two sign-ins in flight from one address: the third it starts
// pushes out the first, which can then not be finished, while the third
// can.
func TestOIDCSignInCapFlag(t *testing.T) {
	c, _ := oidcCluster(t, "--oidc-admins", "alice@example.com", "--oidc-max-sign-ins-per-address", "2")
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 30 * time.Second}
	var started []string
	for range 3 {
		resp, err := client.Get(c.url + "/oidc/admin?next=/console/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("sign-in %d started from one address: got %d, want 302 to the provider", len(started)+1, resp.StatusCode)
		}
		started = append(started, resp.Header.Get("Location"))
	}
	client.CheckRedirect = nil
	for i, want := range map[int]string{0: "unknown, used or expired", 2: "Signed in."} {
		resp, body, err := oidctest.Login(t.Context(), client, started[i], oidcAlice.Email, oidcAlice.Password)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(body, want) {
			t.Errorf("finishing sign-in %d of 3 (bound 2): got %d, want a page saying %q:\n%.400s", i+1, resp.StatusCode, want, body)
		}
	}
}
