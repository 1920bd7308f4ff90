package derp

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"beam.dev/beam/internal/tcpcc"
	"beam.dev/beam/types/key"
)

// WebSocketSubprotocol is the WebSocket subprotocol name of the relay
// protocol carried in binary messages.
const WebSocketSubprotocol = "derp"

// ErrRefused is returned by Dial when the server refused the client: an
// unproven or unadmitted node key, or a wrong mesh key.
var ErrRefused = errors.New("derp: server refused connection")

// ErrMeshUnproven is returned by Dial with a mesh key when the server did
// not prove it knows the same key: an impostor, a relay with another mesh
// key, or one older than protocol version 3.
var ErrMeshUnproven = errors.New("derp: server did not prove the mesh key")

// ErrServerKey is returned by Dial with ClientOptions.ServerKey set when
// the server presents another key: not the relay the caller pinned. Dial
// returns it before sending the server anything.
var ErrServerKey = errors.New("derp: server presented another key than the pinned one")

// ClientOptions configures Dial. The zero value dials plainly over TCP.
type ClientOptions struct {
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
	// DialContext opens the TCP connection; if nil, a net.Dialer that
	// asks the kernel for BBR congestion control.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSConfig is used for https:// URLs; if nil, a default config with
	// ServerName taken from the URL. Ignored for http:// URLs.
	TLSConfig *tls.Config
	// WebSocket selects the WebSocket variant of the protocol instead of
	// the "Upgrade: DERP" one, for networks that only pass HTTP.
	WebSocket bool
	// MeshKey is the region's mesh key; set only by relays meshing with
	// each other.
	MeshKey string
	// ServerKey, if not zero, is the relay's pinned machine key: Dial
	// refuses a server that presents another one (ErrServerKey) before
	// sending it anything. Zero accepts any server key.
	ServerKey key.MachinePublic
}

