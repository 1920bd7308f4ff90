package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"beam.dev/beam/configs"
)

// localDevServer is a dev server (beam server --dev) running in this
// process for beam demo and the bare-port form: coordinator, relay and
// edge on loopback, its data under a directory of the caller's.
type localDevServer struct {
	URL      string       // the coordinator's, http://127.0.0.1:PORT
	EdgeAddr string       // the edge's HTTP listener, 127.0.0.1:PORT
	Done     <-chan error // receives runServer's result when it stops
	stopped  chan struct{}
}

// wait waits until the server has stopped (its ctx ended): until then it
// may still write its data directory (its edge node saves its state).
func (s *localDevServer) wait() { <-s.stopped }

// startLocalDevServer starts a dev server with its data in dataDir and
// its edge on httpAddr ("127.0.0.1:0" for any port), and returns once it
// serves. It stops when ctx ends. It writes nothing to f's output and
// leaves no discovery copy for beam admin in the user's directories: it is
// gone when the command ends.
func startLocalDevServer(ctx context.Context, f *Factory, dataDir, httpAddr string) (*localDevServer, error) {
	quiet := &Factory{In: f.In, Out: io.Discard, ErrOut: io.Discard, Getenv: func(k string) string {
		switch k {
		case "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "APPDATA", "HOME":
			return ""
		}
		return f.getenv(k)
	}}
	type readyInfo struct{ addr, http string }
	ready := make(chan readyInfo, 1)
	done := make(chan error, 1)
	so := &ServerOptions{
		Server: configs.Server{
			DataDir: dataDir, Dev: true, Domain: "localhost",
			Addr: "127.0.0.1:0", HTTPAddr: httpAddr, STUNAddr: "127.0.0.1:0",
			TCPPorts: "20000-20999", UDPPorts: "21000-21999", LogLevel: "error",
		},
		ready: func(addr, httpAddr string) { ready <- readyInfo{addr, httpAddr} },
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		done <- runServer(ctx, quiet, so)
	}()
	select {
	case ri := <-ready:
		return &localDevServer{URL: "http://" + ri.addr, EdgeAddr: ri.http, Done: done, stopped: stopped}, nil
	case err := <-done:
		if err == nil {
			err = errors.New("stopped before it served")
		}
		return nil, fmt.Errorf("local dev server: %w", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		return nil, errors.New("local dev server: did not start within 30 s")
	}
}
