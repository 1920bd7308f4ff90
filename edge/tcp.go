package edge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"beam.dev/beam/internal/proxyproto"
	"beam.dev/beam/internal/streamcopy"
)

// ServeTCP serves the tcp route whose PublicPort is port on ln until ctx is
// canceled or the Edge is closed; it then closes ln and every connection it
// opened and returns. The route is looked up for every new connection, so
// SetRoutes applies to the next one; with no such route the connection is
// closed. ln is owned by the call.
func (e *Edge) ServeTCP(ctx context.Context, port uint16, ln net.Listener) error {
	ctx, cancel := e.serveContext(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				ln.Close()
				return e.stopErr(ctx)
			}
			ln.Close()
			cancel()
			return fmt.Errorf("edge: accept tcp/%d: %w", port, err)
		}
		if c = e.admitConn(c); c == nil {
			continue
		}
		rt := e.routes.Load().tcp[port]
		if rt == nil {
			c.Close()
			continue
		}
		conns.Go(func() { e.splice(ctx, c, rt) })
	}
}

// splice connects client to a target of rt (tcp or tls route) after the
// route's policy admitted it, and copies bytes both ways until both sides
// are done or ctx ends. It closes client.
func (e *Edge) splice(ctx context.Context, client net.Conn, rt *route) {
	defer client.Close()
	src := addrOf(client.RemoteAddr())
	log := e.log.With("route", rt.name, "client", src)
	p := rt.policy
	if !p.admitted(src.Addr()) {
		log.Debug("refused by CIDR policy")
		return
	}
	if p.allowRate(src.Addr(), time.Now()) > 0 {
		log.Debug("refused by rate limit")
		return
	}
	var dev net.Conn
	var t *target
	skip := map[*target]bool{}
	for dev == nil {
		var err error
		if t, err = rt.pick(time.Now(), skip); err != nil {
			log.Info("no target", "err", err)
			return
		}
		if dev, err = e.dialTarget(ctx, "tcp", t); err != nil {
			log.Info("dial target", "err", err)
			skip[t] = true
		}
	}
	defer dev.Close()
	t.active.Add(1)
	defer t.active.Add(-1)
	if v := p.ProxyProtocol; v != 0 {
		hdr := proxyproto.AppendHeader(nil, v, "tcp", src, addrOf(client.LocalAddr()))
		dev.SetWriteDeadline(time.Now().Add(e.opts.DialTimeout))
		if _, err := dev.Write(hdr); err != nil {
			log.Info("write PROXY header", "err", err)
			return
		}
		dev.SetWriteDeadline(time.Time{})
	}
	// Copy between the bare conns so the kernel can splice TCP to TCP;
	// replay bytes already read (a peeked ClientHello) first.
	raw := client
	if pc, ok := raw.(*prefixConn); ok {
		if len(pc.prefix) > 0 {
			if _, err := dev.Write(pc.prefix); err != nil {
				log.Info("replay to target", "err", err)
				return
			}
		}
		raw = pc.Conn
	}
	if ac, ok := raw.(interface{ NetConn() net.Conn }); ok {
		raw = ac.NetConn() // the conn admitConn returned
	}
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		dev.Close()
	})
	defer stop()
	pipe(raw, dev)
}

// pipe copies a->b and b->a, half-closing each side as its peer finishes,
// and returns when both directions are done. On an error in either
// direction both conns are closed.
func pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		_, err := streamcopy.Copy(dst, src)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			a.Close()
			b.Close()
			return
		}
		if !closeWrite(dst) {
			a.Close()
			b.Close()
		}
	}
	wg.Go(func() { one(b, a) })
	one(a, b)
	wg.Wait()
}

// closeWrite half-closes c (or the conn it wraps), reporting false if it
// cannot.
func closeWrite(c net.Conn) bool {
	for {
		switch v := c.(type) {
		case interface{ CloseWrite() error }:
			return v.CloseWrite() == nil
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return false
		}
	}
}

// NetConn returns the wrapped conn.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
