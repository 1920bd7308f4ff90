package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// TestRelayTokenRotation rotates the relay token of a coordinator and a
// `beam derp --verify-clients` relay (its own copy of the token) twice,
// with real processes: first the coordinator reloads, then the relay; then
// the relay first, then the coordinator. Between the two reloads, when
// they hold different tokens, the relay still admits a registered node
// (the coordinator still takes the old token; the relay still presents
// its old one to a coordinator that refuses the new), and still refuses
// a stranger. Before, the relay refused every node in between.
func TestRelayTokenRotation(t *testing.T) {
	c := newCluster(t)
	authKey := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	alpha := c.device("alpha")
	alpha.mustUp("--authkey", authKey)
	b, err := os.ReadFile(filepath.Join(alpha.state, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		PrivateKey key.NodePrivate `json:"private_key"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.PrivateKey.IsZero() {
		t.Fatalf("alpha's node key: %v", err)
	}
	stranger := key.NewNode()

	coordToken := filepath.Join(c.dir, "coord", "relay.token")
	relayToken := filepath.Join(c.dir, "relay.token") // the relay's copy
	tok, err := os.ReadFile(coordToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(relayToken, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	relayLog := filepath.Join(c.dir, "derp.log")
	logf, err := os.Create(relayLog)
	if err != nil {
		t.Fatal(err)
	}
	relay := exec.Command(c.bin, "derp", "--addr", addr, "--stun-addr", "", "--state", filepath.Join(c.dir, "derp"),
		"--verify-clients", c.url, "--verify-token-file", relayToken)
	relay.Stdout, relay.Stderr = logf, logf
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() { relay.Process.Kill(); relay.Wait() })
	waitFor(t, 10*time.Second, "relay answers", func() bool {
		resp, err := http.Get("http://" + addr + "/generate_204")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})

	admits := func(k key.NodePrivate) error {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		dc, err := derp.Dial(ctx, "http://"+addr, k, derp.ClientOptions{})
		if err != nil {
			return err
		}
		dc.Close()
		return nil
	}
	check := func(when string) {
		t.Helper()
		if err := admits(st.PrivateKey); err != nil {
			b, _ := os.ReadFile(relayLog)
			t.Errorf("%s: the relay refuses alpha: %v\nrelay log:\n%s", when, err, b)
		}
		if err := admits(stranger); !errors.Is(err, derp.ErrRefused) {
			t.Errorf("%s: a stranger at the relay: %v, want refused", when, err)
		}
	}
	// reload writes tok into file and sends proc SIGHUP, and waits until
	// its log (logPath) says it reloaded the relay token once more.
	reloaded := regexp.MustCompile(`config reloaded.*reloaded=.*relay_token`)
	reload := func(what, file, tok string, proc *os.Process, logPath string) {
		t.Helper()
		b, _ := os.ReadFile(logPath)
		before := len(reloaded.FindAll(b, -1))
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := proc.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, what+" reloads the relay token", func() bool {
			b, _ := os.ReadFile(logPath)
			return len(reloaded.FindAll(b, -1)) > before
		})
	}
	coordLog := filepath.Join(c.dir, "coord.log")
	check("before the rotation")

	first := "rotated-relay-token-one-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	reload("the coordinator", coordToken, first, c.coord.Process, coordLog)
	check("the coordinator has the new token, the relay the old one")
	reload("the relay", relayToken, first, relay.Process, relayLog)
	check("both have the new token")

	second := "rotated-relay-token-two-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	reload("the relay", relayToken, second, relay.Process, relayLog)
	check("the relay has the new token, the coordinator the old one")
	reload("the coordinator", coordToken, second, c.coord.Process, coordLog)
	check("both have the second new token")

	// The overlap keeps the previous token only: the first token, two
	// rotations old, is refused.
	req, _ := http.NewRequest("GET", c.url+"/api/v1/derp/verify?key="+st.PrivateKey.Public().String(), nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the token of two rotations ago at /derp/verify: %d, want 401", resp.StatusCode)
	}
}
