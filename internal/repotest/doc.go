// Package repotest holds repository-wide checks that run as tests: every
// package has a package comment, and the dependency direction between
// Beam's packages (cmd -> roles -> engine -> protocol types) holds, and
// test hooks in production code are set only by tests.
package repotest
