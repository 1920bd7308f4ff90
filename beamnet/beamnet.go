// Package beamnet lets a Go program join a Beam network in-process, with
// no daemon: the program becomes a node of its own, with its own name and
// overlay addresses, dials peers by MagicDNS name or overlay IP, listens
// for peers' TCP connections and UDP datagrams, and publishes its own
// listener on the public edge.
//
//	s := &beamnet.Server{Hostname: "hello", ControlURL: url, AuthKey: key, Dir: dir}
//	defer s.Close()
//	if _, err := s.Up(ctx); err != nil { ... }
//	ln, err := s.Listen("tcp", ":80")     // peers reach http://hello/
//	pub, err := s.ListenPublic(ctx, "hello") // and the world pub.URL()
//
// A Server is a node.Node (the daemon's state machine) without the
// daemon: registration, netmaps, MagicDNS and the engine are the same,
// and its state directory is the same as a daemon's --state. What differs
// is where peers' connections go: a daemon forwards them to the host's
// loopback, while a Server hands them to the listeners the program opened
// and refuses the rest, so embedding Beam never opens the host's
// loopback ports to the network. The network's policy applies to both.
package beamnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// Server is one node of a Beam network inside the program. Set its
// fields, then call Up; the fields must not change after that. Its
// methods are safe for concurrent use.
type Server struct {
	// ControlURL is the coordinator's URL (what `beam up --coordinator`
	// takes). Required.
	ControlURL string
	// AuthKey registers the node when Dir holds no registration with
	// ControlURL (or the coordinator no longer knows the node). Empty
	// joins only a dev coordinator from loopback, or a node registered
	// before.
	AuthKey string
	// Hostname is the name the node asks for; the coordinator derives its
	// MagicDNS label from it ("hello", or "hello-2" if taken). Empty
	// means the program's name.
	Hostname string
	// Dir holds the node's state (its private key and last netmap, in
	// 0600 files), the same as a daemon's --state directory; it is
	// created if needed and locked while the Server runs. Empty means
	// DIR/beamnet-HOSTNAME under os.UserConfigDir, or, with Ephemeral, a
	// temporary directory removed by Close.
	Dir string
	// Ephemeral makes Close log the node out, so it leaves the network
	// with the program rather than staying in it, offline, until it comes
	// back. (Nodes joined with an ephemeral auth key are also removed by
	// the coordinator soon after they go offline without Close.)
	Ephemeral bool
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger

	upMu sync.Mutex // serializes Up

	mu       sync.Mutex // guards the following fields
	node     *node.Node
	closing  context.Context // canceled by Close, which ends a pending Up
	cancel   context.CancelFunc
	dir      string // the state directory in use
	tmpDir   bool   // dir is a temporary directory of Ephemeral
	status   *Status
	closed   bool
	closers  []io.Closer                  // the program's listeners, closed by Close
	publics  map[*PublicListener]struct{} // open public listeners
	ctrlTr   *http.Transport              // to the coordinator
	ctrlConn connSet                      // ctrlTr's connections
	overlayT *http.Transport              // HTTPClient's, over the overlay
}

// Status is what Up reports about the node.
type Status struct {
	// Name is the node's name in the network ("hello", "hello-2").
	Name string
	// DNSName is its fully qualified MagicDNS name.
	DNSName string
	// IPs are its overlay addresses, IPv4 first.
	IPs []netip.Addr
}

// ErrAuthKeyInvalid means the coordinator refused Server.AuthKey (unknown,
// expired, revoked, or already used); Up's error matches it with
// errors.Is.
var ErrAuthKeyInvalid = coordclient.ErrAuthKeyInvalid

// ErrNotUp is returned by the methods that need the node in the network
// when Up has not succeeded yet, or after Close.
var ErrNotUp = errors.New("beamnet: not up; call Server.Up first")

