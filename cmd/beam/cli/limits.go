package cli

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"beam.dev/beam/edge"
	"beam.dev/beam/internal/bodyrate"
	"beam.dev/beam/internal/connlimit"
)

// Shares of the process's descriptor limit the listeners' connection caps
// default to. What is left over stays for everything else a role opens:
// the database, the node's sockets and state files, outbound dials, DNS.
const (
	// shareAlone is the share of a server that is the process's only
	// listener (beam edge, beam derp, beam coordinator).
	shareAlone = 0.75
	// shareServerEdge and shareServerControl split beam server's: the
	// edge's listeners, and the coordinator and relay listener.
	shareServerEdge    = 0.5
	shareServerControl = 0.25

	// fallbackMaxConns is the cap when the descriptor limit is unknown.
	fallbackMaxConns = 10000
	// minMaxConns is the smallest default cap, whatever the limit.
	minMaxConns = 64
	// edgeConnsPerSource caps one source address at the edge, where a
	// client is a browser or an app (edge.DefaultMaxConnsPerClient).
	edgeConnsPerSource = edge.DefaultMaxConnsPerClient
	// controlConnsPerSource leaves one source address of the coordinator
	// and relay listeners uncapped: many nodes may share one address
	// behind a NAT, each with a map stream and a relay connection.
	controlConnsPerSource = 0
)

// controlIdleTimeout closes the coordinator's and relay's connections
// that sit idle between requests (a node's pooled connection, or one
// opened only to hold a slot of the cap). A map stream in progress is a
// request, and a relay connection is no longer HTTP, so neither is
// touched. Tests lower it.
var controlIdleTimeout = 90 * time.Second

// connLimits returns the caps of a listener: maxConns if the user set it
// (a flag; 0 means derived, negative means none), else share of the
// descriptor limit nofile; and perSource for one source address if that
// is positive. The cap needs no share per address for a few addresses
// not to fill it: once it is full, a newcomer pushes out a connection of
// the address holding the most, unless its own would then hold as many
// (connlimit.Limits.Max).
func connLimits(maxConns int, share float64, nofile uint64, perSource int) connlimit.Limits {
	m := maxConns
	if m == 0 {
		m = fallbackMaxConns
		if nofile > 0 {
			m = max(int(float64(nofile)*share), minMaxConns)
		}
	}
	if m < 0 {
		return connlimit.Limits{}
	}
	return connlimit.Limits{Max: m, PerSource: max(perSource, 0)}
}

// logLimits says which caps are in force.
func logLimits(logger *slog.Logger, what string, nofile uint64, lim connlimit.Limits) {
	logger.Info("connection limits", "listener", what, "max_conns", lim.Max, "max_conns_per_client", lim.PerSource, "open_files_limit", fmt.Sprint(nofile))
}

// controlBodyLimit bounds request bodies on the coordinator's and relay's
// listeners: control messages are small.
var controlBodyLimit = bodyrate.Limit{Timeout: 30 * time.Second, MinRate: 1024}

// limitedServer returns ln capped by lim and an http.Server for h with
// the header and idle timeouts and the body limit every Beam server
// listener has.
func limitedServer(ln net.Listener, lim connlimit.Limits, h http.Handler, logger *slog.Logger) (net.Listener, *http.Server) {
	hs := &http.Server{
		Handler:           bodyrate.Handler(h, controlBodyLimit),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       controlIdleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	return connlimit.Listener(ln, connlimit.NewCounter(lim)), hs
}

// edgeLimits turns caps into the edge's options, where zero means the
// default and negative means none, and sets its body timeout.
func edgeLimits(o *edge.Options, lim connlimit.Limits, bodyTimeout time.Duration) {
	o.BodyTimeout = bodyTimeout
	o.MaxConns, o.MaxConnsPerClient = -1, -1
	if lim.Max > 0 {
		o.MaxConns = lim.Max
	}
	if lim.PerSource > 0 {
		o.MaxConnsPerClient = lim.PerSource
	}
}
