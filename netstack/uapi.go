package netstack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
)

// ServeUAPI serves the WireGuard cross-platform userspace API (the "UAPI"
// text protocol) read-only on ln, so standard tools can read the engine's
// device: `wg show` and golang.zx2c4.com/wireguard/wgctrl find userspace
// devices by their sockets in /var/run/wireguard/NAME.sock. Each peer's
// endpoint is reported as the address of its current direct path (or left
// out while it has none), since the engine itself addresses peers by key.
// "set" operations are refused with EPERM: the netmap configures the
// engine. It returns when ctx ends or ln fails, after every connection's
// handler has finished.
func (e *Engine) ServeUAPI(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.handleUAPI(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

// UAPI errno values (see wireguard-go's ipc package).
const (
	uapiErrnoOK   = "errno=0\n\n"
	uapiErrnoPerm = "errno=1\n\n"
)

// handleUAPI answers UAPI requests on c until the client closes it.
func (e *Engine) handleUAPI(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		op, err := br.ReadString('\n')
		if err != nil {
			return
		}
		// Every operation ends with an empty line.
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if l == "\n" {
				break
			}
		}
		switch op {
		case "get=1\n":
			var buf bytes.Buffer
			if err := e.dev.IpcGetOperation(&buf); err != nil {
				c.Write([]byte("errno=5\n\n")) // EIO
				return
			}
			if _, err := c.Write([]byte(e.uapiEndpoints(buf.String()) + uapiErrnoOK)); err != nil {
				return
			}
		case "set=1\n":
			if _, err := c.Write([]byte(uapiErrnoPerm)); err != nil {
				return
			}
		default:
			return
		}
	}
}

// uapiEndpoints rewrites each peer's endpoint line of a UAPI "get" answer
// to the address of its direct path, dropping it when there is none.
func (e *Engine) uapiEndpoints(get string) string {
	paths := map[string]string{}
	for _, ps := range e.Status() {
		raw := ps.Key.Raw32()
		if ps.Endpoint.IsValid() {
			paths[hex.EncodeToString(raw[:])] = ps.Endpoint.String()
		}
	}
	var out strings.Builder
	peer := ""
	for _, line := range strings.SplitAfter(get, "\n") {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		switch k {
		case "public_key":
			peer = v
		case "endpoint":
			if ep, ok := paths[peer]; ok {
				out.WriteString("endpoint=" + ep + "\n")
			}
			continue
		}
		out.WriteString(line)
	}
	return out.String()
}
