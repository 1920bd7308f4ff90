package acmecert

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/mholt/acmez/v3/acme"
)

// TestTXTSolver checks that the DNS-01 solver keeps every value of a
// record name while several challenges share it (the wildcard and the bare
// domain), withdraws them one by one, deletes the record with the last,
// and reports a failed publication.
func TestTXTSolver(t *testing.T) {
	records := map[string][]string{}
	var fail error
	s := &txtSolver{values: map[string][]string{}, set: func(_ context.Context, name string, values []string) error {
		if fail != nil {
			return fail
		}
		if len(values) == 0 {
			delete(records, name)
		} else {
			records[name] = values
		}
		return nil
	}}
	ch := func(key string) acme.Challenge {
		return acme.Challenge{Identifier: acme.Identifier{Type: "dns", Value: "example.test"}, KeyAuthorization: key}
	}
	a, b := ch("a"), ch("b")
	const name = "_acme-challenge.example.test"
	steps := []struct {
		name string
		do   func(context.Context, acme.Challenge) error
		ch   acme.Challenge
		want []string
	}{
		{"present a", s.Present, a, []string{a.DNS01KeyAuthorization()}},
		{"present b", s.Present, b, []string{a.DNS01KeyAuthorization(), b.DNS01KeyAuthorization()}},
		{"clean up a", s.CleanUp, a, []string{b.DNS01KeyAuthorization()}},
		{"clean up b", s.CleanUp, b, nil},
	}
	for _, st := range steps {
		if err := st.do(t.Context(), st.ch); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := records[name]; !slices.Equal(got, st.want) {
			t.Fatalf("%s: record %v, want %v", st.name, got, st.want)
		}
	}
	if _, ok := records[name]; ok {
		t.Fatalf("record left after the last clean-up")
	}
	fail = errors.New("zone unreachable")
	if err := s.Present(t.Context(), a); !errors.Is(err, fail) {
		t.Fatalf("Present with a failing zone: %v, want %v", err, fail)
	}
	if len(s.values[name]) != 0 {
		t.Fatalf("a value that was not published is remembered: %v", s.values[name])
	}
}

// TestNewValidates checks the options New refuses.
func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"no storage", Options{}},
		{"on demand without Allow", Options{StorageDir: t.TempDir(), OnDemand: &OnDemand{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, err := New(tc.o); err == nil {
				m.Close()
				t.Fatal("New accepted it")
			}
		})
	}
	m, err := New(Options{StorageDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Obtain(t.Context(), "example.test"); err == nil {
		t.Fatal("Obtain without SetTXT succeeded")
	}
}
