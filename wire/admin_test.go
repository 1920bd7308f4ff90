package wire

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// TestAdminJSON pins the JSON encoding of the admin API's types, which
// the coordinator writes and coordclient (and scripts using beam admin
// --json) read: a change here is a change of the admin API.
func TestAdminJSON(t *testing.T) {
	var raw [32]byte
	raw[0], raw[31] = 0x01, 0xff
	nk := key.NodePublicFromRaw32(raw)
	nkText := "nodekey:01000000000000000000000000000000000000000000000000000000000000ff"
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"user", User{ID: 7, Name: "alice", CreatedAt: at},
			`{"id":7,"name":"alice","created_at":"2026-01-02T03:04:05Z"}`},
		{"create user", CreateUserRequest{Name: "alice"}, `{"name":"alice"}`},
		{"derp verify, allowed", DERPVerifyResponse{Allow: true}, `{"allow":true}`},
		{"derp verify, refused", DERPVerifyResponse{}, `{"allow":false}`},
		{"approve", ApproveRequest{User: "alice"}, `{"user":"alice"}`},
		{"approve tagged", ApproveRequest{Tags: []string{"tag:server"}}, `{"tags":["tag:server"]}`},
		{"approve, neither", ApproveRequest{}, `{}`},
		{"audit entry", AuditEntry{ID: 3, Time: at, Actor: "admin", Action: "node.remove", Target: "laptop", Detail: "by name"},
			`{"id":3,"time":"2026-01-02T03:04:05Z","actor":"admin","action":"node.remove","target":"laptop","detail":"by name"}`},
		{"audit entry, empty optional", AuditEntry{ID: 3, Time: at, Actor: "admin", Action: "policy.set"},
			`{"id":3,"time":"2026-01-02T03:04:05Z","actor":"admin","action":"policy.set"}`},
		{"pending registration", PendingRegistration{Code: "ABCD", NodeKey: nk, Hostname: "laptop", OS: "linux", Created: at, Expires: at.Add(10 * time.Minute)},
			`{"code":"ABCD","node_key":"` + nkText + `","hostname":"laptop","os":"linux","created":"2026-01-02T03:04:05Z","expires":"2026-01-02T03:14:05Z"}`},
		{"policy error body", PolicyErrorBody{Error: "3:5: unknown user", Code: CodeBadPolicy, Problems: []PolicyProblem{
			{Line: 3, Column: 5, Message: "unknown user"}, {Message: "test 1 failed", TestFailed: true}}},
			`{"error":"3:5: unknown user","code":"bad_policy","problems":[{"line":3,"column":5,"message":"unknown user"},{"message":"test 1 failed","test_failed":true}]}`},
		{"domain status", DomainStatus{Domain: "example.com", Network: "default", TXTName: "_beam-challenge.example.com", Token: "tok",
			ACMEChallenge: "_acme-challenge.example.com", ACMEChallengeCNAME: "example.com._acme-challenge.edge.example", Verified: true, VerifiedAt: at},
			`{"domain":"example.com","network":"default","txt_name":"_beam-challenge.example.com","token":"tok","acme_challenge":"_acme-challenge.example.com","acme_challenge_cname":"example.com._acme-challenge.edge.example","verified":true,"verified_at":"2026-01-02T03:04:05Z"}`},
		{"domain status, unverified", DomainStatus{Domain: "example.com", Network: "default", TXTName: "t", Token: "tok", Problem: "no TXT record"},
			`{"domain":"example.com","network":"default","txt_name":"t","token":"tok","verified":false,"problem":"no TXT record"}`},
		{"create auth key", CreateAuthKeyRequest{Network: "lab", Reusable: true, Expiry: "1h", Tags: []string{"tag:ci"}, KeyExpiry: "never"},
			`{"network":"lab","reusable":true,"expiry":"1h","tags":["tag:ci"],"key_expiry":"never"}`},
		{"create auth key, zero", CreateAuthKeyRequest{}, `{}`},
		{"create auth key response", CreateAuthKeyResponse{Key: "beamkey-secret", Info: AuthKeyInfo{Prefix: "beamkey-se", Network: "default", CreatedAt: at, Valid: true}},
			`{"key":"beamkey-secret","info":{"prefix":"beamkey-se","network":"default","reusable":false,"ephemeral":false,"use_count":0,"created_at":"2026-01-02T03:04:05Z","valid":true}}`},
		{"auth key info", AuthKeyInfo{Prefix: "p", Network: "n", Reusable: true, Ephemeral: true, Expiry: at, Tags: []string{"tag:a"}, User: "alice",
			UseCount: 2, CreatedAt: at, Edge: true, KeyExpiry: "24h0m0s"},
			`{"prefix":"p","network":"n","reusable":true,"ephemeral":true,"expiry":"2026-01-02T03:04:05Z","tags":["tag:a"],"user":"alice","use_count":2,"created_at":"2026-01-02T03:04:05Z","valid":false,"edge":true,"key_expiry":"24h0m0s"}`},
		{"route info", RouteInfo{EdgeRoute: EdgeRoute{Host: "app.edge.example", Proto: "http", Node: nk, Target: netip.MustParseAddrPort("100.64.0.1:3000")},
			Network: "default", NodeName: "laptop", Port: 3000, URL: "https://app.edge.example", CreatedAt: at},
			`{"host":"app.edge.example","proto":"http","node":"` + nkText + `","target":"100.64.0.1:3000","network":"default","node_name":"laptop","port":3000,"url":"https://app.edge.example","created_at":"2026-01-02T03:04:05Z"}`},
		{"verify domain", VerifyDomainRequest{Network: "lab"}, `{"network":"lab"}`},
		{"verify domain, default network", VerifyDomainRequest{}, `{}`},
		{"set expiry", SetExpiryRequest{Expiry: "never"}, `{"expiry":"never"}`},
		{"rename node", RenameNodeRequest{Name: "db"}, `{"name":"db"}`},
		{"txt body", TXTBody{Values: []string{"a", "b"}}, `{"values":["a","b"]}`},
		{"txt body, delete", TXTBody{}, `{"values":null}`},
		{"dns settings", DNSSettings{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")},
			Routes:       map[string][]netip.AddrPort{"corp.example": {netip.MustParseAddrPort("100.64.0.9:53")}},
			ExtraRecords: []DNSRecord{{Name: "db.default.beam.internal", Type: "A", Value: "100.64.0.9"}}},
			`{"nameservers":["192.0.2.53:53"],"routes":{"corp.example":["100.64.0.9:53"]},"extra_records":[{"name":"db.default.beam.internal","type":"A","value":"100.64.0.9"}]}`},
		{"dns settings, empty", DNSSettings{}, `{}`},
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

func TestPolicyProblemString(t *testing.T) {
	tests := []struct {
		p    PolicyProblem
		want string
	}{
		{PolicyProblem{Line: 3, Column: 5, Message: "unknown user"}, "3:5: unknown user"},
		{PolicyProblem{Message: "test failed"}, "test failed"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}
