//go:build !unix

package privsock

// restrictUmask does nothing where there is no umask: the caller chmods
// the socket after creating it.
func restrictUmask() func() { return func() {} }
