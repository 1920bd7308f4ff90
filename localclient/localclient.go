// Package localclient is the Go client of the daemon's local API, used by
// the CLI. It speaks HTTP over the daemon's Unix socket.
package localclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// ErrDaemonNotRunning is returned when nothing answers on the socket.
// Errors of the Client match it with errors.Is; they are *NotRunningError.
var ErrDaemonNotRunning = errors.New("beam daemon is not running")

// NotRunningError means nothing answers on the daemon's socket.
type NotRunningError struct {
	// Socket is the path the client dialed.
	Socket string
	// Err is the dial error.
	Err error
}

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("beam daemon is not running (socket %s): %v", e.Socket, e.Err)
}

// Is makes a NotRunningError match ErrDaemonNotRunning.
func (e *NotRunningError) Is(target error) bool { return target == ErrDaemonNotRunning }

// UserMessage says what failed and what to do next.
func (e *NotRunningError) UserMessage() string {
	if errors.Is(e.Err, fs.ErrPermission) {
		return "no permission to use the daemon's socket " + e.Socket + ": its admin can allow one local user with beam set --operator USER"
	}
	return "the daemon is not running (nothing answers on " + e.Socket + "): run beam up, or pass the --socket of a running one"
}

// Error is an error answer from the daemon.
type Error struct {
	// Status is the HTTP status of the answer.
	Status int
	// Detail is the daemon's full error text.
	Detail string
	// Message is what a user should read (what failed and the next step);
	// empty when the daemon has nothing better than Detail.
	Message string
}

func (e *Error) Error() string { return e.Detail }

// UserMessage returns Message, or Detail when the daemon gave none.
func (e *Error) UserMessage() string {
	if e.Message != "" {
		return e.Message
	}
	return e.Detail
}

// dialUpgrade mirrors localapi.DialUpgrade (the client does not link the server).
const dialUpgrade = "beam-dial"

// Client talks to one daemon.
type Client struct {
	// Socket is the path of the daemon's Unix socket.
	Socket string
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, &NotRunningError{Socket: c.Socket, Err: err}
	}
	return conn, nil
}

func (c *Client) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) },
	}}
}

// transportErr turns an error of the HTTP client into one for a user: the
// daemon is not running, or it did not answer (without the client's
// internal "http://local/..." URL).
func (c *Client) transportErr(path string, err error) error {
	if nr, ok := errors.AsType[*NotRunningError](err); ok {
		return nr
	}
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return fmt.Errorf("beam daemon on %s did not answer %s: %w", c.Socket, path, ue.Err)
	}
	return err
}

// do sends a request and decodes a JSON answer into out (if non-nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://local"+path, body)
	if err != nil {
		return err
	}
	hc := c.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return c.transportErr(path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e apitype.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &Error{Status: resp.StatusCode, Detail: e.Error, Message: e.Message}
		}
		return fmt.Errorf("local API: %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode local API answer: %w", err)
		}
	}
	return nil
}

