package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"beam.dev/beam/expose"
	"beam.dev/beam/netstack"
)

// The daemon serves the request inspector (expose.Inspector) on host
// loopback once a beam expose asks for it, for all of the device's
// routes, until the daemon stops. Its listener is one of the daemon's own
// (ownlisteners.go): a peer's forwarded connection never reaches it.

const (
	// DefaultInspectorPort is where the inspector listens if it is free;
	// otherwise the next free port of the following few, or else any.
	DefaultInspectorPort = 4040
	inspectorPortTries   = 20
)

// inspectorServer is the running inspector.
type inspectorServer struct {
	insp    *expose.Inspector
	srv     *http.Server
	url     string
	release func() // undoes ownListener
	done    chan struct{}
}

// StartInspector starts the request inspector unless it runs, and
// returns its URL. (Expose starts it when asked to.)
func (n *Node) StartInspector() (string, error) { return n.ensureInspector() }

// ensureInspector starts the inspector unless it runs, and returns its
// URL. It must not be called with n.mu held.
func (n *Node) ensureInspector() (string, error) {
	n.inspMu.Lock()
	defer n.inspMu.Unlock()
	if n.insp != nil {
		return n.insp.url, nil
	}
	if n.ctx.Err() != nil {
		return "", ErrNotRunning
	}
	first := n.opts.InspectorPort
	if first == 0 {
		first = DefaultInspectorPort
	}
	var ln net.Listener
	var err error
	for p := int(first); p < int(first)+inspectorPortTries && p <= 65535; p++ {
		ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		// All taken (many daemons on one machine): any free port.
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return "", fmt.Errorf("inspector: listen on 127.0.0.1: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	insp, err := expose.NewInspector(n.exp, expose.InspectorOptions{Addr: addr, BodyLimit: n.opts.InspectorBodyLimit, Logger: n.logger.With("component", "inspector")})
	if err != nil {
		ln.Close()
		return "", err
	}
	s := &inspectorServer{
		insp:    insp,
		srv:     &http.Server{Handler: insp, ReadHeaderTimeout: 10 * time.Second},
		url:     insp.AccessURL(),
		release: n.ownListener(ln.Addr()),
		done:    make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(refuseOverlay{ln, n})
	}()
	n.insp = s
	n.logger.Info("inspector", "url", insp.URL()) // not the access URL: logs may be read by others
	return s.url, nil
}

// InspectorURL returns the inspector's URL, or "" if it does not run.
func (n *Node) InspectorURL() string {
	n.inspMu.Lock()
	defer n.inspMu.Unlock()
	if n.insp == nil {
		return ""
	}
	return n.insp.url
}

// stopInspector stops the inspector, if it runs, and waits for it. It
// must not be called with n.mu held.
func (n *Node) stopInspector() {
	n.inspMu.Lock()
	s := n.insp
	n.insp = nil
	n.inspMu.Unlock()
	if s == nil {
		return
	}
	s.insp.Close()
	// Close, not Shutdown: an open page's event stream never goes idle.
	s.srv.Close()
	<-s.done
	s.release()
}

// onFlow shows the engine's forwarded connections to the ports of this
// node's tcp, udp and tls routes in the inspector.
func (n *Node) onFlow(f netstack.Flow) {
	n.exp.RecordFlow(expose.Flow{Proto: f.Proto, Client: f.Src, Port: f.Dst.Port(), Start: f.Start, End: f.End, FromClient: f.FromPeer, ToClient: f.ToPeer})
}
