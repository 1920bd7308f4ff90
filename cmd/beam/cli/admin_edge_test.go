package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

func TestAdminRoutesAndDNSCommands(t *testing.T) {
	dir := t.TempDir()
	dnsFile := filepath.Join(dir, "dns.json")
	os.WriteFile(dnsFile, []byte(`{"nameservers": ["192.0.2.53:53"]}`), 0o600)
	data := filepath.Join(dir, "coord")
	url, stop := startTestCoordinator(t, data, "--edge-domain", "example.test", "--edge-host", "edge.example.test",
		"--edge-tcp-ports", "20000-20001", "--dns-config", dnsFile)
	defer stop()
	tok, _ := os.ReadFile(filepath.Join(data, "admin.token"))
	env := map[string]string{"BEAM_ADMIN_TOKEN": strings.TrimSpace(string(tok)), "BEAM_COORDINATOR": url}

	// An edge key makes edge nodes.
	out, err := runAdmin(t, env, "authkey", "create", "--edge")
	if err != nil {
		t.Fatal(err)
	}
	edge, _ := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	reg, err := edge.Register(context.Background(), coordclient.RegisterParams{AuthKey: strings.TrimSpace(out), Hostname: "edge"})
	if err != nil || !reg.Node.Edge {
		t.Fatalf("edge registration = %+v, %v", reg, err)
	}

	out, err = runAdmin(t, env, "authkey", "create")
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	if _, err := cl.Register(context.Background(), coordclient.RegisterParams{AuthKey: strings.TrimSpace(out), Hostname: "laptop"}); err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Expose(context.Background(), wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432})
	if err != nil || resp.URL != "tcp://edge.example.test:20000" {
		t.Fatalf("expose = %+v, %v", resp, err)
	}

	out, err = runAdmin(t, env, "routes", "list", "--json")
	var routes []wire.RouteInfo
	if err != nil || json.Unmarshal([]byte(out), &routes) != nil || len(routes) != 1 || routes[0].Host != "db.example.test" ||
		routes[0].NodeName != "laptop" || routes[0].PublicPort != 20000 {
		t.Fatalf("routes list --json = %s, %v", out, err)
	}
	if out, err = runAdmin(t, env, "routes", "list"); err != nil || !strings.Contains(out, "tcp://edge.example.test:20000") {
		t.Fatalf("routes list = %q, %v", out, err)
	}
	if _, err := runAdmin(t, env, "routes", "remove", "DB.example.test."); err != nil {
		t.Fatal(err)
	}
	if _, err := runAdmin(t, env, "routes", "remove", "db.example.test"); err == nil || !strings.Contains(err.Error(), "no route") {
		t.Fatalf("second remove = %v, want no route", err)
	}
	if out, _ = runAdmin(t, env, "routes", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("routes after remove = %s", out)
	}

	// DNS settings: from --dns-config, then replaced from a file.
	out, err = runAdmin(t, env, "dns", "config", "get")
	if err != nil || !strings.Contains(out, "192.0.2.53:53") {
		t.Fatalf("dns config get = %q, %v", out, err)
	}
	os.WriteFile(dnsFile, []byte(`{"routes": {"corp.example": ["100.64.0.9:53"]}}`), 0o600)
	if _, err := runAdmin(t, env, "dns", "config", "set", dnsFile); err != nil {
		t.Fatal(err)
	}
	out, err = runAdmin(t, env, "dns", "config", "get")
	if err != nil || strings.Contains(out, "192.0.2.53") || !strings.Contains(out, "corp.example") {
		t.Fatalf("dns config after set = %q, %v", out, err)
	}
	os.WriteFile(dnsFile, []byte(`{"routes": {}, "bogus": 1}`), 0o600)
	if _, err := runAdmin(t, env, "dns", "config", "set", dnsFile); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("set with unknown field = %v", err)
	}
	// beam coordinator has no public zone; beam server has.
	if _, err := runAdmin(t, env, "dns", "txt", "set", "_acme-challenge.example.test", "v"); err == nil || !strings.Contains(err.Error(), "no public DNS zone") {
		t.Fatalf("dns txt set without zone = %v", err)
	}
}

func TestCoordinatorEdgeFlags(t *testing.T) {
	var c coordinator.Options
	o := CoordinatorEdgeOptions{Domain: "example.test", TCPPorts: "20000", UDPPorts: "21000-21999"}
	if err := applyCoordinatorEdge(&o, &c); err != nil || c.EdgeTCPPorts != (coordinator.PortRange{First: 20000, Last: 20000}) ||
		c.EdgeUDPPorts != (coordinator.PortRange{First: 21000, Last: 21999}) || c.EdgeDomain != "example.test" {
		t.Errorf("apply(%+v) = %v, %+v", o, err, c)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"nameservers": ["192.0.2.53:53"], "x": 1}`), 0o600)
	for _, o := range []CoordinatorEdgeOptions{
		{TCPPorts: "9-1"},
		{UDPPorts: "x-y"},
		{TCPPorts: "0-10"},
		{DNSConfigFile: filepath.Join(t.TempDir(), "missing.json")},
		{DNSConfigFile: bad},
	} {
		var c coordinator.Options
		if err := applyCoordinatorEdge(&o, &c); err == nil {
			t.Errorf("apply(%+v) = nil error", o)
		}
	}
}
