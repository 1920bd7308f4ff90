package edgelab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"beam.dev/beam/beamtest/nslab"
)

// Helpers that run on devices (the apps the edge publishes) and on the
// customer's DNS host.
const (
	// helperApp serves HTTP on ADDR for device NAME: "/" says hello,
	// "/headers" echoes the request headers as JSON, "/ws" echoes
	// WebSocket messages, "/sse" streams three events 600 ms apart,
	// "/upload" answers the SHA-256 and length of the body, "/download"
	// streams ?size= bytes of testStream, and the gRPC health service
	// answers SERVING over h2c. Args: NAME ADDR [CERT KEY] (with CERT and
	// KEY it serves TLS) or NAME ADDR proxy-v2 (each connection must start
	// with a PROXY protocol v2 header; "/" then says hello with the
	// client it names and the request's X-Forwarded-For). It prints
	// "listening ADDR".
	helperApp = "edgelab.app"

	// helperDNSApp serves DNS over UDP on ADDR: every question gets a TXT
	// "hello from NAME" and an A 192.0.2.53. Args: NAME ADDR.
	helperDNSApp = "edgelab.dnsapp"

	// helperCustomerDNS is the customer's DNS: it answers names under
	// customer.test from a records file ("NAME TYPE VALUE" lines, read on
	// every query), following a CNAME out of customer.test through
	// UPSTREAM, and forwards every other question to UPSTREAM. Args:
	// ADDR UPSTREAM FILE.
	helperCustomerDNS = "edgelab.custdns"
)

var (
	_ = nslab.RegisterHelper(helperApp, runApp)
	_ = nslab.RegisterHelper(helperDNSApp, runDNSApp)
	_ = nslab.RegisterHelper(helperCustomerDNS, runCustomerDNS)
)

// testStream returns the deterministic byte stream of the upload and
// download tests: ChaCha8 keyed by size.
func testStream(size int64) io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(size))
	copy(seed[8:], "beam edgelab stream")
	return io.LimitReader(rand.NewChaCha8(seed), size)
}

// sseEvents and sseGap shape the /sse stream: the server finishes
// (sseEvents-1)*sseGap after its first event.
const (
	sseEvents = 3
	sseGap    = 600 * time.Millisecond
)

func appHandler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s host=%s proto=%s path=%s\n", name, r.Host, r.Proto, r.URL.Path)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, b); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		rc := http.NewResponseController(w)
		for i := 1; i <= sseEvents; i++ {
			if i > 1 {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(sseGap):
				}
			}
			fmt.Fprintf(w, "data: event %d from %s\n\n", i, name)
			if err := rc.Flush(); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d\n", h.Sum(nil), n)
	})
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil || size < 0 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		io.Copy(w, testStream(size))
	})
	mux.HandleFunc("POST /grpc.health.v1.Health/Check", grpcHealth)
	return h2c.NewHandler(mux, &http2.Server{})
}

// grpcHealth answers grpc.health.v1.Health/Check on the gRPC wire format:
// a length-prefixed HealthCheckResponse{status: SERVING} (field 1, varint
// 1: bytes 08 01) and the trailer grpc-status 0.
func grpcHealth(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") || r.ProtoMajor != 2 {
		http.Error(w, "want gRPC over HTTP/2", http.StatusUnsupportedMediaType)
		return
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r.Body, hdr[:]); err != nil {
		http.Error(w, "short gRPC frame", http.StatusBadRequest)
		return
	}
	io.CopyN(io.Discard, r.Body, int64(binary.BigEndian.Uint32(hdr[1:])))
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte{0, 0, 0, 0, 2, 0x08, 0x01})
	w.Header().Set("Grpc-Status", "0")
	w.Header().Set("Grpc-Message", "")
}

func runApp(ctx context.Context, args []string) error {
	if len(args) != 2 && len(args) != 4 && (len(args) != 3 || args[2] != "proxy-v2") {
		return errors.New("want NAME ADDR [CERT KEY | proxy-v2]")
	}
	ln, err := net.Listen("tcp", args[1])
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: appHandler(args[0]), ReadHeaderTimeout: 10 * time.Second}
	if len(args) == 3 {
		ln = proxyV2Listener{ln}
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, proxyClientKey{}, c.(*proxiedConn).client)
		}
		srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s host=%s proto=%s proxy-client=%s xff=%s\n", args[0], r.Host, r.Proto,
				r.Context().Value(proxyClientKey{}), r.Header.Get("X-Forwarded-For"))
		})
	}
	if len(args) == 4 {
		cert, err := tls.LoadX509KeyPair(args[2], args[3])
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
		srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello over the device's own TLS from %s host=%s proto=%s sni=%s\n", args[0], r.Host, r.Proto, r.TLS.ServerName)
		})
		http2.ConfigureServer(srv, &http2.Server{})
	}
	fmt.Printf("listening %s\n", ln.Addr())
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// proxyV2Listener reads a PROXY protocol v2 header (TCP over IPv4 or
// IPv6) at the start of each connection and drops connections without.
type proxyV2Listener struct{ net.Listener }

