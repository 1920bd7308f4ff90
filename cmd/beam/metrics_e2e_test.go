package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"beam.dev/beam/edge"
)

// families is a parsed scrape, by metric name.
type families map[string]*dto.MetricFamily

// parseMetrics parses Prometheus's text format with Prometheus's own parser.
func parseMetrics(t testing.TB, text []byte) families {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v\n%s", err, text)
	}
	return fs
}

// scrape fetches and parses http://addr/metrics.
func scrape(t testing.TB, addr string) families {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s, %v\n%s", addr, resp.Status, err, b)
	}
	return parseMetrics(t, b)
}

// value returns the value of the sample of name whose labels include
// want, summed over the samples that match (so a label left out sums
// over it); ok is false if none matches.
func (fs families) value(name string, want map[string]string) (v float64, ok bool) {
	f := fs[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, wv := range want {
			if have[k] != wv {
				continue next
			}
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		case m.Histogram != nil:
			v += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			v += m.GetUntyped().GetValue()
		}
	}
	return v, ok
}

// must is value that fails the test if nothing matches.
func (fs families) must(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := fs.value(name, want)
	if !ok {
		t.Fatalf("no sample %s%v; families: %v", name, want, fs.names())
	}
	return v
}

func (fs families) names() []string {
	var out []string
	for n := range fs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// TestMetrics runs beam server and two beam daemons with --metrics-addr,
// moves bytes between the daemons and a request through the edge, and
// reads every role's metrics the way Prometheus does: the daemons'
// traffic counters grow by what went through, the edge counts the
// request by route and status, and the coordinator counts the nodes.
func TestMetrics(t *testing.T) {
	srvMetrics, srvDebug := "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:"+strconv.Itoa(freePort(t))
	c, httpPort := startDevServerWith(t, 0, "--metrics-addr", srvMetrics, "--debug-addr", srvDebug)
	alphaMetricsPort, alphaDebugPort := freePort(t), freePort(t)
	alphaMetrics := "127.0.0.1:" + strconv.Itoa(alphaMetricsPort)
	socksPort, dnsPort := freePort(t), freePort(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp("--metrics-addr", alphaMetrics, "--debug-addr", "127.0.0.1:"+strconv.Itoa(alphaDebugPort),
		"--socks5", "127.0.0.1:"+strconv.Itoa(socksPort), "--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	beta.mustUp()
	// The flags apply when a daemon starts: beam up on a running one says so.
	if _, errOut, err := beta.up("--metrics-addr", "127.0.0.1:"+strconv.Itoa(freePort(t))); err != nil || !strings.Contains(errOut, "apply when a daemon starts") {
		t.Fatalf("beam up --metrics-addr on a running daemon: %v, stderr %q; want a warning", err, errOut)
	}

	// The daemon's metrics before any traffic: beta is a peer, with
	// counters for both paths.
	var before families
	waitFor(t, 15*time.Second, "alpha's metrics name beta", func() bool {
		before = scrape(t, alphaMetrics)
		_, ok := before.value("beam_daemon_peer_rx_bytes_total", map[string]string{"peer": "beta", "path": "relay"})
		return ok
	})
	for _, path := range []string{"direct", "relay"} {
		before.must(t, "beam_daemon_peer_tx_bytes_total", map[string]string{"peer": "beta", "path": path})
	}
	if v := before.must(t, "beam_daemon_running", nil); v != 1 {
		t.Fatalf("beam_daemon_running = %v, want 1", v)
	}
	rx0 := before.must(t, "beam_daemon_peer_rx_bytes_total", map[string]string{"peer": "beta"})
	tx0 := before.must(t, "beam_daemon_peer_tx_bytes_total", map[string]string{"peer": "beta"})
	pk0 := before.must(t, "beam_daemon_peer_tx_packets_total", map[string]string{"peer": "beta"})

	// 1 MiB to beta's echo server and back, through alpha's SOCKS5 proxy.
	const size = 1 << 20
	echo := echoServer(t)
	var conn net.Conn
	waitFor(t, 20*time.Second, "socks5 to beta's echo server", func() bool {
		var err error
		conn, err = dialSOCKS5("127.0.0.1:"+strconv.Itoa(socksPort), "beta", echo)
		return err == nil
	})
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	go conn.Write(payload)
	if _, err := io.ReadFull(conn, make([]byte, size)); err != nil {
		t.Fatalf("echo through beta: %v", err)
	}
	conn.Close()

	after := scrape(t, alphaMetrics)
	rx1 := after.must(t, "beam_daemon_peer_rx_bytes_total", map[string]string{"peer": "beta"})
	tx1 := after.must(t, "beam_daemon_peer_tx_bytes_total", map[string]string{"peer": "beta"})
	pk1 := after.must(t, "beam_daemon_peer_tx_packets_total", map[string]string{"peer": "beta"})
	if rx1-rx0 < size || tx1-tx0 < size {
		t.Errorf("alpha's bytes with beta grew by rx %v, tx %v after 1 MiB each way; want at least %d each", rx1-rx0, tx1-tx0, size)
	}
	if pk1-pk0 < size/1500 {
		t.Errorf("alpha's datagrams to beta grew by %v, want at least %d", pk1-pk0, size/1500)
	}
	if v := after.must(t, "beam_daemon_proxy_connections_total", map[string]string{"proxy": "socks5"}); v < 1 {
		t.Errorf("socks5 connections = %v, want >= 1", v)
	}
	if v := after.must(t, "beam_daemon_peer_path", map[string]string{"peer": "beta"}); v != 1 {
		t.Errorf("beam_daemon_peer_path{peer=beta} sums to %v, want one path at 1", v)
	}
	if v := after.must(t, "beam_daemon_peer_handshakes_total", map[string]string{"peer": "beta"}); v < 1 {
		t.Errorf("handshakes with beta = %v, want >= 1", v)
	}
	after.must(t, "beam_daemon_peer_last_handshake_timestamp_seconds", map[string]string{"peer": "beta"})

	// A MagicDNS query through --dns-listen is counted as answered locally.
	dns0, _ := after.value("beam_daemon_dns_queries_total", map[string]string{"answer": "local"})
	st := alpha.status()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn("beta."+st.DNSDomain), dns.TypeA)
	if r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, "127.0.0.1:"+strconv.Itoa(dnsPort)); err != nil || len(r.Answer) == 0 {
		t.Fatalf("MagicDNS query: %v, %v", r, err)
	}
	if v := scrape(t, alphaMetrics).must(t, "beam_daemon_dns_queries_total", map[string]string{"answer": "local"}); v != dns0+1 {
		t.Errorf("local DNS answers = %v, want %v", v, dns0+1)
	}

	// The listeners serve alpha's host only: beta, which may reach every
	// port of alpha, is refused at both (like at the proxies).
	playPeerAttacks(t, beta, "alpha", []peerAttack{
		{"metrics", alphaMetricsPort, []byte("GET /metrics HTTP/1.0\r\n\r\n")},
		{"pprof", alphaDebugPort, []byte("GET /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n")},
	})

	// beam metrics on beta, through its local API: it received the MiB.
	text := c.mustBeam(beta.args("metrics")...)
	bfs := parseMetrics(t, []byte(text))
	if v := bfs.must(t, "beam_daemon_peer_rx_bytes_total", map[string]string{"peer": "alpha"}); v < size {
		t.Errorf("beta's bytes from alpha = %v, want >= %d", v, size)
	}
	bfs.must(t, "beam_build_info", nil)
	only := c.mustBeam(beta.args("metrics", "beam_daemon_peer_tx")...)
	for f := range parseMetrics(t, []byte(only)) {
		if !strings.HasPrefix(f, "beam_daemon_peer_tx") {
			t.Errorf("beam metrics beam_daemon_peer_tx printed %s", f)
		}
	}

	// A request through the edge, to a route of alpha: counted by route
	// and status. The app answers 418 on /teapot; nothing else does.
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/teapot" {
			w.WriteHeader(http.StatusTeapot)
		}
		io.WriteString(w, "app")
	})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(aln)
	t.Cleanup(func() { app.Close() })
	c.mustBeam(alpha.args("expose", strconv.Itoa(aln.Addr().(*net.TCPAddr).Port), "--bg")...)
	edgeURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	get := func(host, path string) int {
		req, _ := http.NewRequest("GET", edgeURL+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, 15*time.Second, "alpha's route at the edge", func() bool { return get("alpha.localhost", "/") == 200 })
	if code := get("alpha.localhost", "/teapot"); code != http.StatusTeapot {
		t.Fatalf("GET /teapot through the edge = %d, want 418", code)
	}
	if code := get("nosuch.localhost", "/"); code != http.StatusNotFound {
		t.Fatalf("GET on a host without a route = %d, want 404", code)
	}
	srv := scrape(t, srvMetrics)
	if v := srv.must(t, "beam_edge_http_requests_total", map[string]string{"route": "alpha.localhost", "code": "418"}); v != 1 {
		t.Errorf("edge requests {alpha.localhost, 418} = %v, want 1", v)
	}
	if v := srv.must(t, "beam_edge_http_requests_total", map[string]string{"route": "none", "code": "404"}); v < 1 {
		t.Errorf("edge requests {none, 404} = %v, want >= 1", v)
	}
	if _, ok := srv.value("beam_edge_http_requests_total", map[string]string{"route": "nosuch.localhost"}); ok {
		t.Errorf("a host without a route got a route label of its own")
	}
	if v := srv.must(t, "beam_edge_http_request_duration_seconds", map[string]string{"route": "alpha.localhost"}); v < 2 {
		t.Errorf("edge latency observations for alpha.localhost = %v, want >= 2", v)
	}
	if v := srv.must(t, "beam_edge_routes", map[string]string{"kind": "http"}); v != 1 {
		t.Errorf("edge http routes = %v, want 1", v)
	}
	if v := srv.must(t, "beam_edge_connections_total", map[string]string{"result": "admitted"}); v < 1 {
		t.Errorf("edge connections admitted = %v, want >= 1", v)
	}

	// The coordinator and relay of the same process, on the same listener:
	// the edge's node, alpha and beta are online.
	if v := srv.must(t, "beam_coordinator_nodes", map[string]string{"state": "online"}); v != 3 {
		t.Errorf("online nodes = %v, want 3 (edge, alpha, beta)", v)
	}
	if v := srv.must(t, "beam_coordinator_registrations_total", map[string]string{"result": "ok"}); v < 3 {
		t.Errorf("registrations ok = %v, want >= 3", v)
	}
	if v := srv.must(t, "beam_coordinator_streams", nil); v != 3 {
		t.Errorf("open map streams = %v, want 3", v)
	}
	if v := srv.must(t, "beam_coordinator_map_fanout_seconds", nil); v < 1 {
		t.Errorf("map fan-out observations = %v, want >= 1 (beta joining reached alpha)", v)
	}
	if v := srv.must(t, "beam_coordinator_store_errors_total", nil); v != 0 {
		t.Errorf("store errors = %v, want 0", v)
	}
	if v := srv.must(t, "beam_relay_handshakes_total", map[string]string{"result": "accepted"}); v < 3 {
		t.Errorf("relay handshakes accepted = %v, want >= 3", v)
	}
	srv.must(t, "beam_relay_queue_packets", nil)
	srv.must(t, "beam_go_goroutines", nil)
	for name := range srv {
		if !strings.HasPrefix(name, "beam_") {
			t.Errorf("metric %s is not under beam_", name)
		}
	}

	// pprof on --debug-addr.
	resp, err := http.Get("http://" + srvDebug + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte("heap profile")) {
		t.Errorf("pprof heap: %s\n%.200s", resp.Status, b)
	}

	checkDashboard(t, srv, after)
}

