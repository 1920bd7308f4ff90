package telemetry

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestLoopbackAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		notLoop  bool // refused as off loopback
		bad      bool // refused as malformed
	}{
		{in: ":9464", want: "127.0.0.1:9464"},
		{in: "127.0.0.1:0", want: "127.0.0.1:0"},
		{in: "127.0.0.2:9464", want: "127.0.0.2:9464"},
		{in: "localhost:9464", want: "127.0.0.1:9464"},
		{in: "[::1]:9464", want: "[::1]:9464"},
		{in: "0.0.0.0:9464", notLoop: true},
		{in: "[::]:9464", notLoop: true},
		{in: "198.51.100.7:9464", notLoop: true},
		{in: "example.com:9464", notLoop: true},
		{in: "9464", bad: true},
		{in: ":http", bad: true},
		{in: ":70000", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := LoopbackAddr(tc.in)
			switch {
			case tc.notLoop:
				if !errors.Is(err, ErrNotLoopback) {
					t.Fatalf("got %q, %v; want ErrNotLoopback", got, err)
				}
			case tc.bad:
				if err == nil || errors.Is(err, ErrNotLoopback) {
					t.Fatalf("got %q, %v; want a malformed-address error", got, err)
				}
			case err != nil || got != tc.want:
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestServe serves a registry's union with the process registry and the
// pprof pages, and refuses to listen off loopback.
func TestServe(t *testing.T) {
	role := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "beam_test_things_total", Help: "Things."})
	role.MustRegister(c)
	c.Add(3)
	ms, err := Listen(t.Context(), "metrics", "127.0.0.1:0", MetricsHandler(NewProcessRegistry(), role), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	body := get(t, "http://"+ms.Addr().String()+"/metrics")
	for _, want := range []string{"beam_test_things_total 3", "beam_build_info{", "beam_go_goroutines ", "beam_process_"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	var guarded string
	released := false
	guard := func(ln net.Listener) (net.Listener, func()) {
		guarded = ln.Addr().String()
		return ln, func() { released = true }
	}
	ds, err := Listen(t.Context(), "debug", ":0", PprofHandler(), guard, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	if guarded != ds.Addr().String() {
		t.Errorf("guard saw %q, want the listener's address %s", guarded, ds.Addr())
	}
	if !strings.HasPrefix(ds.Addr().String(), "127.0.0.1:") {
		t.Errorf("debug listener on %s, want 127.0.0.1", ds.Addr())
	}
	if body := get(t, "http://"+ds.Addr().String()+"/debug/pprof/goroutine?debug=1"); !strings.Contains(body, "goroutine profile:") {
		t.Errorf("goroutine profile: %.200q", body)
	}
	if _, err := Listen(t.Context(), "metrics", "0.0.0.0:0", MetricsHandler(role), nil, nil); !errors.Is(err, ErrNotLoopback) {
		t.Errorf("listen on 0.0.0.0: %v, want ErrNotLoopback", err)
	}
	if released {
		t.Errorf("guard released before Close")
	}
	ds.Close()
	if !released {
		t.Errorf("guard not released by Close")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}
