package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/wire"
)

// TestAdminDomainsRemove: beam admin domains remove deletes a claim
// (which nothing else could), leaves the others, and says when there is
// none.
func TestAdminDomainsRemove(t *testing.T) {
	ctx := t.Context()
	data := filepath.Join(t.TempDir(), "coord")
	args := []string{"--edge-domain", "example.test", "--edge-host", "edge.example.test"}
	_, stop := startTestCoordinator(t, data, args...)
	stop()

	// Claims as a coordinator stores them; seeded in the store so that no
	// DNS lookup is needed.
	st, err := sqlstore.Open(ctx, filepath.Join(data, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	nets, err := st.Networks(ctx)
	if err != nil || len(nets) == 0 {
		t.Fatalf("networks = %v, %v", nets, err)
	}
	now := time.Now()
	for _, d := range []*coordinator.Domain{
		{NetworkID: nets[0].ID, Domain: "x1.attacker.test", Token: "beam-verify-1", CreatedAt: now},
		{NetworkID: nets[0].ID, Domain: "x2.attacker.test", Token: "beam-verify-2", CreatedAt: now},
		{NetworkID: nets[0].ID, Domain: "shop.customer.test", Token: "beam-verify-3", CreatedAt: now, VerifiedAt: now},
	} {
		if err := st.PutDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	url, stop := startTestCoordinator(t, data, args...)
	defer stop()
	tok, _ := os.ReadFile(filepath.Join(data, "admin.token"))
	env := map[string]string{"BEAM_ADMIN_TOKEN": strings.TrimSpace(string(tok)), "BEAM_COORDINATOR": url}
	list := func() []string {
		t.Helper()
		out, err := runAdmin(t, env, "domains", "list", "--json")
		var ds []wire.DomainStatus
		if err != nil || json.Unmarshal([]byte(out), &ds) != nil {
			t.Fatalf("domains list --json = %s, %v", out, err)
		}
		var names []string
		for _, d := range ds {
			names = append(names, d.Domain)
		}
		return names
	}
	if got := strings.Join(list(), " "); got != "shop.customer.test x1.attacker.test x2.attacker.test" {
		t.Fatalf("claims = %s", got)
	}
	if _, err := runAdmin(t, env, "domains", "remove", "X1.attacker.test."); err != nil {
		t.Fatalf("domains remove: %v", err)
	}
	if got := strings.Join(list(), " "); got != "shop.customer.test x2.attacker.test" {
		t.Fatalf("claims after remove = %s, want x1.attacker.test gone", got)
	}
	if _, err := runAdmin(t, env, "domains", "remove", "x1.attacker.test"); err == nil || !strings.Contains(err.Error(), "no claim") {
		t.Errorf("second remove = %v, want no claim", err)
	}
	if _, err := runAdmin(t, env, "domains", "remove", "--network", "nosuch", "x2.attacker.test"); err == nil || !strings.Contains(err.Error(), "no claim") {
		t.Errorf("remove for a missing network = %v, want no claim", err)
	}
	if _, err := runAdmin(t, env, "domains", "remove", "--network", "default", "x2.attacker.test"); err != nil {
		t.Fatalf("domains remove --network default: %v", err)
	}
	if got := strings.Join(list(), " "); got != "shop.customer.test" {
		t.Fatalf("claims after second remove = %s", got)
	}
}
