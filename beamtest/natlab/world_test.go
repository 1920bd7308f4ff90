package natlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"beam.dev/beam/types/key"
)

// Ports used inside the lab. Every namespace has its own loopback, so the
// same ports serve every device.
const (
	coordPort = 8080 // coordinator HTTP, on the server
	relayPort = 3340 // relay HTTP, on the relay's server
	stunPort  = 3478 // relay STUN (UDP), on the relay's server
	echoPort  = 7000 // nslab.HelperTCPEcho on each device's loopback
	sinkPort  = 7001 // helperSink on each device's loopback
)

// Path names as beam status reports them.
const (
	pathDirect = "direct"
	pathRelay  = "relay"
	// pathPeerRelay is a UDP peer relay server on another node.
	pathPeerRelay = "peer-relay"
	pathNone      = "none"
)

// world is one test's lab: a coordinator and one or more relays on servers
// in the internet namespace, and the devices that join them.
type world struct {
	t        testing.TB
	lab      *nslab.Lab
	bin      string // the beam binary
	dir      string // state directories, sockets, key files
	out      string // artefacts
	tcpCC    string // the lab's TCP congestion control, if the test chose one
	srv      *nslab.Host
	coord    *nslab.Proc
	coordURL string
	authKey  string // joins the default network
	relays   []*relay
	devices  []*device
}

// relay is one beam derp process.
type relay struct {
	host *nslab.Host
	proc *nslab.Proc
	url  string
}

// worldConfig selects the servers of a world.
type worldConfig struct {
	// edgeDomain, if set, is the coordinator's --edge-domain (for tests
	// that run beam edge).
	edgeDomain string
	// meshed runs two relays on two servers, meshed with each other and
	// listed as the two nodes of one region; otherwise one relay runs on
	// the coordinator's server.
	meshed bool
	// tcpCC, if set, lists the TCP congestion controls the test can live
	// with, most wanted first; the first one this host allows namespaces
	// to choose becomes the default of every namespace of the lab, instead
	// of this machine's, and is kept in world.tcpCC.
	tcpCC []string
	// ipv6 gives the lab IPv6 (nslab's Lab.EnableIPv6): every device has
	// a global IPv6 address behind its router's IPv4 NAT, and the relay
	// map lists the relay's IPv6 STUN address too. Not with meshed.
	ipv6 bool
}

