package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// derpProc is one beam derp process, logging to its own file.
type derpProc struct {
	addr, log string
}

// startDerp runs beam derp on loopback with the given extra flags
// and waits until it answers.
func startDerp(t *testing.T, bin, dir, name string, extra ...string) *derpProc {
	t.Helper()
	r := &derpProc{addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), log: filepath.Join(dir, name+".log")}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"derp", "--addr", r.addr, "--stun-addr", "", "--state", filepath.Join(dir, name)}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(r.log)
			t.Logf("%s log:\n%s", name, b)
		}
	})
	waitFor(t, 10*time.Second, name+" answers", func() bool {
		resp, err := http.Get("http://" + r.addr + "/generate_204")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return r
}

func (r *derpProc) logText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(r.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// key returns the machine key the relay logged at start.
func (r *derpProc) key(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`machine_key=(mkey:[0-9a-f]{64})`).FindStringSubmatch(r.logText(t))
	if m == nil {
		t.Fatalf("relay log has no machine_key:\n%s", r.logText(t))
	}
	return m[1]
}

type derpProcStats struct {
	Accepted    int64 `json:"accepted"`
	MeshClients int   `json:"mesh_clients"`
}

func (r *derpProc) stats(t *testing.T) derpProcStats {
	t.Helper()
	resp, err := http.Get("http://" + r.addr + "/derp/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s derpProcStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRelayMeshPinnedKey runs three real relays of one region: A, an
// impostor (a relay with the region's mesh key but its own machine key,
// standing where A's twin should be), and B, which meshes with A's URL and
// the impostor's, both pinned to A's key. B meshes with A and refuses the
// impostor, saying so in its log, before sending it anything: the
// impostor accepts no connection at all. Started without the pin, B meshes
// with the impostor and warns that the peer is unpinned.
func TestRelayMeshPinnedKey(t *testing.T) {
	bin := buildBeam(t)
	dir := t.TempDir()
	meshKey := filepath.Join(dir, "mesh.key")
	if err := os.WriteFile(meshKey, []byte("e2e-region-mesh-key-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startDerp(t, bin, dir, "relay-a", "--mesh-key-file", meshKey)
	imp := startDerp(t, bin, dir, "impostor", "--mesh-key-file", meshKey)
	keyA := a.key(t)
	if imp.key(t) == keyA {
		t.Fatal("impostor has relay A's key")
	}

	b := startDerp(t, bin, dir, "relay-b", "--mesh-key-file", meshKey,
		"--mesh-with", "http://"+a.addr+"#"+keyA+",http://"+imp.addr+"#"+keyA)
	waitFor(t, 20*time.Second, "relay B refuses the impostor", func() bool {
		return strings.Contains(b.logText(t), "refusing mesh peer")
	})
	waitFor(t, 20*time.Second, "relay B meshes with relay A", func() bool {
		return a.stats(t).MeshClients == 1
	})
	if s := imp.stats(t); s.Accepted != 0 || s.MeshClients != 0 {
		t.Errorf("impostor stats %+v, want no accepted connection and no mesh client", s)
	}
	for _, want := range []string{"mesh_peer=http://" + imp.addr, "got " + imp.key(t), "want " + keyA} {
		if !strings.Contains(b.logText(t), want) {
			t.Errorf("relay B's log lacks %q", want)
		}
	}
	if strings.Contains(b.logText(t), "not pinned") {
		t.Error("relay B warns of an unpinned peer; both are pinned")
	}

	// Unpinned, the impostor is trusted, with a warning.
	c := startDerp(t, bin, dir, "relay-c", "--mesh-key-file", meshKey, "--mesh-with", "http://"+imp.addr)
	waitFor(t, 20*time.Second, "relay C meshes with the impostor", func() bool {
		return imp.stats(t).MeshClients == 1
	})
	if !strings.Contains(c.logText(t), "not pinned") {
		t.Errorf("relay C's log has no warning about its unpinned peer")
	}

	// A key that does not parse is refused at start.
	out, err := exec.Command(bin, "derp", "--addr", "127.0.0.1:0", "--stun-addr", "", "--state", filepath.Join(dir, "bad"),
		"--mesh-key-file", meshKey, "--mesh-with", "http://"+a.addr+"#nokey").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "mkey:") {
		t.Errorf("beam derp with a bad pinned key: err %v, output %q; want a refusal naming the key form", err, out)
	}
}
