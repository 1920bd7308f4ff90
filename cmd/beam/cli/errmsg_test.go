package cli

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/localclient"
)

func TestErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"plain", errors.New("bad flag"), "bad flag"},
		{"daemon not running, wrapped", fmt.Errorf("expose: %w", &localclient.NotRunningError{Socket: "/s.sock", Err: errors.New("connect: no such file")}),
			"the daemon is not running (nothing answers on /s.sock): run beam up, or pass the --socket of a running one"},
		{"daemon message", fmt.Errorf("up: %w", &localclient.Error{Status: 500, Detail: "coordclient: register: coordinator: auth key is not valid", Message: "the auth key is not valid"}),
			"the auth key is not valid"},
		{"daemon without message", &localclient.Error{Status: 500, Detail: "dial beta:80: connection was refused"}, "dial beta:80: connection was refused"},
		{"coordinator code", fmt.Errorf("coordclient: register: %w", &coordclient.Error{Status: http.StatusUnauthorized, Code: "auth_key_invalid", Message: "auth key is not valid"}),
			"the auth key is not valid (unknown, used up or expired): create a new one with beam admin authkey create and pass it with --authkey"},
		{"coordinator without code", &coordclient.Error{Status: http.StatusConflict, Message: "name in use"}, "the coordinator refused: name in use"},
		{"unreachable", fmt.Errorf("%w: dial tcp: refused", coordclient.ErrUnreachable), "the coordinator is unreachable: check the --coordinator URL and that the coordinator runs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorMessage(tc.err); got != tc.want {
				t.Errorf("ErrorMessage = %q, want %q", got, tc.want)
			}
		})
	}
}