// newWorld builds a lab and starts the coordinator and relays. Call it,
// and every world method not documented as goroutine-safe, from the test's
// own goroutine.
func newWorld(t testing.TB, cfg worldConfig) *world {
	t.Helper()
	// The directory first: cleanups run last-in first-out, so it is
	// removed after the lab has stopped the daemons that write in it
	// (they save their state on the way out).
	dir := shortTempDir(t)
	w := &world{
		t:   t,
		lab: nslab.New(t),
		bin: nslab.BuildBinary(t, "beam.dev/beam/cmd/beam"),
		dir: dir,
		out: artefactDir(t),
	}
	t.Cleanup(w.saveLogs)
	if cfg.ipv6 {
		w.lab.EnableIPv6()
	}
	if len(cfg.tcpCC) > 0 {
		w.tcpCC = w.lab.SetTCPCongestionControl(cfg.tcpCC...)
	}
	w.srv = w.lab.AddServer("srv")
	ctx := t.Context()

	coordArgs := []string{"coordinator", "--addr", hostPort(w.srv.Addr(), coordPort), "--data", filepath.Join(w.dir, "coord")}
	if !cfg.meshed {
		w.relays = append(w.relays, w.startRelay(w.srv, nil, ""))
		stun := hostPort(w.srv.Addr(), stunPort)
		if cfg.ipv6 {
			stun += "," + hostPort(w.srv.Addr6(), stunPort)
		}
		coordArgs = append(coordArgs, "--derp", w.relays[0].url, "--stun", stun)
	} else {
		h1, h2 := w.lab.AddServer("derp1"), w.lab.AddServer("derp2")
		keyFile := filepath.Join(w.dir, "mesh.key")
		if err := os.WriteFile(keyFile, []byte("natlab-mesh-key-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Each relay pins the other's machine key.
		u1, u2 := relayURL(h1.Addr())+"#"+w.relayKey(h1), relayURL(h2.Addr())+"#"+w.relayKey(h2)
		w.relays = append(w.relays, w.startRelay(h1, []string{u2}, keyFile), w.startRelay(h2, []string{u1}, keyFile))
		mapFile := filepath.Join(w.dir, "derpmap.json")
		if err := os.WriteFile(mapFile, meshDERPMap(h1.Addr(), h2.Addr()), 0o600); err != nil {
			t.Fatal(err)
		}
		coordArgs = append(coordArgs, "--derp-map", mapFile)
	}
	if cfg.edgeDomain != "" {
		coordArgs = append(coordArgs, "--edge-domain", cfg.edgeDomain)
	}
	w.coord = w.srv.Start(ctx, w.bin, coordArgs...)
	w.coordURL = "http://" + hostPort(w.srv.Addr(), coordPort)
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := w.coord.WaitOutput(waitCtx, "coordinator listening"); err != nil {
		t.Fatal(err)
	}
	for _, r := range w.relays {
		if _, err := r.proc.WaitOutput(waitCtx, "relay listening"); err != nil {
			t.Fatal(err)
		}
	}
	w.authKey = w.createAuthKey("")
	return w
}

// createAuthKey creates a reusable auth key for the network (the default
// network if empty; the coordinator creates a network on its first key).
func (w *world) createAuthKey(network string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.t.Context(), 20*time.Second)
	defer cancel()
	args := []string{"admin", "authkey", "create", "--coordinator", w.coordURL,
		"--token-file", filepath.Join(w.dir, "coord", "admin.token"), "--reusable"}
	if network != "" {
		args = append(args, "--network", network)
	}
	out, err := w.srv.Run(ctx, w.bin, args...)
	if err != nil {
		w.t.Fatalf("create auth key: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func relayURL(a netip.Addr) string { return "http://" + hostPort(a, relayPort) }

// meshDERPMap is a relay map with one region whose two nodes are the relays
// on a1 and a2.
func meshDERPMap(a1, a2 netip.Addr) []byte {
	type node struct {
		Name     string `json:"name"`
		RegionID int    `json:"region_id"`
		URL      string `json:"url"`
		STUNAddr string `json:"stun_addr"`
	}
	type region struct {
		RegionID   int    `json:"region_id"`
		RegionCode string `json:"region_code"`
		Name       string `json:"name"`
		Nodes      []node `json:"nodes"`
	}
	m := map[string]map[string]region{"regions": {"1": {
		RegionID: 1, RegionCode: "lab", Name: "lab mesh",
		Nodes: []node{
			{Name: "1a", RegionID: 1, URL: relayURL(a1), STUNAddr: hostPort(a1, stunPort)},
			{Name: "1b", RegionID: 1, URL: relayURL(a2), STUNAddr: hostPort(a2, stunPort)},
		},
	}}}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // static types; cannot fail
	}
	return b
}

// relayKey creates the machine key the relay on h will load and returns
// its public half's text, to pin in --mesh-with.
func (w *world) relayKey(h *nslab.Host) string {
	w.t.Helper()
	dir := filepath.Join(w.dir, "derp-"+h.Name())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		w.t.Fatal(err)
	}
	k := key.NewMachine()
	text, _ := k.MarshalText()
	if err := os.WriteFile(filepath.Join(dir, "derp.key"), append(text, '\n'), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return k.Public().String()
}

// startRelay starts beam derp on h, listening on all of h's addresses so
// that /derp/stats answers on h's loopback.
func (w *world) startRelay(h *nslab.Host, meshWith []string, meshKeyFile string) *relay {
	w.t.Helper()
	args := []string{"derp", "--addr", ":" + strconv.Itoa(relayPort), "--stun-addr", ":" + strconv.Itoa(stunPort),
		"--state", filepath.Join(w.dir, "derp-"+h.Name())}
	if len(meshWith) > 0 {
		args = append(args, "--mesh-with", strings.Join(meshWith, ","), "--mesh-key-file", meshKeyFile)
	}
	return &relay{host: h, proc: h.Start(w.t.Context(), w.bin, args...), url: relayURL(h.Addr())}
}

// relayStats are the counters of a relay's /derp/stats that the tests read.
type relayStats struct {
	Clients          int   `json:"clients"`
	MeshClients      int   `json:"mesh_clients"`
	RemoteClients    int   `json:"remote_clients"`
	PacketsRelayed   int64 `json:"packets_relayed"`
	BytesRelayed     int64 `json:"bytes_relayed"`
	PacketsForwarded int64 `json:"packets_forwarded"`
	PacketsDropped   int64 `json:"packets_dropped"`
}

// stats reads the relay's counters from inside its namespace (the relay
// serves them to loopback clients only). It is goroutine-safe.
func (r *relay) stats(ctx context.Context) (relayStats, error) {
	var s relayStats
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := r.host.Run(ctx, "curl", "-sSf", "--max-time", "5", "http://127.0.0.1:"+strconv.Itoa(relayPort)+"/derp/stats")
	if err != nil {
		return s, fmt.Errorf("relay stats: %w", err)
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return s, fmt.Errorf("relay stats %q: %w", out, err)
	}
	return s, nil
}

// device is one beam daemon in its own host namespace, with an echo server
// and a hashing sink on the host's loopback for peers to reach.
type device struct {
	w       *world
	name    string
	kind    nslab.NATKind
	authKey string
	host    *nslab.Host
	state   string
	socket  string
	daemon  *nslab.Proc
	echo    *nslab.Proc
	sink    *nslab.Proc
	lc      *localclient.Client
}

// addDevice adds a host of the given NAT kind and starts a beam daemon and
// the loopback servers in it. The daemon is started with `beam daemon`
// through the lab, which stops it by its PID; `beam up` then finds it
// running. Call from the test's goroutine.
func (w *world) addDevice(name string, kind nslab.NATKind) *device {
	w.t.Helper()
	return w.addDeviceWith(name, kind, nil)
}

// addDeviceWith is addDevice that runs setup (if not nil) on the new host
// before the daemon starts and passes daemonArgs to beam daemon.
func (w *world) addDeviceWith(name string, kind nslab.NATKind, setup func(*nslab.Host), daemonArgs ...string) *device {
	w.t.Helper()
	h := w.lab.AddNATHost(name, kind)
	if setup != nil {
		setup(h)
	}
	d := &device{
		w: w, name: name, kind: kind, host: h, authKey: w.authKey,
		state:  filepath.Join(w.dir, name),
		socket: filepath.Join(w.dir, name+".sock"),
	}
	d.lc = &localclient.Client{Socket: d.socket}
	// beam up creates the state directory before it starts a daemon;
	// starting the daemon ourselves, we do.
	if err := os.MkdirAll(d.state, 0o700); err != nil {
		w.t.Fatal(err)
	}
	ctx := w.t.Context()
	d.daemon = h.Start(ctx, w.bin, append([]string{"--socket", d.socket, "--state", d.state, "daemon", "--hostname", name}, daemonArgs...)...)
	d.echo = h.StartHelper(ctx, nslab.HelperTCPEcho, "127.0.0.1:"+strconv.Itoa(echoPort))
	d.sink = h.StartHelper(ctx, helperSink, "127.0.0.1:"+strconv.Itoa(sinkPort))
	w.t.Cleanup(d.stopStrayDaemon)
	w.devices = append(w.devices, d)
	return d
}

// stopStrayDaemon stops a daemon that `beam up` would have spawned itself
// had ours not answered: one whose PID, in STATE/daemon.pid, is not the
// one the lab started. Such a daemon is ours too (only this test uses the
// state directory).
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
		return // gone, or the PID was reused by something else
	}
	d.w.t.Logf("%s: stopping a daemon beam up started (pid %d)", d.name, pid)
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if !processAlive(pid) {
			return
		}
		<-tick.C
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...; comm may hold spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// ready waits until the daemon and the loopback servers run. It is
// goroutine-safe.
func (d *device) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := d.daemon.WaitOutput(ctx, "daemon started"); err != nil {
		return err
	}
	if _, err := d.echo.WaitOutput(ctx, "listening"); err != nil {
		return err
	}
	_, err := d.sink.WaitOutput(ctx, "listening")
	return err
}

// up runs beam up in the device's namespace. It is goroutine-safe.
func (d *device) up(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	cmd := d.host.Command(ctx, d.w.bin, "--socket", d.socket, "--state", d.state, "up",
		"--coordinator", d.w.coordURL, "--authkey", d.authKey, "--hostname", d.name, "--timeout", "30s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("beam up %s: %w: %s", d.name, err, bytes.TrimSpace(out))
	}
	if !strings.HasPrefix(string(out), d.name+" ") {
		return fmt.Errorf("beam up %s printed %q, want the name and addresses", d.name, out)
	}
	return nil
}

// peer returns the device's view of the peer called name, polled through
// the local API (cheap enough to poll many times a second). ok is false if
// the peer is not in the netmap yet. It is goroutine-safe.
func (d *device) peer(ctx context.Context, name string) (p apitype.PeerStatus, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := d.lc.Status(ctx)
	if err != nil {
		return p, false, fmt.Errorf("%s status: %w", d.name, err)
	}
	for _, p := range st.Peers {
		if p.Name == name {
			return p, true, nil
		}
	}
	return p, false, nil
}

// cliPeer is like peer but runs `beam status --json`, for the snapshots
// the tests report. It is goroutine-safe.
func (d *device) cliPeer(ctx context.Context, name string) (apitype.PeerStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := d.beam(ctx, nil, "status", "--json")
	if err != nil {
		return apitype.PeerStatus{}, err
	}
	var st apitype.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return apitype.PeerStatus{}, fmt.Errorf("%s: beam status --json: %w: %s", d.name, err, out)
	}
	for _, p := range st.Peers {
		if p.Name == name {
			return p, nil
		}
	}
	return apitype.PeerStatus{}, fmt.Errorf("%s: beam status --json lists no peer %q", d.name, name)
}

