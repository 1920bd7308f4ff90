//go:build !linux

package tcpcc

func set(uintptr, string) {}

func get(uintptr) (string, error) { return "", nil }

// Default returns "": this platform does not say.
func Default() string { return "" }

// Grantable reports false: this platform does not choose per socket.
func Grantable(string) bool { return false }
