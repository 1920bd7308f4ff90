package netstack

import (
	"os"
	"strconv"
)

// Debug knobs: environment variables that change how an engine behaves,
// for debugging and benchmarks only. Each is read when an engine is
// created (New); none is meant for production use.

// debugAlwaysRelay reports whether BEAM_DEBUG_ALWAYS_RELAY is set to a
// true value (1, true): the engine then reaches its peers only through the
// relay, never over direct UDP (see bind.Options.RelayOnly), so the relay
// path can be measured on a machine where direct paths always work.
func debugAlwaysRelay() bool { return envBool("BEAM_DEBUG_ALWAYS_RELAY") }

// envBool reports whether the environment variable name holds a true
// value as strconv.ParseBool reads it; unset or unparsable is false.
func envBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}

// debugInflight returns the value of BEAM_DEBUG_INFLIGHT as a number of
// packets, and whether it is set to one: the size of both in-flight
// windows (see inflightWindow), 0 for none, so a benchmark can compare
// window sizes, or windows against none, in one run.
func debugInflight() (int, bool) {
	n, err := strconv.Atoi(os.Getenv("BEAM_DEBUG_INFLIGHT"))
	return n, err == nil && n >= 0
}

// debugLazyPeers reports whether lazy peers are on: only peers with
// recent traffic are then configured in wireguard-go (see peers.go),
// instead of every peer as soon as it is in the config. They are, unless
// BEAM_DEBUG_LAZY_PEERS is set to a false value (0, false), which
// configures every peer at once, so the two can be compared.
func debugLazyPeers() bool {
	v, err := strconv.ParseBool(os.Getenv("BEAM_DEBUG_LAZY_PEERS"))
	return err != nil || v
}
