package main

import (
	"slices"
	"strings"
	"testing"
)

func TestSummarise(t *testing.T) {
	in := `goos: linux
pkg: beam.dev/beam/netstack
BenchmarkFilter-2   	 1000	      100 ns/op	       0 B/op
BenchmarkFilter-2   	 1000	      110 ns/op	       0 B/op
BenchmarkFilter-2   	 1000	       90 ns/op	       0 B/op
BenchmarkFilter-2   	 1000	      140 ns/op	       0 B/op
BenchmarkFilter-2   	 1000	      105 ns/op	       0 B/op
PASS
ok  	beam.dev/beam/netstack	5.1s
`
	var out strings.Builder
	failed, err := summarise(strings.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	if failed {
		t.Errorf("summarise reported a failure for a passing run")
	}
	got := out.String()
	if !strings.HasPrefix(got, in) {
		t.Errorf("input not copied through first:\n%s", got)
	}
	summary := strings.TrimPrefix(got, in)
	var rows []string
	for _, l := range strings.Split(summary, "\n") {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	for _, want := range []string{
		"beam.dev/beam/netstack",
		// median 105; 140 is 33% above it.
		"BenchmarkFilter-2 ns/op 105 ±33% (90 .. 140) n=5",
		"BenchmarkFilter-2 B/op 0 ±0% (0 .. 0) n=5",
	} {
		if !slices.Contains(rows, want) {
			t.Errorf("summary lacks the row %q:\n%s", want, summary)
		}
	}
}

func TestSummariseFailure(t *testing.T) {
	for _, in := range []string{
		"--- FAIL: BenchmarkX\nFAIL\n",
		"FAIL\tbeam.dev/beam/edge\t3.2s\n",
		"panic: boom\n",
	} {
		failed, err := summarise(strings.NewReader(in), &strings.Builder{})
		if err != nil {
			t.Fatal(err)
		}
		if !failed {
			t.Errorf("summarise(%q) did not report a failure", in)
		}
	}
}

func TestParseResult(t *testing.T) {
	tests := []struct {
		line string
		ok   bool
		n    int
	}{
		{"BenchmarkX-2 \t 5 \t 12.5 ns/op \t 3 relay/direct", true, 2},
		{"BenchmarkX-2 \t 1 \t 9 idle-RSS-MiB", true, 1},
		{"BenchmarkX-2 --- FAIL", false, 0},
		{"BenchmarkX-2", false, 0},
		{"BenchmarkX-2 \t 5 \t abc ns/op", false, 0},
	}
	for _, tt := range tests {
		_, rs, ok := parseResult(tt.line)
		if ok != tt.ok || len(rs) != tt.n {
			t.Errorf("parseResult(%q) = %d results, %v; want %d, %v", tt.line, len(rs), ok, tt.n, tt.ok)
		}
	}
}

func TestStats(t *testing.T) {
	med, spread, lo, hi := stats([]float64{4, 1, 3, 2})
	if med != 2.5 || lo != 1 || hi != 4 || spread != 60 {
		t.Errorf("stats = %v ±%v (%v..%v), want 2.5 ±60 (1..4)", med, spread, lo, hi)
	}
}