// Client is a connection to a relay server. Send, SendPing, NotePreferred
// and the other senders may be called concurrently with each other and with
// Recv; Recv must be called from one goroutine at a time.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader // only Recv and Dial read it
	serverKey  key.MachinePublic
	serverInfo ServerInfo
	challenge  []byte // the handshake's challenge
	meshNonce  []byte // a meshing client's MeshNonce for this connection
	logger     *slog.Logger

	wmu sync.Mutex // guards bw and writes to nc
	bw  *bufio.Writer

	rbuf []byte // RecvReuse's frame buffer; only Recv and RecvReuse touch it

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to the relay at serverURL (http:// or https://, path
// "/derp" if none is given), proves it holds priv and completes the
// handshake. ctx bounds only the dial and the handshake.
func Dial(ctx context.Context, serverURL string, priv key.NodePrivate, opts ClientOptions) (*Client, error) {
	if priv.IsZero() {
		return nil, errors.New("derp: dial: zero node private key")
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, fmt.Errorf("derp: parse server URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("derp: server URL %q: scheme must be http or https", serverURL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/derp"
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var nc net.Conn
	var br *bufio.Reader
	if opts.WebSocket {
		nc, err = dialWebSocket(ctx, u, opts)
		if err == nil {
			br = bufio.NewReaderSize(nc, clientBufSize)
		}
	} else {
		nc, br, err = dialUpgrade(ctx, u, opts)
	}
	if err != nil {
		return nil, err
	}
	c := &Client{
		nc:     nc,
		br:     br,
		bw:     bufio.NewWriterSize(nc, clientBufSize),
		logger: logger.With("component", "derpclient", "server", u.Host),
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake(priv, opts.MeshKey, opts.ServerKey)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	if opts.MeshKey != "" {
		// From here on, a mesh connection's bytes travel in sealed
		// records (meshrecord.go); the reader takes what the handshake
		// read ahead.
		rr, rw := MeshRecords(opts.MeshKey, c.challenge, c.meshNonce, c.serverKey.Raw32(), priv.Public().Raw32(), false, c.br, nc)
		c.br = bufio.NewReaderSize(rr, clientBufSize)
		c.bw = bufio.NewWriterSize(rw, clientBufSize)
	}
	return c, nil
}

func (c *Client) handshake(priv key.NodePrivate, meshKey string, pinned key.MachinePublic) error {
	t, p, err := ReadFrame(c.br, MaxFrameSize, nil)
	if err != nil {
		return fmt.Errorf("derp: read server key: %w", err)
	}
	if t != FrameServerKey {
		return fmt.Errorf("derp: got frame type %#x, want server key", byte(t))
	}
	raw, challenge, err := ParseServerKeyPayload(p)
	if err != nil {
		return err
	}
	c.challenge = challenge
	c.serverKey = key.MachinePublicFromRaw32(raw)
	if !pinned.IsZero() && c.serverKey != pinned {
		return fmt.Errorf("%w: got %s, want %s", ErrServerKey, c.serverKey, pinned)
	}
	ci := ClientInfo{Version: ProtocolVersion, CanAckPings: true, Challenge: challenge}
	if meshKey != "" {
		ci.MeshProof = MeshProof(meshKey, challenge, raw, priv.Public().Raw32())
		// Fresh for every connection: the server's proof and both
		// directions' record keys cover it, so nothing recorded from
		// another connection passes on this one, and this side never
		// seals under a key it used before.
		c.meshNonce = make([]byte, MeshNonceLen)
		rand.Read(c.meshNonce)
		ci.MeshNonce = c.meshNonce
	}
	info, err := json.Marshal(ci)
	if err != nil {
		return fmt.Errorf("derp: marshal client info: %w", err)
	}
	sealed := priv.SealTo(c.serverKey, info)
	pub := priv.Public().Raw32()
	if err := c.writeFrame(FrameClientInfo, pub[:], sealed); err != nil {
		return fmt.Errorf("derp: send client info: %w", err)
	}
	for {
		t, p, err := ReadFrame(c.br, MaxFrameSize, nil)
		if err != nil {
			return fmt.Errorf("derp: read server info: %w", err)
		}
		switch t {
		case FrameServerInfo:
			msg, ok := priv.OpenFrom(c.serverKey, p)
			if !ok {
				return errors.New("derp: server info box does not open")
			}
			if err := json.Unmarshal(msg, &c.serverInfo); err != nil {
				return fmt.Errorf("derp: decode server info: %w", err)
			}
			// The version first: an older relay's proof does not
			// cover the nonce, and the operator should hear why.
			if meshKey != "" && c.serverInfo.Version < MinMeshVersion {
				return fmt.Errorf("%w: relay %s speaks protocol version %d, whose mesh connections do not take fresh keys from both sides; meshing needs %d or later: upgrade it",
					ErrRefused, c.serverKey.ShortString(), c.serverInfo.Version, MinMeshVersion)
			}
			if meshKey != "" && !hmac.Equal(c.serverInfo.MeshProof, ServerMeshProof(meshKey, challenge, c.meshNonce, raw, pub)) {
				return fmt.Errorf("%w (server key %s, protocol version %d)", ErrMeshUnproven, c.serverKey.ShortString(), c.serverInfo.Version)
			}
			return nil
		case FrameHealth:
			return fmt.Errorf("%w: %s", ErrRefused, p)
		default:
			// Skip frames this version does not know.
		}
	}
}

// dialContext is opts.DialContext, or a dialer that asks the kernel for
// BBR: the overlay's TCP rides inside the relay connection, so on a lossy
// link this connection's congestion control sets the pace (see
// internal/tcpcc).
//
// It also bounds how long sent data may go unacknowledged (relayUserTimeout,
// where the platform has TCP_USER_TIMEOUT): when a NAT on the way forgets
// the connection, the kernel would otherwise retransmit with backoff for
// many seconds (0.2+0.4+...+6.4 = 12.6 s before the sixth retry) before the
// client learns the connection is dead and dials again.
func dialContext(opts ClientOptions) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if opts.DialContext != nil {
		return opts.DialContext
	}
	d := tcpcc.Dialer()
	cc := d.Control
	d.Control = func(network, address string, c syscall.RawConn) error {
		if err := cc(network, address, c); err != nil {
			return err
		}
		setUserTimeout(c, relayUserTimeout)
		return nil
	}
	return d.DialContext
}

// relayUserTimeout is how long data sent on a relay connection may stay
// unacknowledged before the kernel gives the connection up. The relay
// server acknowledges at once, so seconds without an acknowledgement mean
// the path is gone, not slow.
const relayUserTimeout = 5 * time.Second

func dialUpgrade(ctx context.Context, u *url.URL, opts ClientOptions) (net.Conn, *bufio.Reader, error) {
	addr := hostPort(u)
	nc, err := dialContext(opts)(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("derp: dial %s: %w", addr, err)
	}
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	if u.Scheme == "https" {
		cfg := tlsConfig(opts.TLSConfig, u)
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, fmt.Errorf("derp: TLS handshake with %s: %w", addr, err)
		}
		nc = tc
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("derp: build upgrade request: %w", err)
	}
	req.Header.Set("Upgrade", "DERP")
	req.Header.Set("Connection", "Upgrade")
	if err := req.Write(nc); err != nil {
		return nil, nil, fmt.Errorf("derp: send upgrade request: %w", err)
	}
	br := bufio.NewReaderSize(nc, clientBufSize)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, fmt.Errorf("derp: read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, nil, fmt.Errorf("derp: upgrade: server answered %s: %q", resp.Status, body)
	}
	ok = true
	return nc, br, nil
}

func dialWebSocket(ctx context.Context, u *url.URL, opts ClientOptions) (net.Conn, error) {
	tr := &http.Transport{
		DialContext:       dialContext(opts),
		TLSClientConfig:   tlsConfig(opts.TLSConfig, u),
		ForceAttemptHTTP2: false,
	}
	defer tr.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: tr},
		Subprotocols: []string{WebSocketSubprotocol},
	})
	if err != nil {
		return nil, fmt.Errorf("derp: websocket dial %s: %w", u.Host, err)
	}
	if ws.Subprotocol() != WebSocketSubprotocol {
		ws.CloseNow()
		return nil, fmt.Errorf("derp: websocket: server chose subprotocol %q", ws.Subprotocol())
	}
	// The returned conn lives until Close, not until ctx is done.
	return websocket.NetConn(context.Background(), ws, websocket.MessageBinary), nil
}

