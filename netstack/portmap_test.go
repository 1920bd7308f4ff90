package netstack

import (
	"net/netip"
	"testing"

	"beam.dev/beam/types/key"
)

// TestPortMapOffByDefault checks that an engine without
// Options.PortMapping asks no gateway: netcheck reports it off, and no
// mapped endpoint is advertised.
func TestPortMapOffByDefault(t *testing.T) {
	e, err := New(Options{PrivateKey: key.NewNode(), PortMapGateway: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r, err := e.PortMapProbe(t.Context())
	if err != nil || r.Enabled || r.Gateway.IsValid() || r.Protocols != nil {
		t.Errorf("PortMapProbe = %+v, %v; want nothing asked", r, err)
	}
	if ap := e.portMapEndpoint(); ap.IsValid() {
		t.Errorf("mapped endpoint %v without port mapping", ap)
	}
}
