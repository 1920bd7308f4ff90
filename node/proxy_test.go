package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeDialer answers the proxies' dials: allowed targets get one end of a
// pipe that echoes, denied ones a refusal, unknown names a lookup error.
type fakeDialer struct {
	allowed map[string]bool // host:port
	denied  map[string]bool
	dials   chan string // every address dialed
}

func (d *fakeDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.dials <- address
	switch {
	case d.allowed[address]:
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			io.Copy(b, b)
		}()
		return a, nil
	case d.denied[address]:
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	host, _, _ := strings.Cut(address, ":")
	return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
}

func newFakeDialer() *fakeDialer {
	return &fakeDialer{
		allowed: map[string]bool{"beta:80": true, "100.64.0.2:80": true, "[fd7a:115c:a1e0::2]:80": true},
		denied:  map[string]bool{"gamma:8000": true},
		dials:   make(chan string, 100),
	}
}

// socksExchange runs socks5Handle on a loopback TCP connection, writes in
// to it and, unless in ends in "ping" (a payload to be echoed), half-closes;
// it returns what the proxy sent back before closing or echoing "ping".
func socksExchange(t *testing.T, d dialer, in []byte) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		server, err := ln.Accept()
		if err != nil {
			return
		}
		socks5Handle(t.Context(), d, server)
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		client.Close()
		<-done
	}()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	client.Write(in)
	echo := bytes.HasSuffix(in, []byte("ping"))
	if !echo {
		client.(*net.TCPConn).CloseWrite()
	}
	var out bytes.Buffer
	buf := make([]byte, 512)
	for {
		n, err := client.Read(buf)
		out.Write(buf[:n])
		if err != nil || echo && bytes.HasSuffix(out.Bytes(), []byte("ping")) {
			break
		}
	}
	return out.Bytes()
}

func TestSOCKS5BadInput(t *testing.T) {
	greeting := []byte{5, 1, 0}
	ok := []byte{5, 0}
	req := func(atyp byte, addr []byte, port uint16) []byte {
		b := append([]byte{5, 1, 0, atyp}, addr...)
		return append(b, byte(port>>8), byte(port))
	}
	name := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	reply := func(code byte) []byte { return []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0} }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name   string
		in     []byte
		want   []byte // exact reply; nil: nothing
		prefix bool   // want is only the start of the reply
	}{
		{"empty", nil, nil, false},
		{"socks4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil, false},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), nil, false},
		{"truncated greeting", []byte{5}, nil, false},
		{"methods cut short", []byte{5, 3, 0}, nil, false},
		{"no methods", []byte{5, 0}, []byte{5, 0xff}, false},
		{"only user/password", []byte{5, 1, 2}, []byte{5, 0xff}, false},
		{"bad request version", cat(greeting, []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}), ok, false},
		{"bind", cat(greeting, []byte{5, 2, 0, 1, 1, 2, 3, 4, 0, 80}), cat(ok, reply(socksCmdNotSupported)), false},
		{"udp associate", cat(greeting, []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}), cat(ok, reply(socksCmdNotSupported)), false},
		{"unknown address type", cat(greeting, []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}), cat(ok, reply(socksAddrTypeNotSupport)), false},
		{"truncated ipv4", cat(greeting, []byte{5, 1, 0, 1, 1, 2}), ok, false},
		{"truncated name", cat(greeting, []byte{5, 1, 0, 3, 10, 'b', 'e'}), ok, false},
		{"missing port", cat(greeting, []byte{5, 1, 0, 3}, name("beta")), ok, false},
		{"unknown name", cat(greeting, req(3, name("nosuchhost"), 80)), cat(ok, reply(socksHostUnreachable)), false},
		{"empty name", cat(greeting, req(3, name(""), 80)), cat(ok, reply(socksHostUnreachable)), false},
		{"denied target", cat(greeting, req(3, name("gamma"), 8000)), cat(ok, reply(socksConnRefused)), false},
		{"allowed name", cat(greeting, req(3, name("beta"), 80), []byte("ping")), cat(ok, []byte{5, 0, 0}), true},
		{"allowed ipv4", cat(greeting, req(1, []byte{100, 64, 0, 2}, 80), []byte("ping")), cat(ok, []byte{5, 0, 0}), true},
		{"allowed ipv6", cat(greeting, req(4, []byte{0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, 80), []byte("ping")), cat(ok, []byte{5, 0, 0}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := socksExchange(t, newFakeDialer(), tt.in)
			if tt.prefix {
				if !bytes.HasPrefix(got, tt.want) || !bytes.HasSuffix(got, []byte("ping")) {
					t.Fatalf("reply: got %v, want %v..., then the echo", got, tt.want)
				}
				return
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("reply: got %v, want %v", got, tt.want)
			}
		})
	}
}

