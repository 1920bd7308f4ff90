package derpserver_test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/types/key"
)

const (
	benchPacketSize = 1280 // a typical WireGuard packet on a 1280 MTU overlay
	benchWindow     = 32   // packets in flight before the receiver acks
)

// windowed moves n packets from a sender to a receiver in windows of
// benchWindow: the receiver acks each full window, so no queue overflows
// and no packet is dropped. It returns the elapsed time.
func windowed(n int, send func() error, ackWait func() error, recvOne func() error, ack func() error) (time.Duration, error) {
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		for got := 0; got < n; {
			w := min(benchWindow, n-got)
			for range w {
				if err := recvOne(); err != nil {
					errc <- err
					return
				}
			}
			got += w
			if err := ack(); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for sent := 0; sent < n; {
		w := min(benchWindow, n-sent)
		for range w {
			if err := send(); err != nil {
				return 0, err
			}
		}
		sent += w
		if err := ackWait(); err != nil {
			return 0, err
		}
	}
	err := <-errc
	return time.Since(start), err
}

// BenchmarkRelayWindowedExchange moves b.N packets of 1280 bytes between
// two clients through the relay in windows of benchWindow, the receiver
// acking each window before the sender goes on; then the same exchange
// over one loopback TCP connection with a minimal length-prefixed framing
// (a baseline written for this benchmark, not a relay). It reports both
// packet rates and their ratio. With one round trip per window, the rate
// is a mix of the relay's per-packet cost and its latency, not the
// streaming throughput of a relayed WireGuard flow.
func BenchmarkRelayWindowedExchange(b *testing.B) {
	_, url := newServer(b, derpserver.Options{SendQueueDepth: 4 * benchWindow})
	ka, kb := key.NewNode(), key.NewNode()
	a := dial(b, url, ka, false)
	c := dial(b, url, kb, false)
	pa, pb := ka.Public(), kb.Public()
	pkt := make([]byte, benchPacketSize)
	recvData := func(cl *derp.Client) error {
		for {
			m, err := cl.Recv()
			if err != nil {
				return err
			}
			if _, ok := m.(derp.ReceivedPacket); ok {
				return nil
			}
		}
	}

	b.SetBytes(benchPacketSize)
	b.ResetTimer()
	relay, err := windowed(b.N,
		func() error { return a.Send(pb, pkt) },
		func() error { return recvData(a) },
		func() error { return recvData(c) },
		func() error { return c.Send(pa, []byte("ack")) },
	)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}

	direct, err := directTCP(b.N, pkt)
	if err != nil {
		b.Fatal(err)
	}
	relayPPS := float64(b.N) / relay.Seconds()
	directPPS := float64(b.N) / direct.Seconds()
	b.ReportMetric(relayPPS, "relay-pkts/s")
	b.ReportMetric(relayPPS*benchPacketSize/1e6, "relay-MB/s")
	b.ReportMetric(directPPS, "tcp-pkts/s")
	b.ReportMetric(directPPS*benchPacketSize/1e6, "tcp-MB/s")
	b.ReportMetric(relayPPS/directPPS, "relay/tcp")
}

// directTCP is the baseline: the same windowed exchange over one loopback
// TCP connection, each packet a 4-byte length plus payload in one write.
func directTCP(n int, pkt []byte) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- res{c, err}
	}()
	snd, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer snd.Close()
	r := <-accepted
	if r.err != nil {
		return 0, r.err
	}
	rcv := r.c
	defer rcv.Close()
	frame := make([]byte, 4+len(pkt))
	binary.BigEndian.PutUint32(frame, uint32(len(pkt)))
	copy(frame[4:], pkt)
	br := bufio.NewReader(rcv)
	sbr := bufio.NewReader(snd)
	buf := make([]byte, len(pkt))
	var hdr [4]byte
	return windowed(n,
		func() error { _, err := snd.Write(frame); return err },
		func() error { _, err := io.ReadFull(sbr, hdr[:1]); return err },
		func() error {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return err
			}
			_, err := io.ReadFull(br, buf[:binary.BigEndian.Uint32(hdr[:])])
			return err
		},
		func() error { _, err := rcv.Write([]byte{1}); return err },
	)
}

// rawHandshake connects one minimal client (no goroutines, no buffers
// kept) so the memory measured is the server's.
func rawHandshake(addr string, priv key.NodePrivate) (net.Conn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) { nc.Close(); return nil, err }
	nc.SetDeadline(time.Now().Add(testTimeout))
	if _, err := fmt.Fprintf(nc, "GET /derp HTTP/1.1\r\nHost: relay\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(nc, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fail(fmt.Errorf("status %s", resp.Status))
	}
	_, p, err := derp.ReadFrame(br, derp.MaxFrameSize, nil)
	if err != nil {
		return fail(err)
	}
	raw, challenge, err := derp.ParseServerKeyPayload(p)
	if err != nil {
		return fail(err)
	}
	info, _ := json.Marshal(derp.ClientInfo{Version: derp.ProtocolVersion, Challenge: challenge})
	bw := bufio.NewWriterSize(nc, 256)
	derp.WriteFrame(bw, derp.FrameClientInfo, derp.AppendClientInfoPayload(nil, priv.Public().Raw32(), priv.SealTo(key.MachinePublicFromRaw32(raw), info)))
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if t, _, err := derp.ReadFrame(br, derp.MaxFrameSize, nil); err != nil || t != derp.FrameServerInfo {
		return fail(fmt.Errorf("server info: %#x, %v", t, err))
	}
	nc.SetDeadline(time.Time{})
	return nc, nil
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkIdleClientMemory connects 5,000 idle clients to one relay over
// loopback and reports heap, stack and RSS growth and goroutines per
// client. The clients are bare TCP conns, so the figures are the server's
// cost plus one client-side net.Conn each. The work is done once; b.N only
// repeats a Stats call.
func BenchmarkIdleClientMemory(b *testing.B) {
	const clients = 5000
	s, url := newServer(b, derpserver.Options{})
	addr := strings.TrimPrefix(url, "http://")
	privs := make([]key.NodePrivate, clients)
	for i := range privs {
		privs[i] = key.NewNode()
	}
	conns := make([]net.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rss0, g0 := rssBytes(), runtime.NumGoroutine()

	var wg sync.WaitGroup
	errc := make(chan error, 1)
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			for i := w; i < clients; i += workers {
				c, err := rawHandshake(addr, privs[i])
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	rss1, g1 := rssBytes(), runtime.NumGoroutine()
	if got := s.Stats().Clients; got != clients {
		b.Fatalf("Stats.Clients = %d, want %d", got, clients)
	}
	for b.Loop() {
		s.Stats()
	}
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/clients, "heap-B/client")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/clients, "stack-B/client")
	b.ReportMetric(float64(rss1-rss0)/clients, "rss-B/client")
	b.ReportMetric(float64(g1-g0)/clients, "goroutines/client")
}