func tlsConfig(cfg *tls.Config, u *url.URL) *tls.Config {
	if cfg == nil {
		cfg = &tls.Config{}
	} else {
		cfg = cfg.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"http/1.1"}
	return cfg
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// ServerPublicKey returns the relay's machine public key learned during the
// handshake.
func (c *Client) ServerPublicKey() key.MachinePublic { return c.serverKey }

// ServerInfo returns what the server said about this connection.
func (c *Client) ServerInfo() ServerInfo { return c.serverInfo }

func (c *Client) writeFrame(t FrameType, parts ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// A relay that stops reading must not hold up the caller (the
	// engine's send path) for long: after clientWriteTimeout the write
	// fails and the connection is treated as broken.
	c.nc.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	if err := WriteFrame(c.bw, t, parts...); err != nil {
		return err
	}
	return c.bw.Flush()
}

// clientBufSize is the size of a client's read and write buffers: a batch
// of WireGuard packets (SendBatch) or a burst of them arriving takes one
// system call rather than one per three packets.
const clientBufSize = 64 << 10

// clientWriteTimeout bounds one frame write to the relay.
const clientWriteTimeout = 5 * time.Second

// Send asks the relay to deliver pkt to dst. It returns an error for a
// packet over MaxPacketSize or when the connection is broken; delivery is
// not confirmed.
func (c *Client) Send(dst key.NodePublic, pkt []byte) error {
	if len(pkt) > MaxPacketSize {
		return fmt.Errorf("derp: send: packet of %d bytes exceeds %d", len(pkt), MaxPacketSize)
	}
	k := dst.Raw32()
	if err := c.writeFrame(FrameSendPacket, k[:], pkt); err != nil {
		return fmt.Errorf("derp: send: %w", err)
	}
	return nil
}

// SendBatch asks the relay to deliver each of pkts to dst, in order,
// flushing once after the last: a batch costs a few writes to the
// connection rather than one per packet. It fails like Send; packets
// before the one that failed may have been sent.
func (c *Client) SendBatch(dst key.NodePublic, pkts [][]byte) error {
	for _, pkt := range pkts {
		if len(pkt) > MaxPacketSize {
			return fmt.Errorf("derp: send: packet of %d bytes exceeds %d", len(pkt), MaxPacketSize)
		}
	}
	k := dst.Raw32()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	for _, pkt := range pkts {
		if err := WriteFrameHeader(c.bw, FrameSendPacket, uint32(len(k)+len(pkt))); err != nil {
			return fmt.Errorf("derp: send: %w", err)
		}
		if _, err := c.bw.Write(k[:]); err != nil {
			return fmt.Errorf("derp: send: %w", err)
		}
		if _, err := c.bw.Write(pkt); err != nil {
			return fmt.Errorf("derp: send: %w", err)
		}
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("derp: send: %w", err)
	}
	return nil
}

// ForwardPacket relays pkt from src to dst through a meshed relay. Only a
// client that dialed with the region's MeshKey may use it.
func (c *Client) ForwardPacket(src, dst key.NodePublic, pkt []byte) error {
	if len(pkt) > MaxPacketSize {
		return fmt.Errorf("derp: forward: packet of %d bytes exceeds %d", len(pkt), MaxPacketSize)
	}
	s, d := src.Raw32(), dst.Raw32()
	if err := c.writeFrame(FrameForwardPacket, s[:], d[:], pkt); err != nil {
		return fmt.Errorf("derp: forward: %w", err)
	}
	return nil
}

// WatchConns asks a meshed relay to report its clients with
// PeerPresentMessage and PeerGoneMessage. Only a client that dialed with
// the region's MeshKey may use it.
func (c *Client) WatchConns() error {
	if err := c.writeFrame(FrameWatchConns); err != nil {
		return fmt.Errorf("derp: watch conns: %w", err)
	}
	return nil
}

// SendPing sends a ping; the server answers with a PongMessage carrying
// the same data.
func (c *Client) SendPing(data [8]byte) error {
	if err := c.writeFrame(FramePing, data[:]); err != nil {
		return fmt.Errorf("derp: send ping: %w", err)
	}
	return nil
}

// SendPong answers a ping. Recv already answers the server's pings itself.
func (c *Client) SendPong(data [8]byte) error {
	if err := c.writeFrame(FramePong, data[:]); err != nil {
		return fmt.Errorf("derp: send pong: %w", err)
	}
	return nil
}

// NotePreferred tells the relay whether it is this client's home relay.
func (c *Client) NotePreferred(preferred bool) error {
	b := []byte{0}
	if preferred {
		b[0] = 1
	}
	if err := c.writeFrame(FrameNotePreferred, b); err != nil {
		return fmt.Errorf("derp: note preferred: %w", err)
	}
	return nil
}

// Close closes the connection; a blocked Recv returns an error. It is safe
// to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.nc.Close() })
	return c.closeErr
}

