package portmap

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// UPnP IGD: an SSDP search sent to the gateway alone, its device
// description fetched over HTTP, and SOAP calls to its WANIPConnection (or
// WANPPPConnection) service. Every URL must point at the gateway itself:
// a description naming another host is refused, so nothing is sent
// anywhere else.

const (
	// upnpBodyLimit caps what is read of a description or SOAP answer.
	upnpBodyLimit = 64 << 10
	// upnpHTTPTimeout bounds one HTTP exchange with the gateway.
	upnpHTTPTimeout = 2 * time.Second
	// upnpDescription names mappings in the gateway's list.
	upnpDescription = "beam"
)

// upnpService is the gateway's WAN connection service.
type upnpService struct {
	controlURL  string
	serviceType string
}

// upnpDesc is the part of a device description the client reads.
type upnpDesc struct {
	Device upnpDevice `xml:"device"`
}

type upnpDevice struct {
	Services []struct {
		ServiceType string `xml:"serviceType"`
		ControlURL  string `xml:"controlURL"`
	} `xml:"serviceList>service"`
	Devices []upnpDevice `xml:"deviceList>device"`
}

// find returns the first WAN IP (else PPP) connection service.
func (d *upnpDevice) find() (serviceType, controlURL string) {
	var ppp [2]string
	var walk func(*upnpDevice) bool
	walk = func(d *upnpDevice) bool {
		for _, s := range d.Services {
			switch {
			case strings.HasPrefix(s.ServiceType, "urn:schemas-upnp-org:service:WANIPConnection:"):
				serviceType, controlURL = s.ServiceType, s.ControlURL
				return true
			case strings.HasPrefix(s.ServiceType, "urn:schemas-upnp-org:service:WANPPPConnection:") && ppp[0] == "":
				ppp = [2]string{s.ServiceType, s.ControlURL}
			}
		}
		for i := range d.Devices {
			if walk(&d.Devices[i]) {
				return true
			}
		}
		return false
	}
	if !walk(d) {
		serviceType, controlURL = ppp[0], ppp[1]
	}
	return serviceType, controlURL
}

// onGateway checks that u is an http URL on the gateway's address.
func (c *Client) onGateway(u *url.URL) error {
	if u.Scheme != "http" {
		return fmt.Errorf("upnp: %s is not http", u)
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil || a.Unmap() != c.Gateway {
		return fmt.Errorf("upnp: %s is not on the gateway %v", u, c.Gateway)
	}
	return nil
}

func (c *Client) httpClient() *http.Client {
	return &http.Client{
		Timeout: upnpHTTPTimeout,
		// No proxies from the environment: the gateway is on the LAN.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("upnp: redirects are not followed")
		},
	}
}

