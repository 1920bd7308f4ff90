package edgelab

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestServerCheck runs beam server check from a public client against
// the lab's beam server, looking the delegation up through the
// customer's DNS (which forwards example.test to the server's zone):
// once Pebble has issued the wildcard certificate every check passes; a
// closed port and a resolver that cannot reach the zone each fail with
// their fix.
func TestServerCheck(t *testing.T) {
	w := newWorld(t, worldConfig{acme: true, clients: 1})
	ctx := t.Context()
	srvIP := w.srv.Addr()
	resolver := hostPort(w.custDNS.Addr(), 53)
	check := func(extra ...string) (string, error) {
		args := []string{"server", "check", "--domain", domain, "--public-ip", srvIP.String(),
			"--addr", hostPort(srvIP, coordPort), "--http-addr", ":80", "--https-addr", ":443", "--dns-addr", ":53", "--stun-addr", ":3478",
			"--acme-ca", "https://" + hostPort(srvIP, pebblePort) + "/dir", "--cert-root", w.roots, "--timeout", "5s", "--resolver", resolver}
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		out, err := w.clients[0].Run(ctx, w.bin, append(args, extra...)...)
		return string(out), err
	}

	// Pebble issues the wildcard certificate a few seconds after start.
	var out string
	if err := retry(ctx, 90*time.Second, func() error {
		var err error
		out, err = check()
		return err
	}); err != nil {
		t.Fatalf("beam server check of a good setup: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ok   delegation of example.test: delegated to ns1.example.test.",
		fmt.Sprintf("ok   DNS at %s: answers for example.test", hostPort(srvIP, 53)),
		fmt.Sprintf("ok   edge HTTP at %s: answers", hostPort(srvIP, 80)),
		fmt.Sprintf("ok   coordinator at %s: answers", hostPort(srvIP, coordPort)),
		fmt.Sprintf("ok   certificate at %s: *.example.test", hostPort(srvIP, 443)),
		fmt.Sprintf("ok   STUN at %s: answers", hostPort(srvIP, 3478)),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("good setup: no %q in:\n%s", want, out)
		}
	}

	// Port 81 is closed: the check names it and what to open.
	out, err := check("--http-addr", ":81")
	if err == nil {
		t.Errorf("a closed port passed:\n%s", out)
	}
	for _, want := range []string{
		fmt.Sprintf("FAIL edge HTTP at %s: closed", hostPort(srvIP, 81)),
		"fix: check that beam server listens on tcp port 81 on all addresses and that firewalls and the cloud provider's security group let tcp 81 in",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("closed port: no %q in:\n%s", want, out)
		}
	}

	// A resolver that forwards example.test to a closed port cannot
	// follow the delegation: it answers SERVFAIL.
	broken := w.custDNS.StartHelper(ctx, helperCustomerDNS, hostPort(w.custDNS.Addr(), 5300), hostPort(srvIP, 54), w.records)
	waitOut(t, broken, "listening", 10*time.Second)
	out, err = check("--resolver", hostPort(w.custDNS.Addr(), 5300))
	if err == nil {
		t.Errorf("a broken delegation passed:\n%s", out)
	}
	for _, want := range []string{
		"FAIL delegation of example.test: the resolver " + hostPort(w.custDNS.Addr(), 5300) + " answered SERVFAIL",
		"fix: create example.test. NS ns1.example.test. at the registrar of example.test, with the glue record ns1.example.test. A " + srvIP.String(),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("broken delegation: no %q in:\n%s", want, out)
		}
	}
}