// httpProxyExchange serves p on one connection, sends req and returns the
// response.
func httpProxyExchange(t *testing.T, p *httpProxy, req string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	defer func() {
		srv.Close()
		<-done
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	br := bufio.NewReader(c)
	line, _ := br.ReadString('\n')
	return strings.TrimSpace(line)
}

func TestHTTPProxyBadInput(t *testing.T) {
	tests := []struct {
		name string
		req  string
		want string // status line prefix; "" means the connection is closed without one
	}{
		{"garbage", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", "HTTP/1.1 400"},
		{"no version", "GET /\r\n\r\n", "HTTP/1.1 400"},
		{"origin form", "GET / HTTP/1.1\r\nHost: beta\r\n\r\n", "HTTP/1.1 400"},
		{"header without colon", "GET http://beta:80/ HTTP/1.1\r\nHost beta\r\n\r\n", "HTTP/1.1 400"},
		{"connect without port", "CONNECT beta HTTP/1.1\r\nHost: beta\r\n\r\n", "HTTP/1.1 502"},
		{"connect to unknown name", "CONNECT nosuchhost:80 HTTP/1.1\r\nHost: nosuchhost:80\r\n\r\n", "HTTP/1.1 502"},
		{"connect to denied target", "CONNECT gamma:8000 HTTP/1.1\r\nHost: gamma:8000\r\n\r\n", "HTTP/1.1 502"},
		{"request to denied target", "GET http://gamma:8000/ HTTP/1.1\r\nHost: gamma:8000\r\n\r\n", "HTTP/1.1 502"},
		{"connect from another site", "CONNECT beta:80 HTTP/1.1\r\nHost: beta:80\r\nOrigin: https://evil.example\r\n\r\n", "HTTP/1.1 403"},
		{"connect allowed", "CONNECT beta:80 HTTP/1.1\r\nHost: beta:80\r\n\r\n", "HTTP/1.1 200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFakeDialer()
			p := &httpProxy{d: d, tr: &http.Transport{DialContext: d.DialContext}}
			defer p.tr.CloseIdleConnections()
			got := httpProxyExchange(t, p, tt.req)
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("status: got %q, want %s", got, tt.want)
			}
		})
	}
}

// TestIsRefused: a refusal is recognised through wrapping and only as a
// dial's error.
func TestIsRefused(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("node: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), true},
		{&net.OpError{Op: "dial", Err: errors.New("connection was refused")}, true},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host"}}, false},
		{errors.New("connection was refused"), false},
	}
	for _, tt := range tests {
		if got := isRefused(tt.err); got != tt.want {
			t.Errorf("isRefused(%v): got %v, want %v", tt.err, got, tt.want)
		}
	}
}

// tcpEchoDialer dials addr, whatever the address asked.
type tcpEchoDialer struct{ addr string }

func (d tcpEchoDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, network, d.addr)
}

// TestSOCKS5Bulk sends a few MiB through the proxy to an echoing target,
// the first bytes in the same write as the request, and half-closes: every
// byte comes back in order, and the proxy passes the half-close on.
func TestSOCKS5Bulk(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	echoed := make(chan struct{})
	go func() {
		defer close(echoed)
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	}()
	defer func() { <-echoed }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		server, err := ln.Accept()
		if err != nil {
			return
		}
		socks5Handle(t.Context(), tcpEchoDialer{echo.Addr().String()}, server)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := c.(*net.TCPConn)
	defer func() {
		client.Close()
		<-done
	}()
	client.SetDeadline(time.Now().Add(30 * time.Second))
	data := make([]byte, 3<<20+5)
	for i := range data {
		data[i] = byte(i * 7)
	}
	request := []byte{5, 1, 0, 5, 1, 0, 3, 4, 'b', 'e', 't', 'a', 0, 80}
	werr := make(chan error, 1)
	go func() {
		_, err := client.Write(append(request, data[:1000]...))
		if err == nil {
			_, err = client.Write(data[1000:])
		}
		client.CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	// Method choice, then the reply (IPv4 address: 10 bytes), then the echo.
	const replyLen = 2 + 10
	if len(got) < replyLen || !bytes.Equal(got[:3], []byte{5, 0, 5}) || got[3] != socksSucceeded {
		t.Fatalf("reply: got % x, want 05 00 05 00 ...", got[:min(len(got), replyLen)])
	}
	if echo := got[replyLen:]; !bytes.Equal(echo, data) {
		t.Fatalf("echo: got %d bytes, want the %d sent, in order", len(echo), len(data))
	}
}