// Recv reads the next message from the relay. Frames this version does not
// know are skipped. A FramePing from the server is answered with a pong
// before Recv returns the PingMessage. Each ReceivedPacket's Data is a new
// slice the caller owns.
func (c *Client) Recv() (ReceivedMessage, error) { return c.recv(nil) }

// RecvReuse is Recv, except that a ReceivedPacket's Data is valid only
// until the next call of RecvReuse: frames are read into one buffer, so
// relaying bulk data allocates nothing per packet.
func (c *Client) RecvReuse() (ReceivedMessage, error) {
	if c.rbuf == nil {
		c.rbuf = make([]byte, keyLen+MaxPacketSize)
	}
	return c.recv(c.rbuf)
}

func (c *Client) recv(buf []byte) (ReceivedMessage, error) {
	for {
		t, p, err := ReadFrame(c.br, MaxFrameSize, buf)
		if err != nil {
			return nil, fmt.Errorf("derp: recv: %w", err)
		}
		m, err := parseMessage(t, p)
		if err != nil {
			return nil, fmt.Errorf("derp: recv: %w", err)
		}
		if m == nil {
			continue
		}
		if ping, ok := m.(PingMessage); ok {
			if err := c.SendPong(ping); err != nil {
				return nil, err
			}
		}
		return m, nil
	}
}

