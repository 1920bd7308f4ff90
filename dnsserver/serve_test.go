package dnsserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// streamConn is one TCP connection of a DNS client, from a chosen loopback
// source address.
type streamConn struct {
	*dns.Conn
}

// dialStream connects to addr over TCP from the loopback address src.
func dialStream(t *testing.T, src, addr string) streamConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return streamConn{&dns.Conn{Conn: c}}
}

// ask sends one question and waits up to wait for the reply; it returns
// the reply or the read error (io.EOF or a reset once the server closed
// the connection, a timeout if it never answered).
func (c streamConn) ask(name string, wait time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	c.SetDeadline(time.Now().Add(wait))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	return c.ReadMsg()
}

// closedByServer reports whether err says the server closed the connection.
func closedByServer(err error) bool {
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestZoneStreamLimits checks that one source cannot take the TCP service
// of a Zone from everyone: its connections past a few are closed at once,
// a connection whose query the rate limiter refused is closed, and held
// connections are cut sooner while most slots are taken.
func TestZoneStreamLimits(t *testing.T) {
	t.Run("per source", func(t *testing.T) {
		_, addr := newTestZone(t)
		// One source holds more connections than the server has slots,
		// each having asked once, as resolvers falling back to TCP do.
		const held = maxStreamConns + 4
		conns := make([]streamConn, held)
		for i := range conns {
			conns[i] = dialStream(t, "127.0.0.1", addr)
		}
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			answered int
		)
		for _, c := range conns {
			wg.Go(func() {
				if _, err := c.ask("example.test.", 3*time.Second); err == nil {
					mu.Lock()
					answered++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if answered > zoneStreamConnsPerSource {
			t.Errorf("one source got answers on %d TCP connections, want at most %d", answered, zoneStreamConnsPerSource)
		}
		// Another source is still served while those are open.
		c := &dns.Client{Net: "tcp", Timeout: time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}}
		m := new(dns.Msg)
		m.SetQuestion("example.test.", dns.TypeA)
		if r, _, err := c.Exchange(m, addr); err != nil || r.Rcode != dns.RcodeSuccess {
			t.Errorf("other source while one holds %d connections: %v, %v; want an answer", held, r, err)
		}
	})

	t.Run("rate limited", func(t *testing.T) {
		z := NewZone(ZoneOptions{Origin: "example.test", RateLimit: rate.Every(time.Hour), Burst: 1})
		addr := startServer(t, z)
		c := dialStream(t, "127.0.0.3", addr)
		if r, err := c.ask("example.test.", 3*time.Second); err != nil || r.Rcode != dns.RcodeSuccess {
			t.Fatalf("first query: %v, %v; want an answer", r, err)
		}
		r, err := c.ask("example.test.", 3*time.Second)
		if err != nil || r.Rcode != dns.RcodeRefused {
			t.Fatalf("query over the rate: %v, %v; want REFUSED", r, err)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !closedByServer(err) {
			t.Errorf("after a refused query the connection reads %v; want it closed", err)
		}
	})

	t.Run("crowded", func(t *testing.T) {
		_, addr := newTestZone(t)
		// Three quarters of the slots, from enough sources to hold them.
		need := maxStreamConns * 3 / 4
		var wg sync.WaitGroup
		errs := make(chan error, need)
		for i := range need {
			c := dialStream(t, fmt.Sprintf("127.0.1.%d", 1+i/zoneStreamConnsPerSource), addr)
			wg.Go(func() {
				if _, err := c.ask("example.test.", 3*time.Second); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("filling connection: %v", err)
		}
		c := dialStream(t, "127.0.2.1", addr)
		if _, err := c.ask("example.test.", 3*time.Second); err != nil {
			t.Fatalf("query: %v", err)
		}
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if took := time.Since(start); !closedByServer(err) || took > 3*crowdedStreamIdle {
			t.Errorf("idle connection on a crowded server: read %v after %v; want it closed within %v", err, took.Round(time.Millisecond), 3*crowdedStreamIdle)
		}
	})
}
