package cli

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"beam.dev/beam/localapi/apitype"
)

// TestPrintStatusPeerStates: beam status names each peer's state, unknown
// included (its coordinator stopped answering), and the coordinator the
// stream is on when the node has several.
func TestPrintStatusPeerStates(t *testing.T) {
	var out bytes.Buffer
	f := &Factory{Out: &out}
	printStatus(f, &apitype.Status{
		State:             apitype.StateRunning,
		CoordinatorOnline: true,
		CoordinatorStream: "http://c2.example:9080",
		Self:              &apitype.PeerStatus{Name: "me"},
		Peers: []apitype.PeerStatus{
			{Name: "up", Online: true, Path: "direct"},
			{Name: "gone", Path: "none"},
			{Name: "lost", Unknown: true, Path: "none"},
			{Name: "old", Expired: true, Path: "none"},
		},
	})
	for name, want := range map[string]string{"up": "online", "gone": "offline", "lost": "unknown", "old": "expired"} {
		if !regexp.MustCompile(`(?m)^` + name + `\s+\S*\s*` + want + `\s`).MatchString(out.String()) {
			t.Errorf("peer %s not shown %s:\n%s", name, want, out.String())
		}
	}
	if !strings.Contains(out.String(), "# coordinator: http://c2.example:9080\n") {
		t.Errorf("the coordinator streaming is not shown:\n%s", out.String())
	}
}

// TestPrintStatusEscapesNames: peer names come from the coordinator; an
// old or hostile one's control characters are printed as escapes, not
// sent to the terminal.
func TestPrintStatusEscapesNames(t *testing.T) {
	var out bytes.Buffer
	f := &Factory{Out: &out}
	printStatus(f, &apitype.Status{
		State: apitype.StateRunning,
		Self:  &apitype.PeerStatus{Name: "me\x1b[2J"},
		Peers: []apitype.PeerStatus{{Name: "evil\x1b]0;pwned\x07", Path: "relay", Relay: "r\x1b[31m"}},
	})
	if strings.ContainsAny(out.String(), "\x1b\x07") {
		t.Errorf("status printed control characters: %q", out.String())
	}
	if !strings.Contains(out.String(), `evil\x1b]0;pwned\x07`) {
		t.Errorf("status does not show the peer's name escaped: %q", out.String())
	}
}

// TestPrintStatusKeyRefused: a node refusing its coordinator's new
// machine key is not merely cut off from it: status says it refused, and
// the health line says why and how to recover.
func TestPrintStatusKeyRefused(t *testing.T) {
	var out bytes.Buffer
	f := &Factory{Out: &out}
	printStatus(f, &apitype.Status{
		State:                apitype.StateRunning,
		Self:                 &apitype.PeerStatus{Name: "me"},
		Health:               []string{"the coordinator at http://c.example now has machine key mkey:b, not mkey:a"},
		CoordinatorKeyChange: &apitype.KeyChange{Server: "http://c.example", Pinned: "mkey:a", Got: "mkey:b"},
	})
	if got := out.String(); !strings.Contains(got, "# coordinator refused (its machine key changed") || strings.Contains(got, "unreachable") {
		t.Errorf("status of a node refusing its coordinator's key:\n%s\nwant it to say refused, not unreachable", got)
	}
}
