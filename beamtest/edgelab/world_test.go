package edgelab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/localclient"
)

// Ports and names of the lab. Every namespace has its own loopback, so
// the same ports serve every device.
const (
	domain      = "example.test"
	coordPort   = 8080  // beam server: coordinator and relay
	pebblePort  = 14000 // Pebble's ACME directory
	pebbleMgmt  = 15000 // Pebble's management API (roots)
	appPort     = 3000  // helperApp on each device's loopback
	tlsAppPort  = 8443  // helperApp with the device's own TLS certificate
	redisPort   = 6379  // redis-server on a device
	dnsAppPort  = 5353  // helperDNSApp on a device
	tcpFirst    = 20000 // edge ports for --tcp routes
	udpFirst    = 21000 // edge ports for --udp routes
	customerDNS = "customer.test"
)

// world is one test's lab: beam server (coordinator, relay, STUN, zone,
// edge) and Pebble on the server namespace, the customer's DNS server on
// another public host, public clients, and devices behind NATs.
type world struct {
	t        *testing.T
	lab      *nslab.Lab
	bin      string
	dir      string
	srv      *nslab.Host
	server   *nslab.Proc // beam server
	pebble   *nslab.Proc
	custDNS  *nslab.Host
	records  string // the customer DNS records file
	clients  []*nslab.Host
	coordURL string
	token    string // admin token file
	authKey  string // joins the default network
	roots    string // PEM: the ACME CA's root, for clients
	pebbleCA string // PEM: the root of Pebble's own HTTPS certificate
	devices  []*device
	// serverStart is when beam server was started.
	serverStart time.Time
	// systemResolver is worldConfig.systemResolver.
	systemResolver bool
}

// worldConfig selects the parts of a world.
type worldConfig struct {
	// acme runs Pebble and the customer DNS, and gives the edge HTTPS.
	acme bool
	// clients is the number of public clients (at least 1).
	clients int
	// server, if set, returns beam server's arguments in place of the
	// lab's own (with acme, w.pebbleDir and w.pebbleCA name the CA); the
	// world then creates no auth key.
	server func(w *world) []string
	// systemResolver makes the customer's DNS (which forwards the rest
	// to Beam's zone) the system resolver of the public clients and
	// devices, so that they resolve names as a host on the internet
	// does. Needs acme.
	systemResolver bool
}

// newWorld builds the lab and starts the servers. Call it, and world
// methods not marked goroutine-safe, from the test's goroutine.
func newWorld(t *testing.T, cfg worldConfig) *world {
	t.Helper()
	// The directory first: cleanups run last-in first-out, so it is
	// removed after the lab has stopped the processes that write in it.
	dir := shortTempDir(t)
	w := &world{t: t, lab: nslab.New(t), bin: nslab.BuildBinary(t, "beam.dev/beam/cmd/beam"), dir: dir, systemResolver: cfg.systemResolver}
	t.Cleanup(w.saveLogs)
	w.srv = w.lab.AddServer("srv")
	for i := range max(cfg.clients, 1) {
		w.clients = append(w.clients, w.lab.AddPublicClient("client"+strconv.Itoa(i)))
	}
	ctx := t.Context()
	srvIP := w.srv.Addr()
	args := []string{"server", "--data", filepath.Join(w.dir, "srv"), "--domain", domain,
		"--addr", hostPort(srvIP, coordPort), "--public-url", "http://" + hostPort(srvIP, coordPort),
		"--http-addr", ":80", "--dns-addr", hostPort(srvIP, 53), "--public-ip", srvIP.String(),
		"--stun-addr", ":3478",
		"--tcp-ports", fmt.Sprintf("%d-%d", tcpFirst, tcpFirst+99),
		"--udp-ports", fmt.Sprintf("%d-%d", udpFirst, udpFirst+99)}
	if cfg.acme {
		w.custDNS = w.lab.AddServer("custdns")
		w.startPebble(ctx)
		w.records = filepath.Join(w.dir, "customer.records")
		if err := writeRecords(w.records); err != nil {
			t.Fatal(err)
		}
		p := w.custDNS.StartHelper(ctx, helperCustomerDNS, hostPort(w.custDNS.Addr(), 53), hostPort(srvIP, 53), w.records)
		waitOut(t, p, "listening", 10*time.Second)
		// The coordinator checks custom-domain proofs with the system
		// resolver: give the server namespace the customer's DNS as its
		// resolver ("ip netns exec" mounts /etc/netns/NS/resolv.conf).
		w.netnsResolvConf(w.srv, w.custDNS.Addr())
		if cfg.systemResolver {
			for _, c := range w.clients {
				w.netnsResolvConf(c, w.custDNS.Addr())
			}
		}
		args = append(args, "--https-addr", ":443", "--acme-ca", w.pebbleDir(), "--acme-ca-root", w.pebbleCA)
	} else {
		args = append(args, "--https-addr", "")
	}
	if cfg.server != nil {
		args = cfg.server(w)
	}
	w.serverStart = time.Now()
	w.server = w.srv.Start(ctx, w.bin, args...)
	waitOut(t, w.server, "beam server running", 30*time.Second)
	w.coordURL = "http://" + hostPort(srvIP, coordPort)
	w.token = filepath.Join(w.dir, "srv", "admin.token")
	if cfg.server == nil {
		w.authKey = w.createAuthKey("")
	}
	if cfg.acme {
		w.roots = w.fetchACMERoot(ctx)
	}
	return w
}