// upnpFind finds the gateway's WAN connection service.
func (c *Client) upnpFind(ctx context.Context) (upnpService, error) {
	loc, err := c.ssdpSearch(ctx)
	if err != nil {
		return upnpService{}, fmt.Errorf("upnp: %w", err)
	}
	base, err := url.Parse(loc)
	if err != nil {
		return upnpService{}, fmt.Errorf("upnp: location %q: %w", loc, err)
	}
	if err := c.onGateway(base); err != nil {
		return upnpService{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.String(), nil)
	if err != nil {
		return upnpService{}, fmt.Errorf("upnp: %w", err)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return upnpService{}, fmt.Errorf("upnp: description: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return upnpService{}, fmt.Errorf("upnp: description: %s", resp.Status)
	}
	var desc upnpDesc
	if err := xml.NewDecoder(io.LimitReader(resp.Body, upnpBodyLimit)).Decode(&desc); err != nil {
		return upnpService{}, fmt.Errorf("upnp: description: %w", err)
	}
	st, ctl := desc.Device.find()
	if st == "" {
		return upnpService{}, errors.New("upnp: the gateway has no WAN connection service")
	}
	cu, err := base.Parse(ctl)
	if err != nil {
		return upnpService{}, fmt.Errorf("upnp: control URL %q: %w", ctl, err)
	}
	if err := c.onGateway(cu); err != nil {
		return upnpService{}, err
	}
	return upnpService{controlURL: cu.String(), serviceType: st}, nil
}

// upnpError is a SOAP fault's UPnP error code.
type upnpError struct {
	code int
	desc string
}

func (e *upnpError) Error() string { return fmt.Sprintf("upnp error %d (%s)", e.code, e.desc) }

// soap calls action on the service with args (name, value pairs, in
// order) and returns the answer's leaf elements by name.
func (c *Client) soap(ctx context.Context, svc upnpService, action string, args ...string) (map[string]string, error) {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0"?>` + "\r\n" +
		`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>`)
	fmt.Fprintf(&b, `<u:%s xmlns:u="%s">`, action, svc.serviceType)
	for i := 0; i+1 < len(args); i += 2 {
		fmt.Fprintf(&b, "<%s>", args[i])
		xml.EscapeText(&b, []byte(args[i+1]))
		fmt.Fprintf(&b, "</%s>", args[i])
	}
	fmt.Fprintf(&b, `</u:%s></s:Body></s:Envelope>`, action)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, svc.controlURL, &b)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", `text/xml; charset="utf-8"`)
	req.Header.Set("SOAPAction", `"`+svc.serviceType+"#"+action+`"`)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("upnp: %s: %w", action, err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	dec := xml.NewDecoder(io.LimitReader(resp.Body, upnpBodyLimit))
	var name string
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.StartElement:
			name = t.Name.Local
		case xml.CharData:
			if name != "" {
				out[name] += string(t)
			}
		case xml.EndElement:
			name = ""
		}
	}
	if resp.StatusCode != http.StatusOK {
		code, _ := strconv.Atoi(strings.TrimSpace(out["errorCode"]))
		if code != 0 {
			return nil, fmt.Errorf("upnp: %s: %w", action, &upnpError{code, out["errorDescription"]})
		}
		return nil, fmt.Errorf("upnp: %s: %s", action, resp.Status)
	}
	return out, nil
}

// UPnP error codes of AddPortMapping.
const (
	upnpOnlyPermanentLeases = 725
	upnpConflict            = 718
)

// upnpMap asks for a UDP mapping of internal on the gateway's WAN
// service: external port suggested first, then a random one if taken.
func (c *Client) upnpMap(ctx context.Context, svc upnpService, internal, suggested uint16) (netip.AddrPort, time.Duration, error) {
	local, err := c.localAddr(ctx)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("upnp: %w", err)
	}
	lease := c.lifetime()
	ports := []uint16{suggested, uint16(1024 + rand.IntN(65535-1024))}
	var lastErr error
	for _, ext := range ports {
		add := func(lease time.Duration) error {
			_, err := c.soap(ctx, svc, "AddPortMapping",
				"NewRemoteHost", "",
				"NewExternalPort", strconv.Itoa(int(ext)),
				"NewProtocol", "UDP",
				"NewInternalPort", strconv.Itoa(int(internal)),
				"NewInternalClient", local.String(),
				"NewEnabled", "1",
				"NewPortMappingDescription", upnpDescription,
				"NewLeaseDuration", strconv.Itoa(int(lease/time.Second)))
			return err
		}
		err := add(lease)
		if ue, ok := errors.AsType[*upnpError](err); ok && ue.code == upnpOnlyPermanentLeases {
			lease = 0 // kept until deleted; renewals still refresh it
			err = add(0)
		}
		if ue, ok := errors.AsType[*upnpError](err); ok && ue.code == upnpConflict {
			lastErr = err
			continue
		}
		if err != nil {
			return netip.AddrPort{}, 0, err
		}
		r, err := c.soap(ctx, svc, "GetExternalIPAddress")
		if err != nil {
			return netip.AddrPort{}, 0, err
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(r["NewExternalIPAddress"]))
		if err != nil || !ip.Is4() {
			return netip.AddrPort{}, 0, fmt.Errorf("upnp: external address %q", r["NewExternalIPAddress"])
		}
		if lease == 0 {
			lease = c.lifetime() // renew as if it expired
		}
		return netip.AddrPortFrom(ip, ext), lease, nil
	}
	return netip.AddrPort{}, 0, lastErr
}

// upnpDelete removes the mapping of external port ext.
func (c *Client) upnpDelete(ctx context.Context, svc upnpService, ext uint16) error {
	_, err := c.soap(ctx, svc, "DeletePortMapping",
		"NewRemoteHost", "",
		"NewExternalPort", strconv.Itoa(int(ext)),
		"NewProtocol", "UDP")
	return err
}