// parseMessage turns a frame into a message; it returns nil, nil for frames
// a client ignores.
func parseMessage(t FrameType, p []byte) (ReceivedMessage, error) {
	switch t {
	case FrameRecvPacket:
		if len(p) < keyLen {
			return nil, fmt.Errorf("recv packet: %w", ErrShortFrame)
		}
		return ReceivedPacket{Source: key.NodePublicFromRaw32([32]byte(p[:keyLen])), Data: p[keyLen:]}, nil
	case FrameKeepAlive:
		return KeepAliveMessage{}, nil
	case FramePeerGone:
		if len(p) < keyLen {
			return nil, fmt.Errorf("peer gone: %w", ErrShortFrame)
		}
		m := PeerGoneMessage{Peer: key.NodePublicFromRaw32([32]byte(p[:keyLen]))}
		if len(p) > keyLen {
			m.Reason = PeerGoneReason(p[keyLen])
		}
		return m, nil
	case FramePeerPresent:
		if len(p) < keyLen {
			return nil, fmt.Errorf("peer present: %w", ErrShortFrame)
		}
		return PeerPresentMessage{Peer: key.NodePublicFromRaw32([32]byte(p[:keyLen]))}, nil
	case FramePing:
		if len(p) < 8 {
			return nil, fmt.Errorf("ping: %w", ErrShortFrame)
		}
		return PingMessage(p[:8]), nil
	case FramePong:
		if len(p) < 8 {
			return nil, fmt.Errorf("pong: %w", ErrShortFrame)
		}
		return PongMessage(p[:8]), nil
	case FrameHealth:
		return HealthMessage{Problem: string(p)}, nil
	case FrameRestarting:
		var m ServerRestartingMessage
		if len(p) >= 8 {
			m.ReconnectIn = time.Duration(binary.BigEndian.Uint32(p[0:4])) * time.Millisecond
			m.TryFor = time.Duration(binary.BigEndian.Uint32(p[4:8])) * time.Millisecond
		}
		return m, nil
	default:
		return nil, nil
	}
}

// ReceivedMessage is a message from the relay: one of ReceivedPacket,
// PeerGoneMessage, PeerPresentMessage, PingMessage, PongMessage,
// HealthMessage, ServerRestartingMessage or KeepAliveMessage.
type ReceivedMessage interface {
	isReceivedMessage()
}

// ReceivedPacket is a packet relayed from Source.
type ReceivedPacket struct {
	// Source is the node that sent the packet.
	Source key.NodePublic
	// Data is the packet; the caller owns it.
	Data []byte
}

// PeerGoneMessage says that a peer this client sent to has left the relay
// (or, for mesh watchers, any client has left).
type PeerGoneMessage struct {
	// Peer is the node that left.
	Peer key.NodePublic
	// Reason says why.
	Reason PeerGoneReason
}

// PeerPresentMessage tells a mesh watcher that Peer is connected to the
// relay.
type PeerPresentMessage struct {
	// Peer is the node that connected.
	Peer key.NodePublic
}

// PingMessage is a ping from the server; Recv has already answered it.
type PingMessage [8]byte

// PongMessage answers a ping sent with SendPing.
type PongMessage [8]byte

// HealthMessage reports a problem the server sees with this connection;
// an empty Problem means the problem is gone.
type HealthMessage struct {
	// Problem describes the problem, empty when resolved.
	Problem string
}

// ServerRestartingMessage says the server is going away; the client should
// reconnect after ReconnectIn and keep trying for TryFor.
type ServerRestartingMessage struct {
	// ReconnectIn is how long to wait before reconnecting.
	ReconnectIn time.Duration
	// TryFor is how long to keep trying.
	TryFor time.Duration
}

// KeepAliveMessage is the server's idle keepalive; it needs no answer.
type KeepAliveMessage struct{}

func (ReceivedPacket) isReceivedMessage()          {}
func (PeerGoneMessage) isReceivedMessage()         {}
func (PeerPresentMessage) isReceivedMessage()      {}
func (PingMessage) isReceivedMessage()             {}
func (PongMessage) isReceivedMessage()             {}
func (HealthMessage) isReceivedMessage()           {}
func (ServerRestartingMessage) isReceivedMessage() {}
func (KeepAliveMessage) isReceivedMessage()        {}