// pebbleDir is the URL of Pebble's ACME directory.
func (w *world) pebbleDir() string {
	return "https://" + hostPort(w.srv.Addr(), pebblePort) + "/dir"
}

// saveLogs writes the output of the servers and daemons to the directory
// named by BEAM_EDGELAB_OUT, if set.
func (w *world) saveLogs() {
	dir := os.Getenv("BEAM_EDGELAB_OUT")
	if dir == "" {
		return
	}
	dir = filepath.Join(dir, w.t.Name()+"-logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.t.Log(err)
		return
	}
	write := func(name string, p *nslab.Proc) {
		if p != nil {
			os.WriteFile(filepath.Join(dir, name+".log"), append(p.Output(), p.Stderr()...), 0o644)
		}
	}
	write("server", w.server)
	write("pebble", w.pebble)
	for _, d := range w.devices {
		write(d.name, d.daemon)
	}
	w.t.Logf("process logs in %s", dir)
}

// waitOut waits for a line of p's output containing s.
func waitOut(t *testing.T, p *nslab.Proc, s string, d time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	line, err := p.WaitOutput(ctx, s)
	if err != nil {
		t.Fatalf("waiting for %q: %v\nstdout:\n%s\nstderr:\n%s", s, err, tail(p.Output()), tail(p.Stderr()))
	}
	return line
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// netnsResolvConf makes h's processes resolve through the DNS server at
// addr, until the test ends.
func (w *world) netnsResolvConf(h *nslab.Host, addr netip.Addr) {
	dir := filepath.Join("/etc/netns", h.Namespace())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver "+addr.String()+"\noptions timeout:2 attempts:2\n"), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// startPebble starts the ACME test CA on the server. Its HTTPS certificate
// is issued for the server's address by Pebble's test root (copied from
// the module); its validation checks DNS through the customer's DNS
// server, which forwards Beam's zone, and TLS-ALPN-01 on port 443 (the
// edge).
func (w *world) startPebble(ctx context.Context) {
	t := w.t
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		t.Fatalf("find the pebble module: %v", err)
	}
	certs := filepath.Join(strings.TrimSpace(string(out)), "test", "certs")
	caPEM, err := os.ReadFile(filepath.Join(certs, "pebble.minica.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKeyPEM, err := os.ReadFile(filepath.Join(certs, "pebble.minica.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(w.dir, "pebble")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w.pebbleCA = filepath.Join(dir, "minica.pem")
	if err := os.WriteFile(w.pebbleCA, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := issueCert(t, caPEM, caKeyPEM, "pebble", nil, []netip.Addr{w.srv.Addr()})
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := errors.Join(os.WriteFile(certFile, certPEM, 0o644), os.WriteFile(keyFile, keyPEM, 0o600)); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  hostPort(w.srv.Addr(), pebblePort),
		"managementListenAddress":        hostPort(w.srv.Addr(), pebbleMgmt),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       80,
		"tlsPort":                        443,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles":                       map[string]any{"default": map[string]any{"description": "default", "validityPeriod": 7776000}},
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := nslab.BuildBinary(t, "github.com/letsencrypt/pebble/v2/cmd/pebble")
	cmd := w.srv.Command(ctx, bin, "-config", cfgFile, "-dnsserver", hostPort(w.custDNS.Addr(), 53))
	cmd.Env = append(cmd.Env, "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	w.pebble = w.srv.StartCmd(cmd)
	waitOut(t, w.pebble, "ACME directory available", 20*time.Second)
}

// fetchACMERoot downloads the root Pebble signs certificates with, from
// its management API, as a client would be given it.
func (w *world) fetchACMERoot(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := w.clients[0].Run(ctx, "curl", "-sSf", "--max-time", "10", "--cacert", w.pebbleCA,
		"https://"+hostPort(w.srv.Addr(), pebbleMgmt)+"/roots/0")
	if err != nil || !bytes.Contains(out, []byte("BEGIN CERTIFICATE")) {
		w.t.Fatalf("fetch the ACME root: %v: %s", err, out)
	}
	f := filepath.Join(w.dir, "acme-root.pem")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		w.t.Fatal(err)
	}
	return f
}

// issueCert issues a certificate for names and ips signed by the CA (PEM),
// or self-signed as a CA when caPEM is nil. It returns certificate and key
// as PEM.
func issueCert(t *testing.T, caPEM, caKeyPEM []byte, cn string, names []string, ips []netip.Addr) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     names,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	parent, signer := tmpl, any(key)
	if caPEM == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		cb, _ := pem.Decode(caPEM)
		kb, _ := pem.Decode(caKeyPEM)
		if cb == nil || kb == nil {
			t.Fatal("issueCert: CA is not PEM")
		}
		if parent, err = x509.ParseCertificate(cb.Bytes); err != nil {
			t.Fatal(err)
		}
		if k, err := x509.ParsePKCS1PrivateKey(kb.Bytes); err == nil {
			signer = k
		} else if signer, err = x509.ParsePKCS8PrivateKey(kb.Bytes); err != nil {
			if signer, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
				t.Fatal(err)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// admin runs beam admin against the coordinator and returns its output.
// It is goroutine-safe.
func (w *world) admin(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	args = append([]string{"admin"}, args...)
	args = append(args, "--coordinator", w.coordURL, "--token-file", w.token)
	out, err := w.srv.Run(ctx, w.bin, args...)
	return strings.TrimSpace(string(out)), err
}

// createAuthKey creates a reusable auth key for network ("" is the
// default network).
func (w *world) createAuthKey(network string) string {
	w.t.Helper()
	args := []string{"authkey", "create", "--reusable"}
	if network != "" {
		args = append(args, "--network", network)
	}
	out, err := w.admin(w.t.Context(), args...)
	if err != nil {
		w.t.Fatalf("create auth key: %v", err)
	}
	return out
}

// client runs the Go client helper on public client i. It is
// goroutine-safe.
func (w *world) client(ctx context.Context, i int, args ...string) (string, error) {
	args = append([]string{"-zone", hostPort(w.srv.Addr(), 53), "-ca", w.roots}, args...)
	out, err := w.clients[i].RunHelper(ctx, helperClient, args...)
	return strings.TrimSpace(string(out)), err
}

// curl runs curl on public client i with names resolved to the edge
// (curl here has no c-ares, so --resolve stands in for --dns-servers; the
// test checks the zone answers the edge's address). It returns the
// output; with -w it ends with what -w writes. It is goroutine-safe.
func (w *world) curl(ctx context.Context, i int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	base := []string{"-sS", "--max-time", "20"}
	if w.roots != "" {
		base = append(base, "--cacert", w.roots)
	}
	for _, a := range args {
		for scheme, port := range map[string]string{"https://": "443", "http://": "80"} {
			if h, ok := strings.CutPrefix(a, scheme); ok {
				h, _, _ = strings.Cut(h, "/")
				base = append(base, "--resolve", h+":"+port+":"+w.srv.Addr().String())
			}
		}
	}
	out, err := w.clients[i].Run(ctx, "curl", append(base, args...)...)
	return string(out), err
}

// device is one beam daemon in its own host namespace behind a NAT.
type device struct {
	w       *world
	name    string
	host    *nslab.Host
	state   string
	socket  string
	authKey string
	daemon  *nslab.Proc
	lc      *localclient.Client
}

// addDevice adds a host of the given NAT kind, starts a beam daemon and
// the device's web app there, and joins the network of authKey ("" is the
// default network). daemonArgs are extra flags of beam daemon.
func (w *world) addDevice(name string, kind nslab.NATKind, authKey string, daemonArgs ...string) *device {
	w.t.Helper()
	if authKey == "" {
		authKey = w.authKey
	}
	d := &device{w: w, name: name, host: w.lab.AddNATHost(name, kind), authKey: authKey,
		state: filepath.Join(w.dir, name), socket: filepath.Join(w.dir, name+".sock")}
	d.lc = &localclient.Client{Socket: d.socket}
	if err := os.MkdirAll(d.state, 0o700); err != nil {
		w.t.Fatal(err)
	}
	if w.systemResolver {
		// Before the daemon starts: ip netns exec mounts it then.
		w.netnsResolvConf(d.host, w.custDNS.Addr())
	}
	ctx := w.t.Context()
	d.daemon = d.host.Start(ctx, w.bin, append([]string{"--socket", d.socket, "--state", d.state, "daemon", "--hostname", name}, daemonArgs...)...)
	app := d.host.StartHelper(ctx, helperApp, name, "127.0.0.1:"+strconv.Itoa(appPort))
	w.t.Cleanup(d.stopStrayDaemon)
	waitOut(w.t, d.daemon, "daemon started", 20*time.Second)
	waitOut(w.t, app, "listening", 10*time.Second)
	w.devices = append(w.devices, d)
	return d
}

// up joins the device. It is goroutine-safe.
func (d *device) up(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	out, err := d.beam(ctx, "up", "--coordinator", d.w.coordURL, "--authkey", d.authKey, "--hostname", d.name, "--timeout", "30s")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(out, d.name+" ") {
		return fmt.Errorf("beam up %s printed %q", d.name, out)
	}
	return nil
}

// upAll joins the devices concurrently.
func upAll(ctx context.Context, ds ...*device) error {
	errc := make(chan error, len(ds))
	for _, d := range ds {
		go func() { errc <- d.up(ctx) }()
	}
	var errs []error
	for range ds {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// beam runs the beam CLI against the device's daemon (through its Unix
// socket) and returns its standard output. It is goroutine-safe.
func (d *device) beam(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.w.bin, append([]string{"--socket", d.socket, "--state", d.state}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: beam %s: %w: %s", d.name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.TrimSpace(string(out)), nil
}

// expose runs beam expose ... --bg and returns the URL it printed.
func (d *device) expose(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := d.beam(ctx, append(append([]string{"expose"}, args...), "--bg")...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// stopStrayDaemon stops a daemon that `beam up` started itself had ours
// not answered (see natlab).
func (d *device) stopStrayDaemon() {
	b, err := os.ReadFile(filepath.Join(d.state, "daemon.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || pid == d.daemon.PID() {
		return
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !bytes.Contains(cmdline, []byte(d.state)) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// shortTempDir returns a temporary directory with a short path (Unix
// socket paths must fit in 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "edgelab-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func hostPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// retry calls f every 200 ms until it returns nil or d passes, and
// returns its last error.
func retry(ctx context.Context, d time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

// rssKiB returns the resident set size of process pid in KiB.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

var _ = apitype.Route{}
