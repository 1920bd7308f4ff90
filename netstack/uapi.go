package netstack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
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

// uapiEndpoints rewrites a UAPI "get" answer of the device to describe
// every peer of the config, as Status does: each peer's endpoint line
// becomes the address of its direct path (dropped when there is none), its
// counters include those of its earlier stays in the device, and peers
// not configured in the device at the moment (asleep, see peers.go) are
// added after the others.
func (e *Engine) uapiEndpoints(get string) string {
	e.mu.Lock()
	peers := slices.Clone(e.cfg.Peers)
	e.mu.Unlock()
	status := map[string]PeerStatus{}
	for _, ps := range e.Status() {
		raw := ps.Key.Raw32()
		status[hex.EncodeToString(raw[:])] = ps
	}
	var out strings.Builder
	peer := ""
	listed := map[string]bool{}
	for _, line := range strings.SplitAfter(get, "\n") {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		st, known := status[peer]
		switch k {
		case "public_key":
			peer = v
			listed[v] = true
		case "endpoint":
			if known && st.Endpoint.IsValid() {
				out.WriteString("endpoint=" + st.Endpoint.String() + "\n")
			}
			continue
		case "last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes":
			if known {
				writeUAPICounter(&out, k, st)
				continue
			}
		}
		out.WriteString(line)
	}
	for _, p := range peers {
		raw := p.Key.Raw32()
		h := hex.EncodeToString(raw[:])
		if listed[h] {
			continue
		}
		st := status[h]
		fmt.Fprintf(&out, "public_key=%s\npreshared_key=%s\nprotocol_version=1\n", h, strings.Repeat("0", 64))
		if st.Endpoint.IsValid() {
			out.WriteString("endpoint=" + st.Endpoint.String() + "\n")
		}
		for _, k := range []string{"last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes"} {
			writeUAPICounter(&out, k, st)
		}
		out.WriteString("persistent_keepalive_interval=0\n")
		for _, ip := range p.AllowedIPs {
			fmt.Fprintf(&out, "allowed_ip=%s\n", ip.Masked())
		}
	}
	return out.String()
}

// writeUAPICounter writes the UAPI line k of a peer with status st.
func writeUAPICounter(out *strings.Builder, k string, st PeerStatus) {
	var v int64
	switch k {
	case "last_handshake_time_sec":
		if !st.LastHandshake.IsZero() {
			v = st.LastHandshake.Unix()
		}
	case "last_handshake_time_nsec":
		if !st.LastHandshake.IsZero() {
			v = int64(st.LastHandshake.Nanosecond())
		}
	case "tx_bytes":
		fmt.Fprintf(out, "tx_bytes=%d\n", st.TxBytes)
		return
	case "rx_bytes":
		fmt.Fprintf(out, "rx_bytes=%d\n", st.RxBytes)
		return
	}
	fmt.Fprintf(out, "%s=%d\n", k, v)
}
