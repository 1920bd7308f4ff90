package edge

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"

	"beam.dev/beam/internal/copybuf"
	_ "beam.dev/beam/internal/h2xconnect" // RFC 8441 extended CONNECT in net/http's HTTP/2 server
)

// WebSockets over HTTP/2 (RFC 8441). A client opens one with an extended
// CONNECT: a CONNECT request with the :protocol pseudo-header
// "websocket", whose stream then carries the WebSocket frames both ways
// once the server answers 200. Devices speak HTTP/1.1, so the edge turns
// it into the HTTP/1.1 opening handshake (RFC 6455 section 4.1): a GET
// with Upgrade: websocket and a Sec-WebSocket-Key of its own, checks the
// device's 101 (its Sec-WebSocket-Accept), answers the client 200 and
// copies bytes between the stream and the upgraded connection. The
// frames pass through untouched: both sides mask and unmask them as
// clients and servers of the same protocol do.
//
// net/http announces extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)
// only with GODEBUG=http2xconnect=1; importing internal/h2xconnect sets
// it.

// isWebSocketH2 reports whether r opens a WebSocket over HTTP/2.
func isWebSocketH2(r *http.Request) bool {
	return r.ProtoMajor == 2 && r.Method == http.MethodConnect && strings.EqualFold(r.Header.Get(":protocol"), "websocket")
}

// wsGUID is RFC 6455's key suffix for Sec-WebSocket-Accept.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// errBadUpgrade is a device's 101 that does not complete the WebSocket
// handshake the edge started.
var errBadUpgrade = errors.New("edge: the device's switch to WebSocket does not answer the edge's key")

// proxyWebSocketH2 forwards an extended CONNECT to the request's target
// (in reqState) as an HTTP/1.1 WebSocket upgrade.
func (e *Edge) proxyWebSocketH2(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.Method = http.MethodGet
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.Body, out.ContentLength, out.GetBody = nil, 0, nil
	out.RequestURI = ""
	out.Header.Del(":protocol")
	// What httputil.ReverseProxy does before it calls rewrite: the
	// forwarding fields are the edge's to set, never the client's.
	removeHopHeaders(out.Header)
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		out.Header.Del(k)
	}
	e.rewrite(&httputil.ProxyRequest{In: r, Out: out})
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", "websocket")
	out.Header.Set("Sec-WebSocket-Key", key)
	if out.Header.Get("Sec-WebSocket-Version") == "" {
		out.Header.Set("Sec-WebSocket-Version", "13")
	}
	resp, err := e.h1.RoundTrip(out)
	if err != nil {
		e.proxyError(w, r, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Over HTTP/2 a 2xx opens the tunnel: an app that ignored the
		// upgrade must not look as if it had accepted it.
		e.writeError(w, r, http.StatusBadGateway, "Bad gateway",
			"The app behind this name did not accept the WebSocket.", fmt.Errorf("edge: WebSocket upgrade answered %d", resp.StatusCode))
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The device refused the upgrade: pass its answer on.
		e.modifyResponse(resp)
		copyHeader(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		return
	}
	dev, ok := resp.Body.(io.ReadWriteCloser)
	sum := sha1.Sum([]byte(key + wsGUID))
	if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		e.writeError(w, r, http.StatusBadGateway, "Bad gateway",
			"The device answered the WebSocket handshake wrongly.", errBadUpgrade)
		return
	}
	for _, h := range []string{"Connection", "Upgrade", "Sec-WebSocket-Accept"} {
		resp.Header.Del(h)
	}
	e.modifyResponse(resp)
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	// Client to device until the client ends its stream; device to
	// client until the device closes. Whichever ends first with an error
	// ends both.
	stop := context.AfterFunc(r.Context(), func() { dev.Close() })
	defer stop()
	up := make(chan struct{})
	go func() {
		defer close(up)
		if _, err := io.Copy(dev, r.Body); err != nil {
			dev.Close()
		}
	}()
	bp := copybuf.Pool.Get()
	buf := bp[:cap(bp)]
	for {
		n, err := dev.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			if rc.Flush() != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	copybuf.Pool.Put(bp)
	dev.Close()
	r.Body.Close() // ends the client-to-device copy
	<-up
}

// copyHeader adds every value of src to dst.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}
