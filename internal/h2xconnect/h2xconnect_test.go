package h2xconnect_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"golang.org/x/net/http2"

	_ "beam.dev/beam/internal/h2xconnect"
)

// TestExtendedConnect: with the package imported, net/http's HTTP/2
// server accepts an extended CONNECT (:protocol) from x/net's HTTP/2
// client (net/http's own client refuses the :protocol field). Without
// the setting the server does not announce extended CONNECT and the
// client refuses to send it.
func TestExtendedConnect(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.Header.Get(":protocol")+" "+r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	c := &http.Client{Transport: &http2.Transport{TLSClientConfig: srv.Client().Transport.(*http.Transport).TLSClientConfig}}
	req, _ := http.NewRequest("CONNECT", srv.URL+"/chat", nil)
	req.Header.Set(":protocol", "websocket")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if want := "CONNECT websocket HTTP/2.0"; resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("extended CONNECT: %d %q, want 200 %q", resp.StatusCode, b, want)
	}
}
