//go:build !linux

package cli

// raiseFileLimit returns 0: the descriptor limit is not known here, and
// the connection caps keep their fixed defaults.
func raiseFileLimit() uint64 { return 0 }
