package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// tlsClientTo returns a client that dials addr for every request, with SNI
// sni (or the URL's host if empty), HTTP/2 when h2, accepting any
// certificate (tests inspect the certificate themselves).
func tlsClientTo(addr, sni string, h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true, ServerName: sni},
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	tr.Protocols.SetHTTP1(!h2)
	tr.Protocols.SetHTTP2(h2)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func TestHTTP2OverTLS(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "origin saw %s", r.Proto)
	}))
	setRoutes(t, e, httpRoute("alpha", a))
	addr := serveTLS(t, e, selfSigned(t, "*.example.test"))
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprint("h2=", h2), func(t *testing.T) {
			resp, err := tlsClientTo(addr, "", h2).Get("https://alpha.example.test/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			wantMajor := 1
			if h2 {
				wantMajor = 2
			}
			if resp.ProtoMajor != wantMajor || string(body) != "origin saw HTTP/1.1" {
				t.Errorf("client got %s %q, want HTTP/%d from the edge and HTTP/1.1 at the origin", resp.Proto, body, wantMajor)
			}
			if resp.TLS == nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "*.example.test" {
				t.Errorf("client did not see the edge's certificate")
			}
		})
	}
}

func TestMisdirectedRequest(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, nameHandler("alpha"))
	b, _ := origin(t, ov, nameHandler("beta"))
	setRoutes(t, e, httpRoute("alpha", a), httpRoute("beta", b))
	addr := serveTLS(t, e, selfSigned(t, "*.example.test"))
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprint("h2=", h2), func(t *testing.T) {
			c := tlsClientTo(addr, "alpha.example.test", h2)
			status, body, _ := get(t, c, "https://alpha.example.test/", "Host", "beta.example.test")
			if status != http.StatusMisdirectedRequest {
				t.Errorf("SNI alpha, Host beta: status %d %q, want 421", status, body)
			}
			status, _, _ = get(t, c, "https://alpha.example.test/", "Host", "ALPHA.example.test.")
			if status != 200 {
				t.Errorf("SNI alpha, Host ALPHA.example.test.: status %d, want 200", status)
			}
		})
	}
}

func TestTLSPassthrough(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	originCert := selfSigned(t, "pass.example.test")
	srv := httptest.NewUnstartedServer(nameHandler("device"))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*originCert}}
	srv.StartTLS()
	defer srv.Close()
	pass := ov.add(srv.Listener.Addr().String())
	term, _ := origin(t, ov, nameHandler("terminated"))
	setRoutes(t, e,
		Route{Host: "pass.example.test", Proto: ProtoTLS, Targets: []netip.AddrPort{pass}},
		httpRoute("term", term))
	addr := serveTLS(t, e, selfSigned(t, "*.example.test"))

	resp, err := tlsClientTo(addr, "", false).Get("https://PASS.example.test/x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "device GET /x" {
		t.Errorf("body %q", body)
	}
	if got := resp.TLS.PeerCertificates[0].Raw; !bytes.Equal(got, originCert.Certificate[0]) {
		t.Errorf("client saw certificate %q, want the device's", resp.TLS.PeerCertificates[0].Subject.CommonName)
	}
	// The same listener still terminates other names.
	status, body2, _ := get(t, tlsClientTo(addr, "", false), "https://term.example.test/y")
	if status != 200 || body2 != "terminated GET /y" {
		t.Errorf("terminated route: %d %q", status, body2)
	}
}

// TestGRPCStreaming runs a gRPC-shaped bidirectional stream (h2,
// application/grpc, length-prefixed messages, grpc-status trailer) through
// the edge to an h2c origin, one message at a time.
func TestGRPCStreaming(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.Header.Get("Content-Type") != "application/grpc" {
			http.Error(w, "want h2 gRPC, got "+r.Proto, http.StatusHTTPVersionNotSupported)
			return
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for {
			msg, err := readGRPCMsg(r.Body)
			if err != nil {
				break
			}
			w.Write(grpcMsg(append([]byte("re:"), msg...)))
			w.(http.Flusher).Flush()
		}
		w.Header().Set("Grpc-Status", "0")
	}))
	setRoutes(t, e, httpRoute("grpc", a))
	addr := serveTLS(t, e, selfSigned(t, "*.example.test"))

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "https://grpc.example.test/echo.Echo/Stream", pr)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := tlsClientTo(addr, "", true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %q", resp.StatusCode, b)
	}
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if _, err := pw.Write(grpcMsg([]byte(msg))); err != nil {
			t.Fatal(err)
		}
		got, err := readGRPCMsg(resp.Body)
		if err != nil || string(got) != "re:"+msg {
			t.Fatalf("reply %d = %q, %v; want %q", i, got, err, "re:"+msg)
		}
	}
	pw.Close()
	io.Copy(io.Discard, resp.Body)
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Errorf("grpc-status trailer = %q, want 0", got)
	}
}

// grpcMsg frames msg as gRPC: compressed flag(1) | length(4) | message.
func grpcMsg(msg []byte) []byte {
	b := []byte{0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

func readGRPCMsg(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 1<<20 {
		return nil, fmt.Errorf("message of %d bytes", n)
	}
	msg := make([]byte, n)
	_, err := io.ReadFull(r, msg)
	return msg, err
}
