package wire

import (
	"encoding/json"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// TestProtocolJSON pins the JSON encoding of the control protocol's
// envelope and error body: a change here is a change of the wire format
// that every deployed node and coordinator speaks.
func TestProtocolJSON(t *testing.T) {
	var raw [32]byte
	raw[0], raw[31] = 0x01, 0xff
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"envelope", Envelope{NodeKey: key.NodePublicFromRaw32(raw), Sealed: []byte("sealed box")},
			`{"node_key":"nodekey:01000000000000000000000000000000000000000000000000000000000000ff","sealed":"c2VhbGVkIGJveA=="}`},
		{"error body", ErrorBody{Error: "node key expired", Code: CodeNodeExpired},
			`{"error":"node key expired","code":"node_expired"}`},
		{"error body without code", ErrorBody{Error: "boom"},
			`{"error":"boom","code":""}`},
		{"txt request", TXTRequest{Version: 2, NodeKey: key.NodePublicFromRaw32(raw), Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			Name: "_acme-challenge.app.example.test", Values: []string{"v"}},
			`{"version":2,"node_key":"nodekey:01000000000000000000000000000000000000000000000000000000000000ff","timestamp":"2026-01-02T03:04:05Z","name":"_acme-challenge.app.example.test","values":["v"]}`},
		{"txt response", TXTResponse{}, `{}`},
		{"txt response, refused", TXTResponse{Error: "not an edge node"}, `{"error":"not an edge node"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if got := string(b); got != tt.want {
				t.Errorf("json = %s\nwant   %s", got, tt.want)
			}
		})
	}
}

// TestProtocolConstants pins the values both sides must agree on: error
// codes, stream headers and the frame limit.
func TestProtocolConstants(t *testing.T) {
	codes := map[ErrorCode]string{
		CodeBadRequest: "bad_request", CodeBadSeal: "bad_seal", CodeKeyMismatch: "key_mismatch",
		CodeReplay: "replay", CodeClockSkew: "clock_skew", CodeAuthKeyInvalid: "auth_key_invalid",
		CodeUnauthorized: "unauthorized", CodeNodeNotRegistered: "node_not_registered",
		CodeNodeExpired: "node_expired", CodeNodeRemoved: "node_removed", CodeForbidden: "forbidden",
		CodeNotFound: "not_found", CodeUnavailable: "unavailable", CodeInternal: "internal",
		CodeBadPolicy: "bad_policy", CodeConflict: "conflict", CodeApprovalExpired: "approval_expired",
		CodeNameInvalid: "name_invalid", CodeNameReserved: "name_reserved", CodeNameTaken: "name_taken",
		CodeDomainNotVerified: "domain_not_verified", CodePortsExhausted: "ports_exhausted",
		CodeEdgeDisabled: "edge_disabled", CodeNoZone: "no_zone", CodeRouteNotFound: "route_not_found",
		CodeEdgeProtoNotAllowed: "edge_proto_not_served",
	}
	if len(codes) != 26 {
		t.Errorf("got %d distinct codes, want 26 (two constants share a value?)", len(codes))
	}
	for c, want := range codes {
		if string(c) != want {
			t.Errorf("code %q, want %q", c, want)
		}
	}
	if HeaderKeepAlive != "Beam-Keepalive-Ms" || TrailerError != "Beam-Error" {
		t.Errorf("headers = %q, %q; want Beam-Keepalive-Ms, Beam-Error", HeaderKeepAlive, TrailerError)
	}
	if MaxFrameSize != 4<<20 {
		t.Errorf("MaxFrameSize = %d, want %d", MaxFrameSize, 4<<20)
	}
}
