package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// newHTTPServer returns the http.Server the listeners feed. Its base
// context is ctx, so canceling ctx aborts proxied requests and upgraded
// (WebSocket) connections.
func (e *Edge) newHTTPServer(ctx context.Context) *http.Server {
	srv := &http.Server{
		Handler:           e,
		ReadHeaderTimeout: e.opts.ReadHeaderTimeout,
		IdleTimeout:       e.opts.IdleTimeout,
		MaxHeaderBytes:    e.opts.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey, c)
		},
		Protocols: new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// runServer serves ln with srv until ctx is done, then shuts it down: open
// requests are aborted through the base context and connections closed.
func (e *Edge) runServer(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		srv.Close()
		return fmt.Errorf("edge: serve http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return e.stopErr(ctx)
}

// stopErr is what a Serve method returns after ctx ended it.
func (e *Edge) stopErr(ctx context.Context) error {
	if e.ctx.Err() != nil {
		return ErrClosed
	}
	return ctx.Err()
}

// ServeHTTPListener serves plain HTTP/1.1 and h2c (prior knowledge) on ln
// until ctx is canceled or the Edge is closed; it then closes ln and every
// connection and returns ctx's error (ErrClosed after Close). ln is owned
// by the call.
func (e *Edge) ServeHTTPListener(ctx context.Context, ln net.Listener) error {
	ctx, cancel := e.serveContext(ctx)
	defer cancel()
	return e.runServer(ctx, e.newHTTPServer(ctx), &limitListener{Listener: ln, e: e})
}

// limitListener applies the per-client cap and wraps conns for the
// smuggling check.
type limitListener struct {
	net.Listener
	e *Edge
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c = l.e.admitConn(c); c != nil {
			return &h1Conn{Conn: c}, nil
		}
	}
}

// ServeTLSListener serves TLS on ln until ctx is canceled or the Edge is
// closed (then it closes ln and every connection). For each connection it
// reads the ClientHello: when the SNI names a "tls" route the raw stream,
// ClientHello included, is spliced to the device; otherwise the edge
// terminates TLS with certificates from getCert (ALPN h2 and http/1.1) and
// reverse-proxies http routes. A nil getCert means passthrough only.
func (e *Edge) ServeTLSListener(ctx context.Context, ln net.Listener, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) error {
	ctx, cancel := e.serveContext(ctx)
	defer cancel()
	tlsConf := &tls.Config{
		GetCertificate: getCert,
		NextProtos:     []string{"h2", "http/1.1", "acme-tls/1"}, // acme-tls/1: TLS-ALPN-01 through getCert
		MinVersion:     tls.VersionTLS12,
	}
	if getCert == nil {
		tlsConf.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("edge: no certificates configured")
		}
	}
	srv := e.newHTTPServer(ctx)
	cl := newChanListener(ln.Addr())
	var conns sync.WaitGroup
	srvDone := make(chan error, 1)
	go func() { srvDone <- e.runServer(ctx, srv, cl) }()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var acceptErr error
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = fmt.Errorf("edge: accept tls: %w", err)
				cancel()
			}
			break
		}
		if c = e.admitConn(c); c == nil {
			continue
		}
		conns.Go(func() { e.handleTLSConn(ctx, c, tlsConf, cl) })
	}
	ln.Close()
	conns.Wait()
	err := <-srvDone
	if acceptErr != nil {
		return acceptErr
	}
	return err
}

// handleTLSConn routes one TLS connection: passthrough or termination.
func (e *Edge) handleTLSConn(ctx context.Context, c net.Conn, conf *tls.Config, cl *chanListener) {
	c.SetReadDeadline(time.Now().Add(e.opts.ReadHeaderTimeout))
	hello, raw, err := readClientHello(c)
	if err != nil {
		e.log.Debug("tls: bad ClientHello", "client", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	pc := &prefixConn{Conn: c, prefix: raw}
	if host, ok := normalizeHost(hello.ServerName); ok {
		if rt := e.routes.Load().hosts[host]; rt != nil && rt.Proto == ProtoTLS {
			c.SetReadDeadline(time.Time{})
			e.splice(ctx, pc, rt)
			return
		}
	}
	tc := tls.Server(pc, conf)
	hctx, cancel := context.WithTimeout(ctx, e.opts.ReadHeaderTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		e.log.Debug("tls: handshake", "client", c.RemoteAddr(), "sni", hello.ServerName, "err", err)
		tc.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	switch tc.ConnectionState().NegotiatedProtocol {
	case "acme-tls/1":
		tc.Close() // a TLS-ALPN-01 validation ends with the handshake
		return
	case "h2":
		cl.push(tc) // net/http serves h2 on a *tls.Conn
		return
	}
	cl.push(h1TLSConn{&h1Conn{Conn: tc}, tc})
}