type proxiedConn struct {
	net.Conn
	client netip.Addr
}

type proxyClientKey struct{}

func (l proxyV2Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		h := make([]byte, 16)
		if _, err := io.ReadFull(c, h); err != nil || string(h[:12]) != "\r\n\r\n\x00\r\nQUIT\n" || h[12] != 0x21 {
			c.Close()
			continue
		}
		a := make([]byte, binary.BigEndian.Uint16(h[14:16]))
		if _, err := io.ReadFull(c, a); err != nil {
			c.Close()
			continue
		}
		c.SetReadDeadline(time.Time{})
		var client netip.Addr
		switch {
		case h[13] == 0x11 && len(a) >= 12:
			client = netip.AddrFrom4([4]byte(a[:4]))
		case h[13] == 0x21 && len(a) >= 36:
			client = netip.AddrFrom16([16]byte(a[:16])).Unmap()
		}
		return &proxiedConn{Conn: c, client: client}, nil
	}
}

func runDNSApp(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return errors.New("want NAME ADDR")
	}
	pc, err := net.ListenPacket("udp", args[1])
	if err != nil {
		return err
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			switch q.Qtype {
			case dns.TypeTXT:
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{"hello from " + args[0]}})
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 53)})
			}
		}
		w.WriteMsg(m)
	})
	return serveDNS(ctx, pc, nil, h)
}

// serveDNS serves h on the UDP socket pc and, if ln is not nil, on the TCP
// listener ln until ctx ends; it prints "listening ADDR" once the servers
// run.
func serveDNS(ctx context.Context, pc net.PacketConn, ln net.Listener, h dns.Handler) error {
	var srvs []*dns.Server
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	srvs = append(srvs, &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: notify})
	if ln != nil {
		srvs = append(srvs, &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: notify})
	}
	errc := make(chan error, len(srvs))
	for _, s := range srvs {
		go func() { errc <- s.ActivateAndServe() }()
	}
	for range srvs {
		select {
		case err := <-errc:
			return err
		case <-started:
		}
	}
	fmt.Printf("listening %s\n", pc.LocalAddr())
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	for _, s := range srvs {
		s.Shutdown()
	}
	return err
}

func runCustomerDNS(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return errors.New("want ADDR UPSTREAM FILE")
	}
	pc, err := net.ListenPacket("udp", args[0])
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	upstream, file := args[1], args[2]
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if len(req.Question) != 1 {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeFormatError)
			w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		qname := strings.ToLower(q.Name)
		if !dns.IsSubDomain("customer.test.", qname) {
			c := &dns.Client{Timeout: 3 * time.Second}
			resp, _, err := c.Exchange(req, upstream)
			if err != nil {
				m := new(dns.Msg)
				m.SetRcode(req, dns.RcodeServerFailure)
				w.WriteMsg(m)
				return
			}
			w.WriteMsg(resp)
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		m.RecursionAvailable = true
		found := false
		for _, rec := range readRecords(file) {
			if !strings.EqualFold(dns.Fqdn(rec[0]), qname) {
				continue
			}
			found = true
			rr, err := dns.NewRR(dns.Fqdn(rec[0]) + " 5 IN " + rec[1] + " " + rec[2])
			if err != nil {
				continue
			}
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			} else if cn, ok := rr.(*dns.CNAME); ok && !dns.IsSubDomain("customer.test.", strings.ToLower(cn.Target)) {
				// A recursive resolver follows the CNAME out of the
				// zone (as to an "_acme-challenge" delegated to Beam's).
				m.Answer = append(m.Answer, rr)
				fq := new(dns.Msg)
				fq.SetQuestion(cn.Target, q.Qtype)
				c := &dns.Client{Timeout: 3 * time.Second}
				if resp, _, err := c.Exchange(fq, upstream); err == nil {
					m.Answer = append(m.Answer, resp.Answer...)
				}
			}
		}
		if !found {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	return serveDNS(ctx, pc, ln, h)
}

// readRecords reads "NAME TYPE VALUE" lines; VALUE is the rest of the
// line (quoted for TXT).
func readRecords(file string) [][3]string {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][3]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.SplitN(strings.TrimSpace(sc.Text()), " ", 3)
		if len(fs) == 3 {
			out = append(out, [3]string{fs[0], fs[1], fs[2]})
		}
	}
	return out
}

// writeRecords replaces the records file atomically.
func writeRecords(file string, lines ...string) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// syncBuffer is a goroutine-safe buffer for output collected by helpers.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (s *syncBuffer) Printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.b, format, args...)
}