// checkDashboard checks that configs/grafana-dashboard.json parses and
// that every beam_ metric its queries name is one Beam exports: found in
// the scrapes, or the edge's ACME metric (registered only with ACME).
func checkDashboard(t *testing.T, scrapes ...families) {
	t.Helper()
	known := map[string]bool{}
	for _, fs := range scrapes {
		for name, f := range fs {
			known[name] = true
			if f.GetType() == dto.MetricType_HISTOGRAM {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					known[name+s] = true
				}
			}
		}
	}
	descs := make(chan *prometheus.Desc, 16)
	go func() { (&edge.CertManager{}).Collector().Describe(descs); close(descs) }()
	for d := range descs {
		if m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String()); m != nil {
			known[m[1]] = true
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "configs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	names := regexp.MustCompile(`\bbeam_[a-z0-9_]+`)
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, n := range names.FindAllString(tg.Expr, -1) {
				if !known[n] {
					t.Errorf("dashboard panel %q queries %s, which Beam does not export", p.Title, n)
				}
			}
		}
	}
	if exprs < 10 {
		t.Errorf("dashboard has %d queries, want the roles' main metrics", exprs)
	}
}

// TestMetricsStandaloneRoles scrapes beam coordinator, beam derp and
// beam edge, each started alone with --metrics-addr.
func TestMetricsStandaloneRoles(t *testing.T) {
	bin := buildBeam(t)
	dir := t.TempDir()
	start := func(name string, args ...string) string {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, append(args, "--metrics-addr", addr)...)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
				t.Logf("%s log:\n%s", name, b)
			}
		})
		waitFor(t, 20*time.Second, name+" serves metrics", func() bool {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		return addr
	}
	coordAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	coord := start("coordinator", "coordinator", "--addr", coordAddr, "--data", filepath.Join(dir, "coord"), "--edge-domain", "example.test")
	fs := scrape(t, coord)
	if v := fs.must(t, "beam_coordinator_networks", nil); v != 1 {
		t.Errorf("coordinator networks = %v, want 1 (the default)", v)
	}
	if v := fs.must(t, "beam_coordinator_nodes", nil); v != 0 {
		t.Errorf("coordinator nodes = %v, want 0", v)
	}
	if _, ok := fs.value("beam_relay_clients", nil); ok {
		t.Errorf("a coordinator alone exports relay metrics")
	}
	relay := start("derp", "derp", "--addr", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--stun-addr", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--state", filepath.Join(dir, "derp"))
	fs = scrape(t, relay)
	if v := fs.must(t, "beam_relay_clients", map[string]string{"kind": "node"}); v != 0 {
		t.Errorf("relay clients = %v, want 0", v)
	}
	fs.must(t, "beam_relay_drops_total", map[string]string{"reason": "queue_full"})
	fs.must(t, "beam_relay_stun_dropped_total", nil)
	if _, ok := fs.value("beam_coordinator_nodes", nil); ok {
		t.Errorf("a relay alone exports coordinator metrics")
	}

	// beam edge: its own requests and its node's daemon metrics.
	tok, err := os.ReadFile(filepath.Join(dir, "coord", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	akCmd := exec.Command(bin, "admin", "--coordinator", "http://"+coordAddr, "authkey", "create", "--edge")
	akCmd.Env = append(os.Environ(), "BEAM_ADMIN_TOKEN="+strings.TrimSpace(string(tok)), "XDG_RUNTIME_DIR="+dir)
	key, err := akCmd.Output()
	if err != nil {
		t.Fatalf("authkey create: %v", err)
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	edgeMetrics := start("edge", "--state", filepath.Join(dir, "edge"), "--socket", filepath.Join(dir, "edge.sock"), "edge",
		"--coordinator", "http://"+coordAddr, "--authkey", strings.TrimSpace(string(key)), "--domain", "example.test",
		"--http-addr", httpAddr, "--https-addr", "")
	waitFor(t, 20*time.Second, "edge answers", func() bool {
		req, _ := http.NewRequest("GET", "http://"+httpAddr+"/", nil)
		req.Host = "nosuch.example.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNotFound
	})
	fs = scrape(t, edgeMetrics)
	if v := fs.must(t, "beam_edge_http_requests_total", map[string]string{"route": "none", "code": "404"}); v != 1 {
		t.Errorf("edge requests {none, 404} = %v, want 1", v)
	}
	if v := fs.must(t, "beam_daemon_running", nil); v != 1 {
		t.Errorf("the edge's node: beam_daemon_running = %v, want 1", v)
	}
	if v := scrape(t, coord).must(t, "beam_coordinator_nodes", map[string]string{"state": "online"}); v != 1 {
		t.Errorf("coordinator online nodes = %v, want 1 (the edge)", v)
	}
}

// TestMetricsRefuseRemote checks that every role refuses to serve metrics
// or profiles on an address off loopback, before it starts.
func TestMetricsRefuseRemote(t *testing.T) {
	bin := buildBeam(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, flag string
		args       []string
	}{
		{"daemon metrics on any address", "--metrics-addr", []string{"--socket", filepath.Join(dir, "d.sock"), "--state", filepath.Join(dir, "d"), "daemon", "--metrics-addr", "0.0.0.0:9464"}},
		{"daemon pprof on a LAN address", "--debug-addr", []string{"--socket", filepath.Join(dir, "d.sock"), "--state", filepath.Join(dir, "d"), "daemon", "--debug-addr", "198.51.100.7:6060"}},
		{"server metrics on a name", "--metrics-addr", []string{"server", "--dev", "--data", filepath.Join(dir, "s"), "--metrics-addr", "example.com:9464"}},
		{"coordinator metrics on IPv6 any", "--metrics-addr", []string{"coordinator", "--data", filepath.Join(dir, "c"), "--metrics-addr", "[::]:9464"}},
		{"derp pprof on any address", "--debug-addr", []string{"derp", "--state", filepath.Join(dir, "r"), "--debug-addr", "0.0.0.0:6060"}},
		{"edge metrics on any address", "--metrics-addr", []string{"--state", filepath.Join(dir, "e"), "edge", "--domain", "example.test", "--metrics-addr", "0.0.0.0:9464"}},
		{"up passes no remote address to its daemon", "--metrics-addr", []string{"--socket", filepath.Join(dir, "u.sock"), "--state", filepath.Join(dir, "u"), "up", "--coordinator", "http://127.0.0.1:1", "--metrics-addr", "192.0.2.1:9464"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("still running after 30 s: it did not refuse the address\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), tc.flag) || !strings.Contains(string(out), "not a loopback address") {
				t.Fatalf("exit %v, output %q; want %s refused as not a loopback address", err, out, tc.flag)
			}
		})
	}
}
