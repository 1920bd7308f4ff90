package main

import (
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/localapi/apitype"
)

// TestCoordinatorOnPostgres runs `beam coordinator --db postgres://...`
// against a private PostgreSQL server: devices join, their nodes are rows
// in PostgreSQL (and no SQLite file appears), and after the coordinator
// restarts they keep their names and addresses, a spent one-off key stays
// spent, and a new device joins beside them.
func TestCoordinatorOnPostgres(t *testing.T) {
	srv := pgtest.New(t)
	dsn := srv.NewDatabase(t)
	c := newClusterTB(t, "--db", dsn)

	reusable := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	once := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	a, b := c.device("alpha"), c.device("beta")
	a.mustUp("--authkey", reusable)
	b.mustUp("--authkey", once)
	waitFor(t, 15*time.Second, "alpha sees beta", func() bool { return hasPeer(a, "beta", true) })
	if _, err := os.Stat(filepath.Join(c.dir, "coord", "coordinator.db")); !os.IsNotExist(err) {
		t.Errorf("coordinator.db in the data directory: %v; want none with --db", err)
	}
	want := map[string]string{}
	for _, d := range []*device{a, b} {
		st := d.status()
		want[st.Self.Name] = fmt.Sprint(st.Self.IPs)
	}
	if got := nodeRows(t, dsn); !maps.Equal(got, want) {
		t.Fatalf("nodes in PostgreSQL = %v, want %v", got, want)
	}

	c.stopCoordinator()
	c.startCoordinator()
	waitFor(t, 30*time.Second, "alpha back on the coordinator", func() bool { return a.status().CoordinatorOnline })
	waitFor(t, 15*time.Second, "alpha sees beta after the restart", func() bool { return hasPeer(a, "beta", true) })
	for _, d := range []*device{a, b} {
		st := d.status()
		if got := fmt.Sprint(st.Self.IPs); st.Self.Name != d.name || got != want[d.name] {
			t.Errorf("after the restart %s is %s %s, want %s %s", d.name, st.Self.Name, got, d.name, want[d.name])
		}
	}
	// The one-off key beta used is spent in the database, not just in
	// the memory of the coordinator that took it.
	g := c.device("gamma")
	if out, errOut, err := g.up("--authkey", once); err == nil {
		t.Fatalf("gamma joined with beta's spent one-off key: %s%s", out, errOut)
	}
	g.mustUp("--authkey", reusable)
	waitFor(t, 15*time.Second, "alpha sees gamma", func() bool { return hasPeer(a, "gamma", false) })
	if got := nodeRows(t, dsn); len(got) != 3 || got["alpha"] != want["alpha"] || got["beta"] != want["beta"] {
		t.Errorf("nodes in PostgreSQL after the restart = %v, want alpha and beta as before and gamma", got)
	}
}

// TestServerOnPostgres runs `beam server --dev --db postgres://...`: a
// device joins and publishes a port, the edge serves it, and the route is
// a row in PostgreSQL, written through the store's claim check.
func TestServerOnPostgres(t *testing.T) {
	srv := pgtest.New(t)
	dsn := srv.NewDatabase(t)
	c, httpPort := startDevServerWith(t, 0, "--db", dsn)
	alpha := c.device("alpha")
	alpha.mustUp()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from alpha's app")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	out := strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), "--bg")...))
	if want := fmt.Sprintf("http://alpha.localhost:%d", httpPort); out != want {
		t.Fatalf("beam expose printed %q, want %q", out, want)
	}
	if body, err := curl(t, out+"/"); err != nil || body != "hello from alpha's app" {
		t.Fatalf("curl %s: %q, %v", out, body, err)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "srv", "coordinator.db")); !os.IsNotExist(err) {
		t.Errorf("coordinator.db in the data directory: %v; want none with --db", err)
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var host, proto string
	if err := conn.QueryRow(t.Context(), `SELECT r.host, r.proto FROM routes r JOIN nodes n ON n.id = r.node_id WHERE n.name = 'alpha'`).Scan(&host, &proto); err != nil {
		t.Fatalf("alpha's route in PostgreSQL: %v", err)
	}
	if host != "alpha.localhost" || proto != "http" {
		t.Errorf("alpha's route in PostgreSQL is %s %s, want alpha.localhost http", host, proto)
	}
}

// TestCoordinatorDBErrors: a --db that is not a PostgreSQL URL, or names
// a server that does not answer, stops beam coordinator with a message
// that says so, and never shows the password.
func TestCoordinatorDBErrors(t *testing.T) {
	bin := buildBeam(t)
	const pw = "s3cret-Pw"
	for _, tc := range []struct {
		name, db, want string
	}{
		{"not postgres", "mysql://beam:" + pw + "@127.0.0.1/beam", "bad --db"},
		{"malformed", "postgres://beam:" + pw + "@[::1/beam", "bad --db"},
		{"unreachable", fmt.Sprintf("postgres://beam:%s@127.0.0.1:%d/beam?sslmode=disable", pw, freePort(t)), "connect to PostgreSQL at 127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(bin, "coordinator", "--addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
				"--data", filepath.Join(dir, "coord"), "--db", tc.db)
			cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("beam coordinator --db %s started:\n%s", tc.name, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, out)
			}
			if strings.Contains(string(out), pw) {
				t.Errorf("output shows the password:\n%s", out)
			}
		})
	}
}

// hasPeer reports whether d's status lists peer name (and, with online,
// as online).
func hasPeer(d *device, name string, online bool) bool {
	return slices.ContainsFunc(d.status().Peers, func(p apitype.PeerStatus) bool {
		return p.Name == name && (p.Online || !online)
	})
}

// nodeRows returns the nodes stored in the database at dsn: name to
// [IPv4 IPv6], as status prints them.
func nodeRows(t *testing.T, dsn string) map[string]string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	rows, err := conn.Query(t.Context(), `SELECT name, ipv4, ipv6 FROM nodes`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var name, v4, v6 string
		if err := rows.Scan(&name, &v4, &v6); err != nil {
			t.Fatal(err)
		}
		got[name] = "[" + v4 + " " + v6 + "]"
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}
