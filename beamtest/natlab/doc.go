// Package natlab holds end-to-end tests of the real beam binary across real
// NATs: a coordinator and relay in the "internet" namespace of an
// [beam.dev/beam/beamtest/nslab] lab, and beam daemons behind routers of every
// NAT kind (none, easy, hard, UDP blocked).
//
// The tests measure what each pair of devices achieves (direct or relayed
// path, time to reach it, gaps in a steady flow while paths change, transfer
// integrity under loss and delay) and write what they measured as JSON and
// text artefacts, to the directory named by BEAM_NATLAB_OUT or to the test's
// temporary directory. They need root and never skip.
//
// Nothing imports this package; it holds only tests.
package natlab
