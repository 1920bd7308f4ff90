package edgeoidc

import "testing"

// SetMaxHostsForTest sets maxHosts until t ends.
func SetMaxHostsForTest(t *testing.T, n int) {
	old := maxHosts
	maxHosts = n
	t.Cleanup(func() { maxHosts = old })
}
