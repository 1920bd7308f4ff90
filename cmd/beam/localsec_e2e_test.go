package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamnet"
)

// impostor is an HTTP server on a port a coordinator used to listen on:
// it records the Authorization header of every request, and answers GET
// /key with the real coordinator's key (anyone can fetch it), the key
// proof with noise, and anything else with an empty JSON list.
type impostor struct {
	mu    sync.Mutex
	auths []string // guarded by mu
}

func startImpostor(t *testing.T, addr, keyText string) *impostor {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("impostor listen on the coordinator's old port: %v", err)
	}
	im := &impostor{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		im.mu.Lock()
		if a := r.Header.Get("Authorization"); a != "" {
			im.auths = append(im.auths, r.Method+" "+r.URL.Path+": "+a)
		}
		im.mu.Unlock()
		switch r.URL.Path {
		case "/key":
			io.WriteString(w, keyText)
		case "/key/proof":
			io.WriteString(w, strings.Repeat("ab", 32))
		default:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "[]")
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return im
}

func (im *impostor) tokensSeen() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]string(nil), im.auths...)
}

// TestAdminTokenNotSentToImpostor: a coordinator that crashed leaves its
// discovery files behind; whatever listens on its port next must not get
// the admin token from beam admin, whether it finds the coordinator with
// --data or through the user's copy. The coordinator itself passes the
// check, and a clean stop removes both files.
func TestAdminTokenNotSentToImpostor(t *testing.T) {
	c, _ := startDevServer(t)
	data := filepath.Join(c.dir, "srv")
	userEnv := "XDG_RUNTIME_DIR=" + c.dir
	noToken := "BEAM_ADMIN_TOKEN=" // the token comes from the discovery file

	resp, err := http.Get(c.url + "/key")
	if err != nil {
		t.Fatal(err)
	}
	keyText, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	for _, args := range [][]string{{"admin", "--data", data, "nodes", "list"}, {"admin", "nodes", "list"}} {
		if out, errOut, err := c.beam([]string{noToken, userEnv}, args...); err != nil {
			t.Fatalf("beam %v with the coordinator running: %v\n%s%s", args, err, out, errOut)
		}
	}

	// A crash: the discovery files stay.
	c.coord.Process.Kill()
	c.coord.Wait()
	c.coord = nil
	for _, p := range []string{filepath.Join(data, "coordinator.json"), filepath.Join(c.dir, "beam", "coordinator.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("discovery file after a crash: %v, want it left behind (the case under test)", err)
		}
	}
	im := startImpostor(t, c.addr, string(keyText))
	for _, args := range [][]string{{"admin", "--data", data, "nodes", "list"}, {"admin", "nodes", "list"}} {
		out, errOut, err := c.beam([]string{noToken, userEnv}, args...)
		if err == nil {
			t.Errorf("beam %v against the impostor succeeded:\n%s", args, out)
		}
		if !strings.Contains(errOut, "did not prove it holds machine key") {
			t.Errorf("beam %v: stderr %q, want it to say the server did not prove the coordinator's key", args, errOut)
		}
	}
	if got := im.tokensSeen(); len(got) != 0 {
		t.Errorf("the impostor on the coordinator's old port got the admin token: %q", got)
	}
}

// TestDiscoveryRemovedOnStop: a coordinator that stops cleanly removes
// its discovery files, the data directory's and the user's copy.
func TestDiscoveryRemovedOnStop(t *testing.T) {
	c := newCluster(t)
	files := []string{filepath.Join(c.dir, "coord", "coordinator.json"), filepath.Join(c.dir, "beam", "coordinator.json")}
	for _, p := range files {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("discovery file while running: %v", err)
		}
	}
	c.stopCoordinator()
	for _, p := range files {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after a clean stop: %v, want it removed", filepath.Base(filepath.Dir(p))+"/"+filepath.Base(p), err)
		}
	}
}

// TestDevCoordinatorNotReachedThroughNodes: a dev coordinator trusts
// connections from its host's loopback (joining without an auth key,
// the console's sign-in), and a node forwards a peer's connections to
// its host's loopback. A peer must not reach the coordinator that way,
// neither through a device on the coordinator's host nor through the
// server's own edge node, while it still reaches an app there.
func TestDevCoordinatorNotReachedThroughNodes(t *testing.T) {
	c, _ := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	socks := "127.0.0.1:" + strconv.Itoa(freePort(t))
	beta := c.device("beta")
	beta.mustUp("--socks5", socks)
	app := tcpServer(t, func(cn net.Conn) {
		io.WriteString(cn, "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nthe app")
	})
	via := func(host string, port int, path string) (string, error) {
		return curl(t, "--max-time", "10", "--socks5-hostname", socks, fmt.Sprintf("http://%s:%d%s", host, port, path))
	}
	waitFor(t, 30*time.Second, "beta reaches an app on alpha's host through alpha", func() bool {
		out, err := via("alpha", app, "/")
		return err == nil && strings.Contains(out, "the app")
	})
	_, port, _ := net.SplitHostPort(c.addr)
	cport, _ := strconv.Atoi(port)
	for _, host := range []string{"alpha", "edge"} {
		for _, path := range []string{"/key", "/console/"} {
			if out, err := via(host, cport, path); err == nil || strings.Contains(out, "mkey:") {
				t.Errorf("a peer reached the dev coordinator through %s at %s: err=%v, answer %.200q", host, path, err, out)
			}
		}
	}
}

