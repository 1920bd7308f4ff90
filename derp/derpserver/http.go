package derpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

var _ http.Handler = (*Server)(nil)

// ServeHTTP serves the relay over HTTP:
//
//	GET /derp with "Upgrade: DERP"      101, then relay frames on the raw conn
//	GET /derp with a WebSocket upgrade  relay frames in binary messages
//	/derp/probe                         200, empty body (latency checks)
//	/generate_204                       204 (captive portal and latency checks)
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/derp/probe":
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
	case "/generate_204":
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	case "/derp":
		s.serveDERP(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) serveDERP(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		http.Error(w, "relay is shutting down", http.StatusServiceUnavailable)
		return
	}
	up := strings.ToLower(r.Header.Get("Upgrade"))
	switch up {
	case "websocket":
		s.serveWebSocket(w, r)
	case "derp":
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
			return
		}
		nc, brw, err := hj.Hijack()
		if err != nil {
			s.logger.Debug("hijack failed", "remote", r.RemoteAddr, "err", err)
			return
		}
		if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"); err != nil {
			nc.Close()
			return
		}
		// Accept's handshake flushes the 101 together with the server key.
		s.Accept(context.WithoutCancel(r.Context()), nc, brw, r.RemoteAddr)
	default:
		w.Header().Set("Upgrade", "DERP")
		http.Error(w, "relay requires an Upgrade: DERP or WebSocket request", http.StatusUpgradeRequired)
	}
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{derp.WebSocketSubprotocol},
	})
	if err != nil {
		s.logger.Debug("websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	if ws.Subprotocol() != derp.WebSocketSubprotocol {
		ws.Close(websocket.StatusPolicyViolation, "subprotocol "+derp.WebSocketSubprotocol+" required")
		return
	}
	// The conn lives until Accept returns, not until the request's context
	// is done; Accept closes it.
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	s.Accept(context.WithoutCancel(r.Context()), nc, nil, r.RemoteAddr)
}

// ErrNotAdmitted is returned by the func VerifyWithCoordinator builds when
// the coordinator does not admit a key.
var ErrNotAdmitted = errors.New("derpserver: node key not admitted")

// ErrTokenRefused is returned, with ErrNotAdmitted, by the func
// VerifyWithCoordinator builds when the coordinator refuses the relay
// token itself (401): it says nothing of the key.
var ErrTokenRefused = errors.New("derpserver: coordinator refused the relay token")

// VerifyWithCoordinator returns an Options.VerifyClient func that asks the
// coordinator with GET <verifyURL>?key=nodekey:…, verifyURL being the
// coordinator's URL joined with its verify path (wire.PathDERPVerify;
// the caller joins them, as derpserver does not import wire), presenting token (the coordinator's relay token) as a bearer token,
// and admits the key on HTTP 200 (unless the JSON body says
// {"allow":false}). Any other status, or an unreachable coordinator,
// refuses the key; the error wraps ErrNotAdmitted when the coordinator
// answered that the key is not admitted (403, 404, allow=false) or refused
// the token (401, with ErrTokenRefused), and not when it could not answer
// (unreachable, 5xx, 429). hc is the HTTP client to use; a client with a 10s
// timeout if nil.
func VerifyWithCoordinator(verifyURL, token string, hc *http.Client) func(ctx context.Context, k key.NodePublic) error {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	return func(ctx context.Context, k key.NodePublic) error {
		u := verifyURL + "?key=" + url.QueryEscape(k.String())
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return fmt.Errorf("derpserver: verify %s: %w", k.ShortString(), err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("derpserver: verify %s with coordinator: %w", k.ShortString(), err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode == http.StatusUnauthorized {
			return fmt.Errorf("%w: %w: coordinator answered %s", ErrNotAdmitted, ErrTokenRefused, resp.Status)
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			// The coordinator could not answer: that says nothing of
			// the key either (a connected client keeps the relay).
			return fmt.Errorf("derpserver: verify %s: coordinator answered %s", k.ShortString(), resp.Status)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%w: coordinator answered %s", ErrNotAdmitted, resp.Status)
		}
		var v struct {
			Allow *bool `json:"allow"`
		}
		if json.Unmarshal(body, &v) == nil && v.Allow != nil && !*v.Allow {
			return fmt.Errorf("%w: coordinator answered allow=false", ErrNotAdmitted)
		}
		return nil
	}
}