// beam runs the beam CLI against the device's daemon (through its Unix
// socket, so from the test's own namespace) and returns its standard
// output. It is goroutine-safe.
func (d *device) beam(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, d.w.bin, append([]string{"--socket", d.socket, "--state", d.state}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: beam %s: %w: %s", d.name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// roundTrip sends one line through `beam nc` to the peer's echo server and
// checks that it comes back. It is goroutine-safe.
func (d *device) roundTrip(ctx context.Context, peer string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	line := fmt.Sprintf("natlab %s->%s %d", d.name, peer, time.Now().UnixNano())
	out, err := d.beam(ctx, []byte(line+"\n"), "nc", peer, strconv.Itoa(echoPort))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: nc %s: no echo within %v", d.name, peer, timeout)
		}
		return err
	}
	// The echo server first says "seen SRC", then echoes.
	if !strings.HasPrefix(string(out), "seen ") || !strings.HasSuffix(string(out), "\n"+line+"\n") {
		return fmt.Errorf("%s: nc %s echoed %q, want %q after a seen line", d.name, peer, out, line)
	}
	return nil
}

// waitPeer waits until the device's netmap has the peer online.
func (d *device) waitPeer(ctx context.Context, peer string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		p, ok, err := d.peer(ctx, peer)
		if err == nil && ok && p.Online && len(p.IPs) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: peer %s not online after %v (last: %+v, %v)", d.name, peer, limit, p, err)
		case <-tick.C:
		}
	}
}

