// Package edgelab holds end-to-end tests of Beam's public edge seen from
// the internet: `beam server` (coordinator, relay, STUN, the authoritative
// zone of example.test and the in-process edge) and the Pebble ACME test CA
// run in the server namespace of a [beam.dev/beam/beamtest/nslab] lab;
// devices run `beam daemon` behind NAT routers; public clients (curl, dig,
// redis-cli, wrk and Go helpers) reach the devices' apps through the edge,
// resolving names through Beam's zone and trusting only the ACME CA's
// root.
//
// The tests cover HTTPS with a certificate from the ACME CA (HTTP/2,
// WebSocket, gRPC, server-sent events, large uploads and downloads), raw
// TCP and UDP routes, custom domains proved in the customer's DNS and
// served with an on-demand certificate, pools that lose a member,
// per-route policies, attacks on names (another network, spelling tricks,
// dangling names, Host/SNI mismatch, request smuggling) and TLS
// passthrough. TestPublicServerREADME follows the README's "Public
// server" section command by command (the domain, address and ACME
// directory replaced by the lab's), and beam server check and beam
// netcheck --server report a broken delegation, a closed port and a
// failed ACME order with their fixes. Benchmarks compare the edge with the origin in the same run
// and report the edge's memory per open WebSocket.
//
// They need root and the programs curl, dig, redis-server, redis-cli and
// wrk (.ci/run installs them), and never skip. Devices sit behind easy
// NATs (reached directly) and hard NATs (reached over the relay). Tests of
// behaviour the engine does not have yet go behind the build tag
// edgelab_pending (none today):
//
//	go test -tags edgelab_pending ./beamtest/edgelab/
//
// Set BEAM_EDGELAB_OUT to a directory to keep the logs of the servers and
// daemons.
//
// Nothing imports this package; it holds only tests.
package edgelab
