package edge

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCertOrderMetrics feeds certmagic's events to a CertManager and
// reads beam_edge_acme_orders_total back from a registry.
func TestCertOrderMetrics(t *testing.T) {
	m := &CertManager{names: []string{"*.example.test"}}
	for _, ev := range []struct {
		name    string
		renewal bool
	}{
		{"cert_obtaining", false}, // not an outcome: not counted
		{"cert_obtained", false},
		{"cert_failed", true},
		{"cert_obtained", true},
		{"cert_obtained", true},
		{"cert_ocsp_revoked", false},
	} {
		if err := m.onEvent(t.Context(), ev.name, map[string]any{"renewal": ev.renewal, "identifier": "app.example.test"}); err != nil {
			t.Fatalf("onEvent(%s) = %v: a hook error would cancel the order", ev.name, err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "beam_edge_acme_orders_total" {
			t.Fatalf("unexpected family %s", mf.GetName())
		}
		for _, s := range mf.GetMetric() {
			var kind, result string
			for _, l := range s.GetLabel() {
				switch l.GetName() {
				case "kind":
					kind = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			got[kind+"/"+result] = s.GetCounter().GetValue()
		}
	}
	want := map[string]float64{"new/ok": 1, "new/failed": 0, "renewal/ok": 2, "renewal/failed": 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
