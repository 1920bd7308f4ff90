package portmap

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIGD is a UPnP internet gateway device's HTTP side: a description
// and a WANIPConnection control URL.
type fakeIGD struct {
	srv *httptest.Server

	mu       sync.Mutex
	mappings map[string]string // external port -> "client:internal lease"
	actions  []string
}

func newFakeIGD(t *testing.T) *fakeIGD {
	f := &fakeIGD{mappings: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rootDesc.xml", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>`)
	})
	mux.HandleFunc("POST /ctl/IPConn", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body := string(b)
		arg := func(name string) string {
			_, rest, _ := strings.Cut(body, "<"+name+">")
			v, _, _ := strings.Cut(rest, "</"+name+">")
			return v
		}
		action := strings.TrimSuffix(strings.SplitN(r.Header.Get("SOAPAction"), "#", 2)[1], `"`)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.actions = append(f.actions, action)
		w.Header().Set("Content-Type", `text/xml; charset="utf-8"`)
		switch action {
		case "AddPortMapping":
			if arg("NewProtocol") != "UDP" || arg("NewInternalClient") != "127.0.0.1" {
				t.Errorf("AddPortMapping %s", body)
			}
			f.mappings[arg("NewExternalPort")] = arg("NewInternalClient") + ":" + arg("NewInternalPort") + " " + arg("NewLeaseDuration")
			fmt.Fprint(w, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:AddPortMappingResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1"/></s:Body></s:Envelope>`)
		case "GetExternalIPAddress":
			fmt.Fprint(w, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>`)
		case "DeletePortMapping":
			if _, ok := f.mappings[arg("NewExternalPort")]; !ok {
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprint(w, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>714</errorCode><errorDescription>NoSuchEntryInArray</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`)
				return
			}
			delete(f.mappings, arg("NewExternalPort"))
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func TestUPnPMapRenewDelete(t *testing.T) {
	igd := newFakeIGD(t)
	g := newFakeGateway(t, func(g *fakeGateway) {
		g.pcp, g.natpmp = false, false // UPnP only
		g.location = igd.srv.URL + "/rootDesc.xml"
	})
	c := g.client()
	c.Lifetime = time.Hour
	ctx := t.Context()
	m, err := c.Map(ctx, 41641, Mapping{})
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("203.0.113.7:41641"); m.Protocol != ProtoUPnP || m.External != want || m.Lifetime != time.Hour {
		t.Fatalf("Map = %s %v for %v, want UPnP %v for 1h", m.Protocol, m.External, m.Lifetime, want)
	}
	igd.mu.Lock()
	got := igd.mappings["41641"]
	igd.mu.Unlock()
	if got != "127.0.0.1:41641 3600" {
		t.Errorf("gateway maps 41641 to %q, want 127.0.0.1:41641 for 3600 s", got)
	}
	r, err := c.Map(ctx, 41641, m)
	if err != nil || r.External != m.External || r.Protocol != ProtoUPnP {
		t.Fatalf("renewal = %+v, %v", r, err)
	}
	if err := c.Delete(ctx, r); err != nil {
		t.Fatal(err)
	}
	err = c.Delete(ctx, r)
	if ue, ok := errors.AsType[*upnpError](err); !ok || ue.code != 714 {
		t.Errorf("second Delete: %v, want UPnP error 714", err)
	}
	igd.mu.Lock()
	defer igd.mu.Unlock()
	if want := "AddPortMapping GetExternalIPAddress AddPortMapping GetExternalIPAddress DeletePortMapping DeletePortMapping"; strings.Join(igd.actions, " ") != want {
		t.Errorf("actions %q, want %q", igd.actions, want)
	}
}

// TestUPnPElsewhere checks that a description or control URL off the
// gateway is refused without a request to it.
func TestUPnPElsewhere(t *testing.T) {
	var hits sync.Map
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Store(r.URL.Path, true) }))
	defer other.Close()
	// Another loopback address than the gateway's.
	_, port, _ := net.SplitHostPort(other.Listener.Addr().String())
	for _, loc := range []string{
		"http://127.0.0.2:" + port + "/rootDesc.xml",
		"http://localhost:" + port + "/rootDesc.xml",
		"https://127.0.0.1:" + port + "/rootDesc.xml",
	} {
		g := newFakeGateway(t, func(g *fakeGateway) { g.pcp, g.natpmp, g.location = false, false, loc })
		if m, err := g.client().Map(t.Context(), 41641, Mapping{}); err == nil {
			t.Errorf("LOCATION %s: mapped %+v", loc, m)
		}
	}
	hits.Range(func(k, _ any) bool {
		t.Errorf("request to %v off the gateway", k)
		return true
	})
}
