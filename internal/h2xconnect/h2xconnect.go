// Package h2xconnect turns on RFC 8441 extended CONNECT (WebSockets over
// HTTP/2) in net/http's and golang.org/x/net/http2's HTTP/2 servers and
// clients. Go 1.26 ships both with it off unless GODEBUG holds
// http2xconnect=1, which each reads from the environment once, in its
// init function, and which cannot be set with a //go:debug directive
// (it is not a registered setting).
//
// Importing this package for its side effect adds http2xconnect=1 to
// GODEBUG before those init functions run, unless GODEBUG already names
// http2xconnect. The order is the language's: packages are initialized
// one at a time, each time the first in import-path order whose imports
// are all initialized ("Package initialization" in the specification).
// This package imports only os and strings, and "beam.dev/..." sorts
// before "golang.org/..." and "net/http", so it runs first. A test in
// this package checks that it did.
package h2xconnect

import (
	"os"
	"strings"
)

// Setting is what this package adds to GODEBUG.
const Setting = "http2xconnect=1"

func init() {
	v := os.Getenv("GODEBUG")
	if strings.Contains(v, "http2xconnect=") {
		return
	}
	if v != "" {
		v += ","
	}
	os.Setenv("GODEBUG", v+Setting)
}
