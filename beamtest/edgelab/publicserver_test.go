package edgelab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// readmeSection is what README.md's "Public server" section tells a
// newcomer to run: the beam commands of its sh blocks (without "beam"
// and comments), the comment of each, and the DNS records of its plain
// block ("NAME TYPE VALUE").
type readmeSection struct {
	server, check, authKey, up, expose, netcheck []string
	exposePrints                                 string // the URL the expose line's comment says it prints
	records                                      [][]string
}

// readPublicServerSection reads the "Public server" section of the
// repository's README.md.
func readPublicServerSection(t *testing.T) *readmeSection {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs := &readmeSection{}
	in, block := false, "" // in the section; the open block's language ("-" for none)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = line == "## Public server"
			continue
		}
		if !in {
			continue
		}
		if lang, ok := strings.CutPrefix(line, "```"); ok {
			switch {
			case block != "":
				block = ""
			case lang == "":
				block = "-"
			default:
				block = lang
			}
			continue
		}
		switch block {
		case "sh":
			cmd, comment, _ := strings.Cut(line, " #")
			fields := strings.Fields(cmd)
			if len(fields) < 2 || fields[0] != "beam" {
				continue // host setup: make, install, setcap
			}
			var slot *[]string
			switch {
			case fields[1] == "server" && (len(fields) < 3 || fields[2] != "check"):
				slot = &rs.server
			case fields[1] == "server":
				slot = &rs.check
			case slices.Equal(fields[1:min(4, len(fields))], []string{"admin", "authkey", "create"}):
				slot = &rs.authKey
			case fields[1] == "up":
				slot = &rs.up
			case fields[1] == "netcheck":
				slot = &rs.netcheck
			case fields[1] == "expose":
				slot = &rs.expose
				if u, ok := strings.CutPrefix(strings.TrimSpace(comment), "prints "); ok {
					rs.exposePrints = u
				}
			default:
				t.Fatalf("README's Public server section runs %q, which this test does not know", cmd)
			}
			if *slot != nil {
				t.Fatalf("README's Public server section has two commands like %q", cmd)
			}
			*slot = fields[1:]
		case "-":
			if fields := strings.Fields(line); len(fields) == 3 {
				rs.records = append(rs.records, fields)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string][]string{"beam server": rs.server, "beam server check": rs.check, "beam admin authkey create": rs.authKey,
		"beam up": rs.up, "beam expose": rs.expose, "beam netcheck": rs.netcheck} {
		if c == nil {
			t.Fatalf("README's Public server section has no %s command", name)
		}
	}
	if rs.exposePrints == "" || len(rs.records) == 0 {
		t.Fatalf("README's Public server section names no URL beam expose prints (%q) or no DNS records (%q)", rs.exposePrints, rs.records)
	}
	return rs
}

// readmeSubst replaces in the README's commands what the lab must:
// the domain, the public address, the auth key, and paths under the
// home directory, which go to dir.
type readmeSubst struct {
	domain string
	ip     netip.Addr
	key    string
	dir    string
}

func (s readmeSubst) apply(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch {
		case a == "KEY" && s.key != "":
			a = s.key
		case strings.HasPrefix(a, "~/"):
			a = filepath.Join(s.dir, a[2:])
		}
		out[i] = strings.NewReplacer("example.com", s.domain, "203.0.113.10", s.ip.String()).Replace(a)
	}
	return out
}

