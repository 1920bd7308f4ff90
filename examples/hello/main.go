// Command hello is an example of embedding Beam with package beamnet: the
// program joins a network by itself (no beam daemon), serves a greeting
// to its peers at http://NAME/ and, with -public, to the whole internet
// at the public URL it prints. Stop it with Ctrl-C.
//
//	go run ./examples/hello -coordinator https://beam.example.com -authkey KEY -state ./hello-state -public
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"beam.dev/beam/beamnet"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.ControlURL, "coordinator", os.Getenv("BEAM_COORDINATOR"), "the coordinator's `URL` (default $BEAM_COORDINATOR)")
	flag.StringVar(&cfg.AuthKey, "authkey", os.Getenv("BEAM_AUTHKEY"), "auth `key` to join with (default $BEAM_AUTHKEY)")
	flag.StringVar(&cfg.Dir, "state", "", "state `directory` (default: under the user's config directory)")
	flag.StringVar(&cfg.Name, "name", "hello", "the node's `name` and the public route's")
	flag.BoolVar(&cfg.Public, "public", false, "publish the greeting on the edge too")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	ControlURL, AuthKey, Dir, Name string
	Public                         bool
}

// run joins the network, serves the greeting until ctx ends, and prints
// where to find it on out.
func run(ctx context.Context, cfg config, out io.Writer) error {
	s := &beamnet.Server{
		ControlURL: cfg.ControlURL,
		AuthKey:    cfg.AuthKey,
		Dir:        cfg.Dir,
		Hostname:   cfg.Name,
	}
	defer s.Close()
	st, err := s.Up(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "joined as %s (%s)\n", st.Name, st.IPs[0])

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The edge names the public client; a peer comes straight over
		// the overlay.
		if client := r.Header.Get("X-Forwarded-For"); client != "" {
			fmt.Fprintf(w, "hello %s, from %s via the edge\n", client, st.Name)
			return
		}
		fmt.Fprintf(w, "hello %s, from %s\n", r.RemoteAddr, st.Name)
	})}
	defer srv.Close()
	ln, err := s.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Fprintf(out, "peers: http://%s/\n", st.Name)

	if cfg.Public {
		pub, err := s.ListenPublic(ctx, cfg.Name)
		if err != nil {
			return err
		}
		go func() { errc <- srv.Serve(pub) }()
		fmt.Fprintf(out, "public: %s/\n", pub.URL())
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