// upPair starts and joins both devices concurrently and returns when both
// are up and see each other online. It is goroutine-safe.
func upPair(ctx context.Context, a, b *device) error {
	errc := make(chan error, 2)
	for _, d := range []*device{a, b} {
		go func() {
			if err := d.ready(ctx); err != nil {
				errc <- err
				return
			}
			errc <- d.up(ctx)
		}()
	}
	err := errors.Join(<-errc, <-errc)
	if err != nil {
		return err
	}
	return errors.Join(a.waitPeer(ctx, b.name, 15*time.Second), b.waitPeer(ctx, a.name, 15*time.Second))
}

// saveLogs writes every process's output to the artefact directory when
// the test failed or BEAM_NATLAB_OUT is set.
func (w *world) saveLogs() {
	if !w.t.Failed() && os.Getenv("BEAM_NATLAB_OUT") == "" {
		return
	}
	dir := filepath.Join(w.out, w.t.Name()+"-logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.t.Log(err)
		return
	}
	write := func(name string, p *nslab.Proc) {
		if p == nil {
			return
		}
		b := append(p.Output(), p.Stderr()...)
		if err := os.WriteFile(filepath.Join(dir, name+".log"), b, 0o644); err != nil {
			w.t.Log(err)
		}
	}
	write("coordinator", w.coord)
	for _, r := range w.relays {
		write("relay-"+r.host.Name(), r.proc)
	}
	for _, d := range w.devices {
		write(d.name, d.daemon)
	}
	w.t.Logf("process logs in %s", dir)
}

// artefactDir is where a test writes what it measured: BEAM_NATLAB_OUT if
// set, else a temporary directory of the test.
func artefactDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("BEAM_NATLAB_OUT"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// shortTempDir returns a temporary directory with a short path: Unix
// socket paths must fit in 108 bytes.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "natlab-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// writeArtefact writes v as NAME.json and text as NAME.txt in the
// artefact directory and logs where.
func writeArtefact(t testing.TB, dir, name string, v any, text string) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, name)
	if err := os.WriteFile(base+".json", append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base+".txt", []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s.json and %s.txt", base, base)
}

func hostPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// ms renders a duration in milliseconds for tables and JSON; negative
// durations (never reached) render as "-".
func ms(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}
