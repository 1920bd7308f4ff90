package beamnet_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"beam.dev/beam/beamnet"
)

// A program joins the network, serves HTTP to its peers on port 80, and
// another node (here in the same program) fetches http://greeter/ by its
// MagicDNS name.
func Example() {
	ctx := context.Background()
	greeter := &beamnet.Server{
		Hostname:   "greeter",
		ControlURL: controlURL, // the coordinator, e.g. https://beam.example.com
		AuthKey:    authKey,
		Ephemeral:  true, // leave the network on Close
	}
	defer greeter.Close()
	st, err := greeter.Up(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("joined as", st.Name)

	ln, err := greeter.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from greeter")
	}))

	client := &beamnet.Server{Hostname: "client", ControlURL: controlURL, AuthKey: authKey, Ephemeral: true}
	defer client.Close()
	if _, err := client.Up(ctx); err != nil {
		log.Fatal(err)
	}
	resp, err := client.HTTPClient().Get("http://greeter/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(os.Stdout, resp.Body)
	// Output:
	// joined as greeter
	// hello from greeter
}

// ListenPublic puts a program's own HTTP server on the public edge: the
// requests arrive on the listener, never on a port of the host.
func ExampleServer_ListenPublic() {
	ctx := context.Background()
	s := &beamnet.Server{Hostname: "site", ControlURL: controlURL, AuthKey: authKey, Ephemeral: true}
	defer s.Close()
	if _, err := s.Up(ctx); err != nil {
		log.Fatal(err)
	}
	ln, err := s.ListenPublic(ctx, "site")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello, %s visitor\n", r.Header.Get("X-Forwarded-Proto"))
	}))
	fmt.Println(ln.URL())

	// Anyone on the internet can now fetch the URL; here, through the
	// test cluster's edge.
	body, err := getPublic(ln.URL())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(body)
	// Output:
	// http://site.example.test
	// hello, http visitor
}

// Dial reaches a peer by name over TCP or UDP.
func ExampleServer_Dial() {
	ctx := context.Background()
	echo := &beamnet.Server{Hostname: "udp-echo", ControlURL: controlURL, AuthKey: authKey, Ephemeral: true}
	defer echo.Close()
	if _, err := echo.Up(ctx); err != nil {
		log.Fatal(err)
	}
	pc, err := echo.ListenPacket("udp", ":7")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()

	s := &beamnet.Server{Hostname: "pinger", ControlURL: controlURL, AuthKey: authKey, Ephemeral: true}
	defer s.Close()
	if _, err := s.Up(ctx); err != nil {
		log.Fatal(err)
	}
	c, err := s.Dial(ctx, "udp", "udp-echo:7")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// UDP may lose a datagram (the first ones wait for the WireGuard
	// handshake): send until one comes back.
	buf := make([]byte, 100)
	for range 20 {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			fmt.Printf("%s\n", buf[:n])
			break
		}
	}
	// Output:
	// ping
}