// Alive reports whether a daemon answers on the socket.
func (c *Client) Alive(ctx context.Context) bool {
	_, err := c.Status(ctx)
	return err == nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*apitype.Status, error) {
	var st apitype.Status
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Up joins the mesh.
func (c *Client) Up(ctx context.Context, req apitype.UpRequest) (*apitype.UpResponse, error) {
	var resp apitype.UpResponse
	if err := c.do(ctx, http.MethodPost, "/localapi/v0/up", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Down leaves the mesh, keeping state.
func (c *Client) Down(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/localapi/v0/down", struct{}{}, nil)
}

// Prefs returns the daemon's settings.
func (c *Client) Prefs(ctx context.Context) (*apitype.Prefs, error) {
	var p apitype.Prefs
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/prefs", nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// SetPrefs changes the daemon's settings; they apply at once and persist.
func (c *Client) SetPrefs(ctx context.Context, p apitype.PrefsPatch) (*apitype.SetPrefsResponse, error) {
	var resp apitype.SetPrefsResponse
	if err := c.do(ctx, http.MethodPost, "/localapi/v0/prefs", p, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Shutdown asks the daemon to exit. It returns once the daemon accepted;
// the daemon then stops in the background.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/localapi/v0/shutdown", struct{}{}, nil)
}

// Logout deregisters the node.
func (c *Client) Logout(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/localapi/v0/logout", struct{}{}, nil)
}

// DNSQuery asks the daemon's MagicDNS resolver.
func (c *Client) DNSQuery(ctx context.Context, name, typ string) (*apitype.DNSQueryResponse, error) {
	var resp apitype.DNSQueryResponse
	q := url.Values{"name": {name}, "type": {typ}}
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/dns/query?"+q.Encode(), nil, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// DNSStatus returns the daemon's MagicDNS configuration.
func (c *Client) DNSStatus(ctx context.Context) (*apitype.DNSStatus, error) {
	var st apitype.DNSStatus
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/dns/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Expose publishes a local port on the edge.
func (c *Client) Expose(ctx context.Context, req apitype.ExposeRequest) (*apitype.ExposeResponse, error) {
	var resp apitype.ExposeResponse
	if err := c.do(ctx, http.MethodPost, "/localapi/v0/expose", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// ExposeStop withdraws a published route.
func (c *Client) ExposeStop(ctx context.Context, name string) error {
	return c.ExposeStopRoute(ctx, apitype.ExposeStopRequest{Name: name})
}

// ExposeStopRoute withdraws the routes req names.
func (c *Client) ExposeStopRoute(ctx context.Context, req apitype.ExposeStopRequest) error {
	return c.do(ctx, http.MethodPost, "/localapi/v0/expose/stop", req, nil)
}

// WaitRouteGone waits until route r of this device is no longer
// published and returns why; it returns "" and ctx's error if ctx ends
// first.
func (c *Client) WaitRouteGone(ctx context.Context, r apitype.Route) (string, error) {
	var g apitype.RouteGone
	if err := c.do(ctx, http.MethodPost, "/localapi/v0/expose/wait", r, &g); err != nil {
		return "", err
	}
	return g.Reason, nil
}

// ExposeList lists this device's published routes.
func (c *Client) ExposeList(ctx context.Context) ([]apitype.Route, error) {
	var routes []apitype.Route
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/expose", nil, &routes); err != nil {
		return nil, err
	}
	return routes, nil
}

// WatchRequests calls fn for each request served through this device's
// HTTP routes until ctx ends or the daemon goes away.
func (c *Client) WatchRequests(ctx context.Context, fn func(apitype.RequestLog)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://local/localapi/v0/expose/watch", nil)
	if err != nil {
		return err
	}
	hc := c.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return c.transportErr("/localapi/v0/expose/watch", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var l apitype.RequestLog
		if err := dec.Decode(&l); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch requests: %w", err)
		}
		fn(l)
	}
}

// PingPeer sends one disco ping to a peer through the daemon.
func (c *Client) PingPeer(ctx context.Context, host string) (*apitype.PingResult, error) {
	var res apitype.PingResult
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/ping?"+url.Values{"host": {host}}.Encode(), nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Netcheck asks the daemon for a report of its network conditions.
func (c *Client) Netcheck(ctx context.Context) (*apitype.NetcheckReport, error) {
	var res apitype.NetcheckReport
	if err := c.do(ctx, http.MethodGet, "/localapi/v0/netcheck", nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Dial connects to host:port through the daemon (MagicDNS names and
// overlay addresses work) and returns the stream.
func (c *Client) Dial(ctx context.Context, network, host string, port uint16) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(45 * time.Second))
	}
	req, _ := http.NewRequest(http.MethodPost, "http://local/localapi/v0/dial", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", dialUpgrade)
	req.Header.Set("Dial-Host", host)
	req.Header.Set("Dial-Port", strconv.Itoa(int(port)))
	req.Header.Set("Dial-Network", network)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial through daemon: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		var e apitype.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &Error{Status: resp.StatusCode, Detail: e.Error, Message: e.Message}
		}
		return nil, fmt.Errorf("dial through daemon: %s", resp.Status)
	}
	conn.SetDeadline(time.Time{})
	return &bufConn{Conn: conn, r: br}, nil
}

// bufConn is a net.Conn whose reads drain a bufio.Reader first.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the stream toward the daemon.
func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}
