package dnsserver

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestResolverAllowClient(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1", 60))
	refused := netip.MustParseAddr("127.0.0.2")
	allowClient := func(a net.Addr) bool {
		ap, err := netip.ParseAddrPort(a.String())
		return err == nil && ap.Addr() != refused
	}
	var (
		mu     sync.Mutex // guards events
		events []string
	)
	onServe := func(a net.Addr, serving bool) {
		mu.Lock()
		defer mu.Unlock()
		state := "stop"
		if serving {
			state = "start"
		}
		events = append(events, a.Network()+" "+state)
	}
	r := NewResolver(ResolverOptions{AllowClient: allowClient, OnServe: onServe})
	r.SetRecords(testRecords(up.addr))
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { errc <- r.ServePacket(ctx, pc) }()
	go func() { errc <- r.ServeStream(ctx, ln) }()
	addr := pc.LocalAddr().String()
	waitServing(t, addr)

	for _, tt := range []struct {
		from  string
		netw  string
		rcode int
	}{
		{"127.0.0.1", "udp", dns.RcodeSuccess},
		{"127.0.0.1", "tcp", dns.RcodeSuccess},
		{"127.0.0.2", "udp", dns.RcodeRefused},
		{"127.0.0.2", "tcp", dns.RcodeRefused},
	} {
		t.Run(tt.netw+" from "+tt.from, func(t *testing.T) {
			d := &net.Dialer{Timeout: 3 * time.Second}
			if tt.netw == "udp" {
				d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(tt.from)}
			} else {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(tt.from)}
			}
			c := &dns.Client{Net: tt.netw, Dialer: d, Timeout: 3 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion("beta.default.beam.internal.", dns.TypeA)
			resp, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Rcode != tt.rcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
			}
			if tt.rcode == dns.RcodeRefused && len(resp.Answer) != 0 {
				t.Errorf("refused client got %d answers, want none", len(resp.Answer))
			}
		})
	}

	cancel()
	for range 2 {
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(events)
	want := []string{"tcp start", "tcp stop", "udp start", "udp stop"}
	if !slices.Equal(events, want) {
		t.Errorf("OnServe events: got %q, want %q", events, want)
	}
}
