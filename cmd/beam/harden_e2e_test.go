package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// The attacks of this file send the coordinator sealed requests that
// anyone can make (a node key made up on the spot) or that a registered
// node makes about itself, through the real binary, and check what they
// leave behind: replay records, database rows, log lines, stored text.

// coordKey fetches the coordinator's machine key from coordURL.
func coordKey(t *testing.T, coordURL string) key.MachinePublic {
	t.Helper()
	mk, _ := coordKeyEpoch(t, coordURL)
	return mk
}

// coordKeyEpoch fetches the coordinator's machine key and boot epoch
// (wire.HeaderBootEpoch) from coordURL.
func coordKeyEpoch(t *testing.T, coordURL string) (key.MachinePublic, []byte) {
	t.Helper()
	resp, err := http.Get(coordURL + wire.PathKey)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	mk, err := key.ParseMachinePublic(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("coordinator key %q: %v", b, err)
	}
	epoch, err := hex.DecodeString(resp.Header.Get(wire.HeaderBootEpoch))
	if err != nil || len(epoch) != wire.BootEpochLen {
		t.Fatalf("coordinator boot epoch %q: want %d bytes in hex", resp.Header.Get(wire.HeaderBootEpoch), wire.BootEpochLen)
	}
	return mk, epoch
}

// sealedBody returns the envelope of msg sealed by priv to mk.
func sealedBody(t *testing.T, priv key.NodePrivate, mk key.MachinePublic, msg any) []byte {
	t.Helper()
	clear, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(mk, clear)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bogusRegistrations returns n distinct sealed RegisterRequests by 64
// node keys made up for them, with auth keys that do not exist, for the
// coordinator at coordURL.
func bogusRegistrations(t *testing.T, coordURL string, n int) [][]byte {
	t.Helper()
	mk, epoch := coordKeyEpoch(t, coordURL)
	privs := make([]key.NodePrivate, 64)
	boxes := make([]key.Shared, len(privs))
	for i := range privs {
		privs[i] = key.NewNode()
		boxes[i] = privs[i].Shared(mk)
	}
	out := make([][]byte, n)
	now := time.Now()
	for i := range out {
		priv, box := privs[i%len(privs)], boxes[i%len(privs)]
		clear, err := json.Marshal(wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: priv.Public(),
			AuthKey: "beam-auth-bogus" + strconv.Itoa(i), Hostname: "flood", Epoch: epoch, Timestamp: now})
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: box.Seal(clear)}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// floodAnswers POSTs each body to path from the loopback address src
// with 16 workers and counts the answers by "STATUS CODE".
func floodAnswers(t *testing.T, coordURL, path string, src net.IP, bodies [][]byte) map[string]int {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	jobs := make(chan []byte)
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for b := range jobs {
				resp, err := hc.Post(coordURL+path, "application/json", bytes.NewReader(b))
				ans := "error"
				if err == nil {
					var eb wire.ErrorBody
					json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&eb)
					resp.Body.Close()
					ans = fmt.Sprintf("%d %s", resp.StatusCode, eb.Code)
				}
				mu.Lock()
				got[ans]++
				mu.Unlock()
			}
		})
	}
	for _, b := range bodies {
		jobs <- b
	}
	close(jobs)
	wg.Wait()
	return got
}

