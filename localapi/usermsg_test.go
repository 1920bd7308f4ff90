package localapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/node"
)

func TestUserMessage(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"internal", errors.New("decode request: EOF"), ""},
		{"refused", fmt.Errorf("dial beta:8000: %w", refused), "dial beta:8000: connection refused: nothing listens on that port of the peer (peers reach its loopback, 127.0.0.1)"},
		{"not running", fmt.Errorf("ping: %w", node.ErrNotRunning), "this node is not in the mesh: run beam up"},
		{"no such name", fmt.Errorf("resolve x: %w", dnsserver.ErrNotFound), "no such name in this network: beam status lists the peers (a new one appears within a second of joining)"},
		{"unreachable", fmt.Errorf("coordclient: %w: fetch server key: %w", coordclient.ErrUnreachable, refused),
			"the coordinator is unreachable (connect: connection refused): check the --coordinator URL and that the coordinator runs"},
		{"code", fmt.Errorf("coordclient: register: %w", &coordclient.Error{Status: 401, Code: "node_expired"}), "this node's key expired: join again with beam up --authkey KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := userMessage(tc.err); got != tc.want {
				t.Errorf("userMessage = %q, want %q", got, tc.want)
			}
		})
	}
}