// TestPublicServerREADME follows README.md's "Public server" section in
// the lab: beam server started with its command (the domain, address,
// data directory and ACME directory replaced by the lab's: Pebble, whose
// DNS-01 lookups go through the customer's DNS to the server's zone),
// its records looked up with dig through a resolver, an auth key made
// with its command, a device behind a NAT joined with its beam up line,
// and beam expose printing the URL it names, which curl fetches over
// HTTPS by name from a public client, trusting only Pebble's root.
// beam netcheck --server from the device and beam server check pass;
// a resolver that cannot follow the delegation, a firewall closing a
// port, and a second server whose domain the CA cannot validate each
// fail with their fix.
func TestPublicServerREADME(t *testing.T) {
	rs := readPublicServerSection(t)
	start := time.Now()
	var sub readmeSubst
	w := newWorld(t, worldConfig{acme: true, clients: 1, systemResolver: true, server: func(w *world) []string {
		sub = readmeSubst{domain: domain, ip: w.srv.Addr(), dir: w.dir}
		return append(sub.apply(rs.server), "--acme-ca", w.pebbleDir(), "--acme-ca-root", w.pebbleCA)
	}})
	ctx := t.Context()
	srvIP := w.srv.Addr()
	resolver := w.custDNS.Addr().String()

	// The summary names the records the README says to create, and the
	// resolver finds them.
	waitOut(t, w.server, "open these ports", 10*time.Second)
	for _, r := range rs.records {
		r = sub.apply(r)
		if want := r[0] + " " + r[1] + " " + r[2]; !strings.Contains(string(w.server.Output()), want) {
			t.Errorf("beam server's summary does not name the README's record %q:\n%s", want, w.server.Output())
		}
		if got := dig(t, w.clients[0], resolver, r[0], r[1]); !slices.Contains(got, r[2]) {
			t.Errorf("dig %s %s = %q, want %s", r[0], r[1], got, r[2])
		}
	}

	// The auth key, on the server, with the README's command.
	out, err := w.srv.Run(ctx, w.bin, rs.authKey...)
	if err != nil {
		t.Fatalf("beam %s: %v", strings.Join(rs.authKey, " "), err)
	}
	sub.key = strings.TrimSpace(string(out))

	// The laptop joins with the README's beam up line and publishes port
	// 3000, where its app listens.
	up := sub.apply(rs.up)
	host := up[slices.Index(up, "--hostname")+1]
	d := w.addDevice(host, nslab.NATEasy, sub.key)
	inDevice := func(args ...string) []string {
		return append([]string{w.bin, "--socket", d.socket, "--state", d.state}, args...)
	}
	upCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	if args := inDevice(up...); true {
		if out, err := d.host.Run(upCtx, args[0], args[1:]...); err != nil {
			t.Fatalf("beam %s: %v\n%s", strings.Join(up, " "), err, out)
		}
	}
	wantURL := sub.apply([]string{rs.exposePrints})[0]
	exp := d.host.Start(ctx, w.bin, inDevice(rs.expose...)[1:]...)
	// The URL is its first line of standard output (standard error says
	// more).
	waitOut(t, exp, "Ctrl-C to stop", 20*time.Second)
	var line string
	retry(ctx, 10*time.Second, func() error {
		var ok bool
		if line, _, ok = strings.Cut(string(exp.Output()), "\n"); !ok {
			return errors.New("no line yet")
		}
		return nil
	})
	if line != wantURL {
		t.Fatalf("beam %s printed %q, want %q as the README says", strings.Join(rs.expose, " "), line, wantURL)
	}
	name := strings.TrimPrefix(wantURL, "https://")
	if got := dig(t, w.clients[0], resolver, name, "A"); !slices.Equal(got, []string{srvIP.String()}) {
		t.Errorf("dig %s A = %q, want %s", name, got, srvIP)
	}
	// curl resolves the name through the client's resolver and trusts
	// only Pebble's root; the certificate comes seconds after start.
	var body []byte
	if err := retry(ctx, 30*time.Second, func() error {
		var err error
		body, err = w.clients[0].Run(ctx, "curl", "-sS", "--max-time", "5", "--cacert", w.roots, wantURL+"/")
		return err
	}); err != nil {
		t.Fatalf("curl %s: %v", wantURL, err)
	}
	if want := fmt.Sprintf("hello from %s host=%s ", host, name); !strings.HasPrefix(string(body), want) {
		t.Fatalf("curl %s = %q, want %q...", wantURL, body, want)
	}

	// The README's netcheck --server from the laptop, and its check on
	// the server, pass (the certificate is Pebble's, hence --cert-root).
	netcheck := func() (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		args := inDevice(append(sub.apply(rs.netcheck), "--cert-root", w.roots, "--timeout", "3s")...)
		out, err := d.host.Run(ctx, args[0], args[1:]...)
		return string(out), err
	}
	out2, err := netcheck()
	if err != nil {
		t.Fatalf("beam netcheck --server: %v\n%s", err, out2)
	}
	good := []string{
		"ok   delegation of example.test: delegated to ns1.example.test.",
		fmt.Sprintf("ok   DNS at %s: answers for example.test", hostPort(srvIP, 53)),
		fmt.Sprintf("ok   edge HTTP at %s: answers", hostPort(srvIP, 80)),
		fmt.Sprintf("ok   coordinator at %s: answers", hostPort(srvIP, coordPort)),
		fmt.Sprintf("ok   certificate at %s: *.example.test", hostPort(srvIP, 443)),
		fmt.Sprintf("ok   STUN at %s: answers", hostPort(srvIP, 3478)),
	}
	for _, want := range good {
		if !strings.Contains(out2, want) {
			t.Errorf("beam netcheck --server: no %q in:\n%s", want, out2)
		}
	}
	check := func(h *nslab.Host, s readmeSubst, extra ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		args := append(append(s.apply(rs.check), "--cert-root", w.roots, "--timeout", "3s"), extra...)
		out, err := h.Run(ctx, w.bin, args...)
		return string(out), err
	}
	if out, err := check(w.srv, sub); err != nil {
		t.Errorf("beam server check on the server: %v\n%s", err, out)
	} else {
		for _, want := range good {
			if !strings.Contains(out, want) {
				t.Errorf("beam server check: no %q in:\n%s", want, out)
			}
		}
	}

	// A resolver that cannot follow the delegation (it forwards the
	// domain to a port where nothing answers).
	broken := w.custDNS.StartHelper(ctx, helperCustomerDNS, hostPort(w.custDNS.Addr(), 5300), hostPort(srvIP, 54), w.records)
	waitOut(t, broken, "listening", 10*time.Second)
	out3, err := check(w.srv, sub, "--resolver", hostPort(w.custDNS.Addr(), 5300))
	wantFails(t, "broken delegation", out3, err,
		"FAIL delegation of example.test: the resolver "+hostPort(w.custDNS.Addr(), 5300)+" answered SERVFAIL",
		"fix: create example.test. NS ns1.example.test. at the registrar of example.test, with the glue record ns1.example.test. A "+srvIP.String())

	// A firewall on the server drops port 80 from outside: the check from
	// a public client, and netcheck --server from the laptop, say so.
	if out, err := w.srv.Run(ctx, "nft", `add table inet beamfw; add chain inet beamfw input { type filter hook input priority 0; }; add rule inet beamfw input iifname != "lo" tcp dport 80 drop`); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	closed := []string{
		fmt.Sprintf("FAIL edge HTTP at %s: closed", hostPort(srvIP, 80)),
		"fix: check that beam server listens on tcp port 80 on all addresses and that firewalls and the cloud provider's security group let tcp 80 in",
	}
	out4, err := check(w.clients[0], sub)
	wantFails(t, "closed port", out4, err, closed...)
	out5, err := netcheck()
	wantFails(t, "netcheck --server with a closed port", out5, err, closed...)
	if out, err := w.srv.Run(ctx, "nft", "delete table inet beamfw"); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}

	// A second server, started as the README says for broken.test, a
	// domain the CA's resolver does not find delegated to it: its order
	// fails, and the check says why and what to fix.
	srv2 := w.lab.AddServer("srv2")
	w.netnsResolvConf(srv2, w.custDNS.Addr())
	sub2 := readmeSubst{domain: "broken.test", ip: srv2.Addr(), dir: filepath.Join(w.dir, "srv2")}
	server2 := srv2.Start(ctx, w.bin, append(sub2.apply(rs.server), "--acme-ca", w.pebbleDir(), "--acme-ca-root", w.pebbleCA)...)
	waitOut(t, server2, "beam server running", 30*time.Second)
	var out6 string
	var err6 error
	if err := retry(ctx, 30*time.Second, func() error {
		if out6, err6 = check(srv2, sub2); !strings.Contains(out6, "failed (") {
			return fmt.Errorf("order not failed yet: %v", err6)
		}
		return nil
	}); err != nil {
		t.Fatalf("beam server check of broken.test: %v\n%s\nserver:\n%s", err, out6, tail(server2.Stderr()))
	}
	wantFails(t, "failed order", out6, err6,
		fmt.Sprintf("FAIL certificate at %s: no certificate for beam-check.broken.test: the ACME order for *.broken.test at %s failed (1 order(s), the last", hostPort(srv2.Addr(), 443), w.pebbleDir()),
		"fix: the CA could not read the DNS-01 record _acme-challenge.broken.test from this server's zone: create broken.test. NS ns1.broken.test. at the registrar of broken.test with the glue record ns1.broken.test. A "+srv2.Addr().String())
	// Without the admin token (a device, or a --data the user cannot
	// read) the coordinator tells only that the order failed: its error
	// names the CA's host and the resolvers the server used.
	out7, err := check(w.clients[0], sub2, "--data", filepath.Join(w.dir, "nowhere"))
	wantFails(t, "failed order without the admin token", out7, err,
		fmt.Sprintf("FAIL certificate at %s: no certificate for beam-check.broken.test: the server's ACME order for *.broken.test failed", hostPort(srv2.Addr(), 443)),
		"fix: the server tells why only to its admin: run beam server check on the server with the server's --data")
	if strings.Contains(out7, w.pebbleDir()) {
		t.Errorf("the check without the admin token names the CA:\n%s", out7)
	}
	// The servers said so in their logs too.
	if line := waitOut(t, server2, "certificate order failed", 5*time.Second); !strings.Contains(line, "problem=unauthorized") || !strings.Contains(line, "_acme-challenge.broken.test") {
		t.Errorf("the failed order's log line names no problem or fix: %s", line)
	}
	waitOut(t, w.server, `msg="certificate issued" name=*.example.test`, 5*time.Second)
	t.Logf("README's public server path in %s", time.Since(start).Round(100*time.Millisecond))
}

// dig asks the resolver at server for name's records of type typ with
// the real dig, from h, and returns the answers.
func dig(t *testing.T, h *nslab.Host, server, name, typ string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := h.Run(ctx, "dig", "+short", "+time=2", "+tries=2", "@"+server, name, typ)
	if err != nil {
		t.Fatalf("dig %s %s: %v", name, typ, err)
	}
	return strings.Fields(string(out))
}

// wantFails checks that a check exited non-zero (err) and that its
// output holds each of wants.
func wantFails(t *testing.T, what, out string, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s exited 0:\n%s", what, out)
	}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("%s: no %q in:\n%s", what, want, out)
		}
	}
}