// TestPeerUDPNotForwardedToOwnSockets: a peer's datagrams to a node's
// overlay address on the node's WireGuard port or peer relay port are
// not forwarded to those sockets from the host's loopback; a datagram to
// an app's port still is.
func TestPeerUDPNotForwardedToOwnSockets(t *testing.T) {
	c, _ := startDevServer(t)
	wgPort, relayPort := freeUDPPort(t), freeUDPPort(t)
	alpha := c.device("alpha")
	alpha.mustUp("--port", strconv.Itoa(wgPort), "--relay-server="+strconv.Itoa(relayPort))
	alphaIP := alpha.status().Self.IPs[0]

	// The attacker: a peer joined in-process (dev mode, from loopback).
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m := &beamnet.Server{ControlURL: c.url, Hostname: "mallory", Dir: t.TempDir()}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("mallory joins: %v", err)
	}

	// An app's UDP port is reachable: the path works.
	app, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := app.ReadFrom(buf)
			if err != nil {
				return
			}
			app.WriteTo(buf[:n], from)
		}
	}()
	send := func(port int) net.Conn {
		uc, err := m.Dial(ctx, "udp", net.JoinHostPort(alphaIP.String(), strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("mallory dial udp %d: %v", port, err)
		}
		t.Cleanup(func() { uc.Close() })
		io.WriteString(uc, "hello")
		return uc
	}
	waitFor(t, 30*time.Second, "an app's UDP port answers mallory through alpha", func() bool {
		uc := send(app.LocalAddr().(*net.UDPAddr).Port)
		uc.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 16)
		n, err := uc.Read(buf)
		return err == nil && string(buf[:n]) == "hello"
	})

	logPath := filepath.Join(alpha.state, "beam.log")
	for _, tc := range []struct {
		name string
		port int
	}{{"WireGuard", wgPort}, {"peer relay", relayPort}} {
		host := "host=127.0.0.1:" + strconv.Itoa(tc.port)
		waitFor(t, 30*time.Second, "alpha refuses mallory's datagram to its "+tc.name+" port", func() bool {
			send(tc.port)
			b, _ := os.ReadFile(logPath)
			for l := range strings.SplitSeq(string(b), "\n") {
				if strings.Contains(l, "own listeners") && strings.Contains(l, "proto=udp") && strings.Contains(l, host) {
					return true
				}
			}
			return false
		})
	}
}

// TestDevCoordinatorRefusesRebinding: a web page that re-points a name of
// its own to 127.0.0.1 (DNS rebinding) has the browser send the dev
// coordinator requests over loopback, but under that name in Host and
// with the page's Origin. A node registering that way, without an auth
// key, must not join; a node on the host, under 127.0.0.1, still does.
func TestDevCoordinatorRefusesRebinding(t *testing.T) {
	c, _ := startDevServer(t)
	_, port, _ := net.SplitHostPort(c.addr)
	rebound := "rebind.attacker.example:" + port
	target, err := url.Parse(c.url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = rebound
			pr.Out.Header.Set("Origin", "http://"+rebound)
		},
		FlushInterval: -1,
	})
	t.Cleanup(proxy.Close)
	if out, err := curl(t, "-H", "Host: "+rebound, "-H", "Origin: http://"+rebound, c.url+"/key"); err != nil || !strings.Contains(out, "mkey:") {
		t.Fatalf("the coordinator's key under a rebound name: %q, %v; the public key stays public", out, err)
	}

	mallory := c.device("mallory")
	if out, errOut, err := c.beam(nil, mallory.args("up", "--coordinator", proxy.URL, "--hostname", "mallory", "--timeout", "5s")...); err == nil {
		t.Fatalf("beam up through a rebound name joined without an auth key: %s %s", out, errOut)
	}
	alpha := c.device("alpha")
	alpha.mustUp()
	if p := peerByName(alpha.status(), "mallory"); p != nil {
		t.Fatalf("mallory, registered through a rebound name, is alpha's peer: %+v", p)
	}
	// The dev server's own node list holds alpha and no mallory.
	nodes := c.mustBeam("admin", "nodes", "list", "--coordinator", c.url)
	if strings.Contains(nodes, "mallory") || !strings.Contains(nodes, "alpha") {
		t.Fatalf("admin nodes = %q, want alpha and no mallory", nodes)
	}
}