// Up joins the network and returns once the node has its first netmap:
// then peers can reach it and it can reach them. It registers with
// AuthKey if Dir holds no registration. Calling Up again returns the same
// status.
func (s *Server) Up(ctx context.Context) (*Status, error) {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	if s.status != nil {
		st := s.status
		s.mu.Unlock()
		return st, nil
	}
	if err := s.initLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	n, closing := s.node, s.closing
	s.mu.Unlock()

	// Close ends a pending Up.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(closing, cancel)()

	st := n.Status()
	key := ""
	switch {
	case st.Coordinator != s.ControlURL,
		st.State == apitype.StateNoState, st.State == apitype.StateNeedsLogin, st.State == apitype.StateExpired:
		key = s.AuthKey
	}
	req := apitype.UpRequest{Coordinator: s.ControlURL, AuthKey: key, Hostname: s.hostname()}
	resp, err := n.Up(ctx, req)
	if errors.Is(err, node.ErrNodeUnknown) && key == "" && s.AuthKey != "" {
		req.AuthKey = s.AuthKey
		resp, err = n.Up(ctx, req)
	}
	if closing.Err() != nil {
		return nil, errClosed
	}
	if err != nil {
		return nil, fmt.Errorf("beamnet: join %s: %w", s.ControlURL, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	s.status = &Status{Name: resp.Name, DNSName: resp.DNSName, IPs: resp.IPs}
	return s.status, nil
}

// errClosed is Up's error once Close was called.
var errClosed = errors.New("beamnet: Server closed")

// initLocked creates the node on its state directory. s.mu held.
func (s *Server) initLocked() error {
	if s.node != nil {
		return nil
	}
	if s.ControlURL == "" {
		return errors.New("beamnet: Server.ControlURL is required")
	}
	dir := s.Dir
	switch {
	case dir == "" && s.Ephemeral:
		d, err := os.MkdirTemp("", "beamnet-")
		if err != nil {
			return fmt.Errorf("beamnet: state directory: %w", err)
		}
		dir, s.tmpDir = d, true
	case dir == "":
		conf, err := os.UserConfigDir()
		if err != nil {
			return fmt.Errorf("beamnet: no Server.Dir and no user config directory: %w", err)
		}
		dir = filepath.Join(conf, "beamnet-"+s.hostname())
	}
	s.ctrlTr = http.DefaultTransport.(*http.Transport).Clone()
	s.ctrlTr.DialContext = s.ctrlConn.dial
	n, err := node.New(node.Options{
		StateDir:      dir,
		Logger:        s.Logger,
		Hostname:      s.hostname(),
		HTTPClient:    &http.Client{Transport: s.ctrlTr},
		NoHostForward: true,
	})
	if err != nil {
		if s.tmpDir {
			os.RemoveAll(dir)
			s.tmpDir = false
		}
		return fmt.Errorf("beamnet: %w", err)
	}
	s.node, s.dir = n, dir
	s.closing, s.cancel = context.WithCancel(context.Background())
	return nil
}

// newOverlayTransport returns HTTPClient's transport, which dials with dial.
func newOverlayTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		DialContext:         dial,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
}

// hostname is Hostname or the program's name.
func (s *Server) hostname() string {
	if s.Hostname != "" {
		return s.Hostname
	}
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	if name == "" || name == "." {
		return "beamnet"
	}
	return name
}

// upNode returns the node once Up has succeeded.
func (s *Server) upNode() (*node.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil || s.closed {
		return nil, ErrNotUp
	}
	return s.node, nil
}

// Dial connects to addr over the network. network is "tcp", "tcp4",
// "tcp6", "udp", "udp4" or "udp6"; addr is host:port, where host is a
// MagicDNS name ("db", "db.example.beam"), an overlay IP, or any other
// address, which is dialed from the host as net.Dial would.
func (s *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n, err := s.upNode()
	if err != nil {
		return nil, err
	}
	return n.DialContext(ctx, network, addr)
}

// Listen listens for peers' TCP connections on addr: ":port" (every
// overlay address of the node) or an overlay IP and port; ":0" picks a
// port. Peers connect only where the network's policy allows them (a
// peer it does not allow on the port never connects), and only to ports
// the program listens on: others are refused, never forwarded to the
// host. Close closes the listener.
func (s *Server) Listen(network, addr string) (net.Listener, error) {
	n, err := s.upNode()
	if err != nil {
		return nil, err
	}
	ln, err := n.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("beamnet: listen %s %s: %w", network, addr, err)
	}
	s.track(ln)
	return ln, nil
}

// ListenPacket opens a UDP socket on addr (as Listen does, for "udp",
// "udp4" or "udp6"): peers' datagrams to that port reach it, under the
// same policy. Close closes it.
func (s *Server) ListenPacket(network, addr string) (net.PacketConn, error) {
	n, err := s.upNode()
	if err != nil {
		return nil, err
	}
	pc, err := n.ListenPacket(network, addr)
	if err != nil {
		return nil, fmt.Errorf("beamnet: listen %s %s: %w", network, addr, err)
	}
	s.track(pc)
	return pc, nil
}

// Peers returns the nodes of the network this node sees in its last
// netmap (those the policy lets it reach or be reached by). Before Up it
// returns none.
func (s *Server) Peers() []Status {
	n, err := s.upNode()
	if err != nil {
		return nil
	}
	var out []Status
	for _, p := range n.Status().Peers {
		out = append(out, Status{Name: p.Name, DNSName: p.DNSName, IPs: p.IPs})
	}
	return out
}

// track keeps c to close in Close.
func (s *Server) track(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return
	}
	s.closers = append(s.closers, c)
}

// HTTPClient returns a client whose requests go over the network (with
// MagicDNS names: http://db:8080/); other hosts are reached from the host
// as Dial does. Before Up its requests fail with ErrNotUp.
func (s *Server) HTTPClient() *http.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.overlayT == nil {
		s.overlayT = newOverlayTransport(s.Dial)
	}
	return &http.Client{Transport: s.overlayT}
}

// Close leaves the network (logging out first with Ephemeral), stops the
// node and closes every listener of the Server. The state in Dir is kept
// (unless it is Ephemeral's temporary directory), so a Server on the same
// Dir rejoins as the same node. Close waits for the node's goroutines and
// may be called more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	joined := s.status != nil
	closers, publics := s.closers, s.publics
	s.closers, s.publics = nil, nil
	n := s.node
	s.mu.Unlock()

	var errs []error
	for l := range publics {
		if err := l.close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range closers {
		c.Close()
	}
	if n != nil {
		if s.Ephemeral && joined {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := n.Logout(ctx); err != nil {
				errs = append(errs, fmt.Errorf("beamnet: log out: %w", err))
			}
			cancel()
		}
		if err := n.Close(); err != nil {
			errs = append(errs, fmt.Errorf("beamnet: %w", err))
		}
	}
	s.mu.Lock()
	overlayT := s.overlayT
	s.mu.Unlock()
	if overlayT != nil {
		overlayT.CloseIdleConnections()
	}
	if s.ctrlTr != nil {
		s.ctrlTr.CloseIdleConnections()
		s.ctrlConn.closeAll()
	}
	if s.tmpDir {
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("beamnet: remove state: %w", err))
		}
	}
	return errors.Join(errs...)
}
