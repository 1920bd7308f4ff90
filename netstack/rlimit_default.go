//go:build !unix

package netstack

// fileLimit returns the soft limit on open files, or 0 if unknown.
func fileLimit() uint64 { return 0 }
