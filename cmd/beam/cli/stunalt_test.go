package cli

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"beam.dev/beam/configs"
	"beam.dev/beam/derp/derpserver"
)

func TestCoordinatorSTUNAltPort(t *testing.T) {
	for _, tc := range []struct {
		name string
		co   configs.Coordinator
		want uint16
	}{
		{"default is the STUN port + 1", configs.Coordinator{DERPURLs: []string{"http://r.example.test"}}, 3479},
		{"follows --stun", configs.Coordinator{DERPURLs: []string{"http://r.example.test"}, STUN: []string{"r.example.test:4000"}}, 4001},
		{"explicit", configs.Coordinator{DERPURLs: []string{"http://r.example.test"}, STUNAltPort: 5000}, 5000},
		{"none", configs.Coordinator{DERPURLs: []string{"http://r.example.test"}, STUNAltPort: -1}, 0},
		{"no port after 65535", configs.Coordinator{DERPURLs: []string{"http://r.example.test"}, STUN: []string{"r.example.test:65535"}}, 0},
	} {
		m, err := coordinatorDERPMap(&tc.co)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := m.Regions[1].Nodes[0].STUNAltPort; got != tc.want {
			t.Errorf("%s: STUNAltPort = %d, want %d", tc.name, got, tc.want)
		}
	}
	bad := configs.DefaultCoordinator()
	bad.STUNAltPort = 70000
	if err := bad.Validate(); err == nil {
		t.Error("Validate accepted --stun-alt-port 70000")
	}
}

func TestListenSTUNAlt(t *testing.T) {
	first, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	port := first.LocalAddr().(*net.UDPAddr).Port

	if pc, err := listenSTUNAlt(first, "127.0.0.1:0", configs.STUNAltOff, nil); pc != nil || err != nil {
		t.Errorf("off: got %v, %v; want nothing", pc, err)
	}
	if pc, err := listenSTUNAlt(nil, "", "", nil); pc != nil || err != nil {
		t.Errorf("no first listener: got %v, %v; want nothing", pc, err)
	}

	// Derived from an ephemeral first port: port + 1, or another
	// ephemeral port when that is taken; either way a second port.
	pc, err := listenSTUNAlt(first, "127.0.0.1:0", "", nil)
	if err != nil || pc == nil {
		t.Fatalf("derived: got %v, %v; want a listener", pc, err)
	}
	got := pc.LocalAddr().(*net.UDPAddr)
	pc.Close()
	if !got.IP.IsLoopback() || got.Port == port {
		t.Errorf("derived = %v, want another port of 127.0.0.1 than %d", got, port)
	}

	// A taken derived port of a fixed first port is skipped, not fatal.
	blocker, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port+1))
	if err == nil {
		defer blocker.Close()
		if pc, err := listenSTUNAlt(first, "127.0.0.1:"+strconv.Itoa(port), "", nil); pc != nil || err != nil {
			t.Errorf("derived port taken: got %v, %v; want nothing and no error", pc, err)
		}
	}

	// An explicit address that cannot be had is an error.
	if blocker != nil {
		if pc, err := listenSTUNAlt(first, "127.0.0.1:0", blocker.LocalAddr().String(), nil); pc != nil || err == nil {
			t.Errorf("explicit taken address: got %v, %v; want an error", pc, err)
		}
	}

	for _, tc := range []struct{ stun, alt, want string }{
		{":3478", "", "3479"},
		{":3478", "off", ""},
		{":3478", ":4000", "4000"},
		{"", "", ""},
		{":0", "", ""},
	} {
		if got := stunAltPort(tc.stun, tc.alt); got != tc.want {
			t.Errorf("stunAltPort(%q, %q) = %q, want %q", tc.stun, tc.alt, got, tc.want)
		}
	}
}

// TestServerCheckSTUNAlt checks that beam server check asks the second
// STUN port too, and reports it closed when nothing answers there.
func TestServerCheckSTUNAlt(t *testing.T) {
	for _, tc := range []struct{ stun, alt string }{
		{":3478", ""}, {":3478", "off"}, {":3478", ":4000"},
	} {
		c, err := newServerCheck(&ServerOptions{Server: configs.Server{Domain: "example.test", STUNAddr: tc.stun, STUNAltAddr: tc.alt}}, "")
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := strconv.Atoi(stunAltPort(tc.stun, tc.alt)); c.STUNAltPort != want {
			t.Errorf("stun %q alt %q: STUNAltPort %d, want %d", tc.stun, tc.alt, c.STUNAltPort, want)
		}
	}

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		derpserver.ServeSTUN(t.Context(), pc, nil)
	}()
	defer func() { pc.Close(); <-done }()
	closed, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	c := &serverCheck{Timeout: 300 * time.Millisecond}
	ip := netip.MustParseAddr("127.0.0.1")
	if r := c.stun(t.Context(), ip, pc.LocalAddr().(*net.UDPAddr).Port); !r.OK {
		t.Errorf("STUN check of a responder: %+v", r)
	}
	if r := c.stun(t.Context(), ip, closed.LocalAddr().(*net.UDPAddr).Port); r.OK {
		t.Errorf("STUN check of a silent port passed: %+v", r)
	}
}
