package bodyrate

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSlowAndFastBodies serves bodies sent at different paces through a
// real net/http server.
func TestSlowAndFastBodies(t *testing.T) {
	type result struct {
		n   int64
		err error
	}
	results := make(chan result, 1)
	h := Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		results <- result{n, err}
		fmt.Fprint(w, n)
	}), Limit{Timeout: 300 * time.Millisecond, MinRate: 100})
	srv := &http.Server{Handler: h}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	for _, tc := range []struct {
		name    string
		size    int
		every   time.Duration // one byte at this pace, else all at once
		wantErr bool
	}{
		{"all at once", 4096, 0, false},
		{"a byte every 100ms", 100, 100 * time.Millisecond, true},
		{"a byte every 5ms", 100, 5 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", tc.size)
			if tc.every == 0 {
				io.WriteString(c, strings.Repeat("x", tc.size))
			} else {
				go func() {
					tick := time.NewTicker(tc.every)
					defer tick.Stop()
					for range tc.size {
						if _, err := c.Write([]byte{'x'}); err != nil {
							return
						}
						<-tick.C
					}
				}()
			}
			var r result
			select {
			case r = <-results:
			case <-time.After(20 * time.Second):
				t.Fatal("the handler is still reading after 20s")
			}
			if tc.wantErr {
				if !errors.Is(r.err, ErrTooSlow) {
					t.Fatalf("read %d bytes, err %v; want ErrTooSlow", r.n, r.err)
				}
				return
			}
			if r.err != nil || r.n != int64(tc.size) {
				t.Fatalf("read %d bytes, err %v; want %d and no error", r.n, r.err, tc.size)
			}
		})
	}
}
