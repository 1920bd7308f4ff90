package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// DemoOptions are the flags of beam demo.
type DemoOptions struct {
	Keep bool
	Port int
}

// NewCmdDemo returns the beam demo command: the whole job on one machine,
// in one process.
func NewCmdDemo(f *Factory, runF func(*DemoOptions) error) *cobra.Command {
	o := &DemoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a server, two devices and a published app on this machine, and show them working",
		Long: `Run, in one process and on loopback only: beam server --dev, two devices
(alpha and beta) that join the mesh, a small web app on beta, beam expose of
that app, and requests to it through the mesh and through the public edge.
With --keep it keeps everything running until Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(o)
			}
			return runDemo(cmd.Context(), f, o)
		},
	}
	cmd.Flags().BoolVar(&o.Keep, "keep", false, "keep running until Ctrl-C")
	cmd.Flags().IntVar(&o.Port, "port", 8081, "the edge's HTTP port on 127.0.0.1 (0 picks one)")
	return cmd
}

func runDemo(ctx context.Context, f *Factory, o *DemoOptions) error {
	dir, err := os.MkdirTemp("", "beam-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	say := func(format string, args ...any) { fmt.Fprintf(f.Out, format+"\n", args...) }

	// 1. The server: coordinator, relay, STUN and edge, in dev mode.
	srv, err := startLocalDevServer(ctx, f, filepath.Join(dir, "server"), "127.0.0.1:"+strconv.Itoa(o.Port))
	if err != nil {
		return err
	}
	// The server stops with ctx; its data goes with dir only once it
	// has (its edge node saves its state on the way out).
	defer func() { cancel(); srv.wait() }()
	coordURL := srv.URL
	say("server    coordinator+relay %s, edge http://%s (dev mode)", coordURL, srv.EdgeAddr)

	// 2. Two devices join; in dev mode loopback devices need no auth key.
	devices := map[string]*node.Node{}
	for _, name := range []string{"alpha", "beta"} {
		n, err := node.New(node.Options{StateDir: filepath.Join(dir, name), Hostname: name})
		if err != nil {
			return err
		}
		defer n.Close()
		resp, err := n.Up(ctx, apitype.UpRequest{Coordinator: coordURL, Hostname: name})
		if err != nil {
			return fmt.Errorf("%s joins: %w", name, err)
		}
		say("device    %-6s %s", resp.Name, joinAddrs(resp.IPs))
		devices[name] = n
	}

	// 3. A small web app on beta's loopback.
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from beta's app! You asked for %s via %s\n", r.URL.Path, r.Host)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go app.Serve(ln)
	defer app.Close()
	appPort := ln.Addr().(*net.TCPAddr).Port
	say("app       beta serves http://127.0.0.1:%d", appPort)

	// 4. Through the mesh: alpha reaches beta's app by its MagicDNS name,
	// once the coordinator has told alpha about beta.
	for wait := time.Now().Add(10 * time.Second); len(devices["alpha"].Status().Peers) == 0; {
		if time.Now().After(wait) {
			return errors.New("alpha never learned about beta")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: devices["alpha"].DialContext}}
	body, err := fetch(ctx, hc, fmt.Sprintf("http://beta:%d/mesh", appPort), "")
	if err != nil {
		return fmt.Errorf("alpha -> beta over the mesh: %w", err)
	}
	say("mesh      alpha GET http://beta:%d/mesh -> %s", appPort, strings.TrimSpace(body))
	for _, p := range devices["alpha"].Status().Peers {
		say("status    alpha sees %-6s %s %s", p.Name, p.Path, p.Endpoint)
	}

	// 5. beam expose: beta's app on a public URL at the edge.
	ex, err := devices["beta"].Expose(ctx, apitype.ExposeRequest{Port: uint16(appPort), Proto: "http"})
	if err != nil {
		return fmt.Errorf("expose: %w", err)
	}
	say("expose    beta:%d -> %s", appPort, ex.URL)
	if h := loopbackHint(ex.URL); h != "" {
		say("          %s", h)
	}
	// Fetch through the edge as a browser would (*.localhost is loopback).
	edgeClient := &http.Client{Timeout: 15 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, err = fetch(ctx, edgeClient, "http://"+srv.EdgeAddr+"/public", ex.Host)
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", ex.URL, err)
	}
	say("public    GET %s/public -> %s", ex.URL, strings.TrimSpace(body))
	if !o.Keep {
		say("ok: the mesh and the edge work. Run `beam demo --keep` and open %s in a browser.", ex.URL)
		return nil
	}
	say("running; open %s (Ctrl-C to stop)", ex.URL)
	select {
	case <-ctx.Done():
	case err := <-srv.Done:
		return err
	}
	return nil
}

// fetch GETs url (with Host set to host, if given) and returns the body of a 200.
func fetch(ctx context.Context, hc *http.Client, url, host string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}
