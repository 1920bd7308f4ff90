//go:build natlab_pending

package natlab

// pendingBuild is true when the tests of behaviour the engine does not
// have yet are built (build tag natlab_pending).
const pendingBuild = true
