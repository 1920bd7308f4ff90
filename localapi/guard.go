package localapi

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// Connection limits of the local API. With an operator the socket is
// open to every local user (0666), so who may use it is decided at
// accept by the peer's credentials, not only per request: a connection
// of anyone else gets one 403 answer and is closed, and no more than
// maxRefusing of those are answered at once (the rest are closed
// unanswered). Allowed users share maxConns connections; beyond that
// Accept waits for one to close. The server's timeouts (Server) close
// connections that send no request.
const (
	// maxConns bounds the connections of allowed users at once; each beam
	// nc or beam expose holds one while it runs.
	maxConns = 1024
	// maxRefusing bounds the refused connections being answered at once.
	maxRefusing = 16
	// refuseTimeout bounds how long a refused connection may take to send
	// its request and read the refusal.
	refuseTimeout = 2 * time.Second
	// maxRefusedRequest bounds what a refused connection's request is read
	// of.
	maxRefusedRequest = 16 << 10

	// ReadHeaderTimeout is the local API server's http.Server
	// ReadHeaderTimeout: a connection that sends no request header within
	// it is closed.
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout is the local API server's http.Server IdleTimeout.
	IdleTimeout = 60 * time.Second
)

// Server returns the http.Server for h: h as its handler, the peer
// credentials in each request's context (ConnContext) and the timeouts
// above. Serve it on h.Listener of the socket's listener.
func (h *Handler) Server() *http.Server {
	return &http.Server{
		Handler:           h,
		ConnContext:       ConnContext,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
	}
}

// Listener wraps the socket's listener ln: it reads each connection's
// peer credentials at accept, answers and closes the connections of
// users who may not use the daemon (checkPeer), and holds the others to
// maxConns at once.
func (h *Handler) Listener(ln net.Listener) net.Listener {
	return &guardListener{Listener: ln, h: h, slots: make(chan struct{}, maxConns), refusing: make(chan struct{}, maxRefusing), done: make(chan struct{})}
}

type guardListener struct {
	net.Listener
	h         *Handler
	slots     chan struct{} // one per open allowed connection
	refusing  chan struct{} // one per refused connection being answered
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

// Close closes the listener and ends an Accept waiting for a slot.
func (l *guardListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *guardListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		p := peer{uid: uid, known: err == nil}
		if err := l.h.checkPeer(p); err != nil {
			select {
			case l.refusing <- struct{}{}:
				go func() {
					defer func() { <-l.refusing }()
					refuse(c, err)
				}()
			default:
				c.Close()
			}
			continue
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			c.Close()
			return nil, net.ErrClosed
		}
		return &peerConn{Conn: c, p: p, release: func() { <-l.slots }}, nil
	}
}

// peerConn is an accepted connection with its peer's credentials; Close
// gives its slot back.
type peerConn struct {
	net.Conn
	p       peer
	once    sync.Once
	release func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes the connection, as the unix socket under it
// does: the dial handler ends a client's download with it, and without
// it `beam nc` kept waiting after the far side had gone.
func (c *peerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("localapi: connection cannot half-close")
}

// refuse answers the request on c with 403 and why, then closes c, all
// within refuseTimeout.
func refuse(c net.Conn, why error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(refuseTimeout))
	if _, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, maxRefusedRequest))); err != nil {
		return
	}
	body, _ := json.Marshal(apitype.Error{Error: why.Error(), Message: userMessage(why)})
	fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n", len(body)+1, body)
}
