// Package gvisor holds Beam's copy of gVisor's TCP (tcp/, internal/tcp/).
// Its test checks that the copy is upstream gVisor, at the version UPSTREAM
// names and go.mod requires, plus patches/*.patch applied in order: no
// change that is not in a patch, no patch that is not in the copy.
package gvisor