// TestUnauthenticatedRequestFlood sends 8,000 sealed registrations with
// made-up node keys and a made-up auth key from one address to beam
// server --dev. They must leave nothing behind: no replay records (the
// same request is refused as invalid again, not as a replay), a log line
// every 10 s rather than one per request, and beyond the per-address
// budget they are refused with 429 rate_limited before the box is
// opened, while a device on another address joins as usual.
func TestUnauthenticatedRequestFlood(t *testing.T) {
	maddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c, _ := startDevServerWith(t, 0, "--metrics-addr", maddr)
	bodies := bogusRegistrations(t, c.url, 8000)
	invalid := fmt.Sprintf("%d %s", http.StatusUnauthorized, wire.CodeAuthKeyInvalid)
	limited := fmt.Sprintf("%d %s", http.StatusTooManyRequests, wire.CodeRateLimited)

	t0 := time.Now()
	got := floodAnswers(t, c.url, wire.PathRegister, source(0), bodies)
	elapsed := time.Since(t0)
	t.Logf("8,000 bogus registrations from one address in %v: %v", elapsed.Round(time.Millisecond), got)
	if got[invalid]+got[limited] != len(bodies) {
		t.Errorf("answers %v; want only %q and %q", got, invalid, limited)
	}
	// The bucket holds DefaultMachineRequestBurst and refills at
	// DefaultMachineRequestRate a second: no more than that got through
	// to the registration code (plus a margin for the clock).
	budget := coordinator.DefaultMachineRequestBurst + int(coordinator.DefaultMachineRequestRate*elapsed.Seconds()*1.2) + 50
	if got[invalid] > budget {
		t.Errorf("%d requests from one address reached the registration in %v, want at most %d (burst %d, %d/s)",
			got[invalid], elapsed, budget, coordinator.DefaultMachineRequestBurst, coordinator.DefaultMachineRequestRate)
	}

	// A refused request was not recorded: sent again, it is refused for
	// its auth key again, not as a replay.
	again := floodAnswers(t, c.url, wire.PathRegister, source(1), bodies[:1])
	if again[invalid] != 1 {
		t.Errorf("the first bogus registration sent again: %v, want %q (it changed nothing, so nothing was recorded)", again, invalid)
	}

	// The device's address has its own budget.
	d := c.device("laptop")
	d.mustUp()

	fs := scrape(t, maddr)
	if n := fs.must(t, "beam_coordinator_replay_entries", nil); n > 20 {
		t.Errorf("beam_coordinator_replay_entries = %v after the flood and one device; want only the device's few requests", n)
	}
	if n := fs.must(t, "beam_coordinator_rate_limited_total", nil); int(n) != got[limited] {
		t.Errorf("beam_coordinator_rate_limited_total = %v, want the %d 429 answers", n, got[limited])
	}

	// The log has a line per refusedLogEvery (10 s), not per request.
	logb, err := os.ReadFile(filepath.Join(c.dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := len(regexp.MustCompile(`registrations? refused`).FindAll(logb, -1))
	if max := 3 + 2*int(time.Since(t0)/(10*time.Second)); lines > max {
		t.Errorf("%d log lines about refused registrations for %d refusals in %v, want at most %d", lines, got[invalid]+1, time.Since(t0).Round(time.Second), max)
	}
}

// TestUnauthenticatedRequestsOnPostgres sends 300 bogus registrations
// to a coordinator on PostgreSQL: none becomes a requests_seen row. A
// device's real requests do not either: they carry the coordinator's
// boot epoch, which no other coordinator or start takes; a registration
// of a node older than wire.BootEpochVersion (no epoch) does.
func TestUnauthenticatedRequestsOnPostgres(t *testing.T) {
	srv := pgtest.New(t)
	dsn := srv.NewDatabase(t)
	c := newClusterTB(t, "--db", dsn)
	rows := func() int {
		t.Helper()
		conn, err := pgx.Connect(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(t.Context())
		var n int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM requests_seen`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	got := floodAnswers(t, c.url, wire.PathRegister, source(0), bogusRegistrations(t, c.url, 300))
	t.Logf("300 bogus registrations: %v", got)
	if n := rows(); n != 0 {
		t.Errorf("%d rows in requests_seen after 300 refused registrations, want 0", n)
	}
	ak := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--reusable", "--coordinator", c.url))
	c.device("alpha").mustUp("--authkey", ak)
	if n := rows(); n != 0 {
		t.Errorf("%d rows in requests_seen after a device registered, want 0: its requests are bound to the coordinator's boot epoch", n)
	}
	priv := key.NewNode()
	legacy := sealedBody(t, priv, coordKey(t, c.url), wire.RegisterRequest{Version: wire.BootEpochVersion - 1, NodeKey: priv.Public(),
		AuthKey: ak, Hostname: "legacy", Timestamp: time.Now()})
	if got := floodAnswers(t, c.url, wire.PathRegister, source(1), [][]byte{legacy}); got["200 "] != 1 {
		t.Fatalf("registration of version %d: %v, want 200", wire.BootEpochVersion-1, got)
	}
	if n := rows(); n == 0 {
		t.Errorf("no row in requests_seen after a registration without a boot epoch; it must still be recorded")
	}
}

// TestSelfReportBounds registers a node in dev mode and has it report
// 30,000 endpoints (duplicates, multicast, unspecified among them) and a
// 1,000-byte hostname with terminal escapes. The coordinator keeps at
// most 64 usable endpoints and a printable hostname of at most 253
// bytes, so that is all the device that peers with it gets.
func TestSelfReportBounds(t *testing.T) {
	c, _ := startDevServer(t)
	beta := c.device("beta")
	beta.mustUp()
	mk, epoch := coordKeyEpoch(t, c.url)

	priv := key.NewNode()
	cc, err := coordclient.New(coordclient.Options{ServerURL: c.url, PrivateKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Register(t.Context(), coordclient.RegisterParams{Hostname: "mallory"}); err != nil {
		t.Fatalf("register in dev mode: %v", err)
	}
	eps := make([]netip.AddrPort, 0, 30000)
	for i := range 30000 {
		switch i % 5 {
		case 0:
			eps = append(eps, netip.MustParseAddrPort(fmt.Sprintf("198.51.100.%d:%d", i%250+1, 1000+i%60000)))
		case 1:
			eps = append(eps, netip.MustParseAddrPort("198.51.100.7:41641")) // the same, again
		case 2:
			eps = append(eps, netip.MustParseAddrPort(fmt.Sprintf("224.0.0.%d:41641", i%250+1)))
		case 3:
			eps = append(eps, netip.MustParseAddrPort("0.0.0.0:41641"))
		default:
			eps = append(eps, netip.MustParseAddrPort(fmt.Sprintf("[2001:db8::%x]:41641", i)))
		}
	}
	host := "mallory\x1b]0;pwned\x07\x1b[2J" + strings.Repeat("x", 1000)
	body := sealedBody(t, priv, mk, wire.MapRequest{Version: wire.CapabilityVersion, NodeKey: priv.Public(), Endpoints: eps, Hostname: host, Epoch: epoch, Timestamp: time.Now()})
	if got := floodAnswers(t, c.url, wire.PathMap, net.IPv4(127, 0, 0, 1), [][]byte{body}); got["200 "] != 1 {
		t.Fatalf("map request with 30,000 endpoints: %v, want 200", got)
	}

	var nodes []*wire.Node
	if err := json.Unmarshal([]byte(c.mustBeam("admin", "nodes", "list", "--json", "--coordinator", c.url)), &nodes); err != nil {
		t.Fatal(err)
	}
	var m *wire.Node
	for _, n := range nodes {
		if n.Key == priv.Public() {
			m = n
		}
	}
	if m == nil {
		t.Fatalf("mallory is not listed: %v", nodes)
	}
	if len(m.Endpoints) == 0 || len(m.Endpoints) > wire.MaxEndpoints {
		t.Errorf("coordinator stored %d endpoints, want 1-%d", len(m.Endpoints), wire.MaxEndpoints)
	}
	for _, ap := range m.Endpoints {
		if ap.Addr().IsMulticast() || ap.Addr().IsUnspecified() {
			t.Errorf("stored endpoint %v: multicast and unspecified addresses must be dropped", ap)
			break
		}
	}
	if len(m.Hostname) > wire.MaxHostnameLen || strings.ContainsAny(m.Hostname, "\x1b\x07") {
		t.Errorf("stored hostname is %d bytes %q..., want at most %d printable", len(m.Hostname), m.Hostname[:min(40, len(m.Hostname))], wire.MaxHostnameLen)
	}

	// What beta's daemon got: mallory's bounded report. Mallory then
	// joins again under another hostname; once beta shows the new name it
	// has had the update before it, and its daemon's peak memory shows
	// what the update cost (30,000 endpoints grew it by about 40 MiB).
	waitFor(t, 15*time.Second, "beta has mallory as a peer", func() bool { return hasPeer(beta, m.Name, false) })
	pid := daemonPID(t, beta)
	hwm := procStatusMiB(t, pid, "VmHWM")
	if _, err := cc.Register(t.Context(), coordclient.RegisterParams{Hostname: "mallory-two"}); err != nil {
		t.Fatalf("rejoin as mallory-two: %v", err)
	}
	waitFor(t, 15*time.Second, "beta sees mallory-two", func() bool { return hasPeer(beta, "mallory-two", false) })
	if grew := procStatusMiB(t, pid, "VmHWM") - hwm; grew > 20 {
		t.Errorf("beta's daemon peak memory grew %.1f MiB with mallory's report, want under 20", grew)
	}
}

// TestControlCharsInAdminTables has two nodes report hostnames and OS
// names with terminal escape sequences: one waiting for approval, one
// registered with an auth key. Neither beam admin nodes pending nor
// beam admin nodes list prints an escape character.
func TestControlCharsInAdminTables(t *testing.T) {
	c := newCluster(t)
	evilHost := "evil\x1b]0;pwned\x07\x1b[2Jhost\u202e"
	evilOS := "linux\x1b[31m\r\n"

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	codes := make(chan string, 1)
	waiter, err := coordclient.New(coordclient.Options{ServerURL: c.url, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	go waiter.Register(ctx, coordclient.RegisterParams{Hostname: evilHost, OS: evilOS, OnAuthURL: func(_, code string) { codes <- code }})
	select {
	case <-codes:
	case <-time.After(30 * time.Second):
		t.Fatal("no approval code for the waiting node")
	}

	ak := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	joined, err := coordclient.New(coordclient.Options{ServerURL: c.url, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joined.Register(t.Context(), coordclient.RegisterParams{AuthKey: ak, Hostname: evilHost, OS: evilOS}); err != nil {
		t.Fatalf("register with an auth key: %v", err)
	}

	for _, args := range [][]string{
		{"admin", "nodes", "pending", "--coordinator", c.url},
		{"admin", "nodes", "list", "--coordinator", c.url},
		{"admin", "nodes", "pending", "--json", "--coordinator", c.url},
		{"admin", "nodes", "list", "--json", "--coordinator", c.url},
		{"admin", "audit", "--coordinator", c.url},
	} {
		out := c.mustBeam(args...)
		if strings.ContainsAny(out, "\x1b\x07\r\u202e") {
			t.Errorf("beam %s printed control characters: %q", strings.Join(args, " "), out)
		}
		if !strings.Contains(out, "evil") {
			t.Errorf("beam %s does not show the node: %q", strings.Join(args, " "), out)
		}
	}
}

// TestMachineRateFlag: beam coordinator --machine-rate 5 lets an address
// send 5 sealed requests a second in bursts of 50; the rest are refused
// with 429 rate_limited.
func TestMachineRateFlag(t *testing.T) {
	c := newClusterTB(t, "--machine-rate", "5")
	bodies := bogusRegistrations(t, c.url, 300)
	t0 := time.Now()
	got := floodAnswers(t, c.url, wire.PathRegister, source(0), bodies)
	elapsed := time.Since(t0)
	t.Logf("300 bogus registrations in %v: %v", elapsed.Round(time.Millisecond), got)
	invalid := got[fmt.Sprintf("%d %s", http.StatusUnauthorized, wire.CodeAuthKeyInvalid)]
	if budget := 50 + int(5*elapsed.Seconds()*1.2) + 2; invalid > budget || invalid < 50 {
		t.Errorf("%d requests reached the registration in %v, want 50 (the burst) to %d", invalid, elapsed, budget)
	}
	if limited := got[fmt.Sprintf("%d %s", http.StatusTooManyRequests, wire.CodeRateLimited)]; limited+invalid != len(bodies) {
		t.Errorf("answers %v, want the rest refused with 429 rate_limited", got)
	}
}

// TestNeighboursDoNotLimitANode floods the coordinator with junk from
// the address a registered device sends from (a shared NAT, a /64, or
// the reverse proxy in front of the coordinator): the device's own
// requests are not charged to that address's rate limit, and while the
// flood lasts it still publishes a port. Envelopes forged with the
// device's public key that do not open are charged to their sender's
// address.
func TestNeighboursDoNotLimitANode(t *testing.T) {
	c, _ := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	shared := net.IPv4(127, 0, 0, 1) // where the daemon's requests come from
	limited := fmt.Sprintf("%d %s", http.StatusTooManyRequests, wire.CodeRateLimited)

	stop := make(chan struct{})
	var flooded sync.WaitGroup
	var mu sync.Mutex
	total := map[string]int{}
	bodies := bogusRegistrations(t, c.url, 2000)
	flooded.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			got := floodAnswers(t, c.url, wire.PathRegister, shared, bodies)
			mu.Lock()
			for k, v := range got {
				total[k] += v
			}
			mu.Unlock()
		}
	})
	waitFor(t, 20*time.Second, "the flood is refused with 429", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return total[limited] > 0
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	_, errOut, err := c.beam(nil, alpha.args("expose", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), "--tcp", "--bg")...)
	took := time.Since(start)
	close(stop)
	flooded.Wait()
	t.Logf("flood from the device's address: %v; beam expose took %v", total, took.Round(time.Millisecond))
	if err != nil {
		t.Fatalf("beam expose during a flood from the device's address: %v: %s", err, errOut)
	}

	// Envelopes with alpha's key that do not open: charged, so past the
	// burst the sender gets 429 instead of the coordinator opening each.
	var ak key.NodePublic
	if err := ak.UnmarshalText([]byte(alpha.status().Self.Key)); err != nil {
		t.Fatal(err)
	}
	forged := make([][]byte, coordinator.DefaultMachineRequestBurst+500)
	for i := range forged {
		if forged[i], err = json.Marshal(wire.Envelope{NodeKey: ak, Sealed: bytes.Repeat([]byte{byte(i)}, key.SealOverhead+16)}); err != nil {
			t.Fatal(err)
		}
	}
	got := floodAnswers(t, c.url, wire.PathMap, source(3), forged)
	t.Logf("forged envelopes with the device's key: %v", got)
	if got[limited] == 0 {
		t.Errorf("%d forged envelopes with a registered key from one address: %v, want 429s past the burst", len(forged), got)
	}
}
