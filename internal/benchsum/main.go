// Command benchsum summarises the output of go test -bench run with
// -count N: it copies its input to stdout as it arrives, then prints, per
// package, benchmark and unit, the median of the N results and their
// spread (the largest distance from the median, in percent of it), with
// the lowest and highest result. It exits 1 if the input reports a
// failure, so a failing benchmark still fails the make target that pipes
// through it.
//
// Usage:
//
//	go test -run '^$' -bench . -count 5 ./... 2>&1 | go run ./internal/benchsum
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	failed, err := summarise(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchsum:", err)
		os.Exit(2)
	}
	if failed {
		fmt.Fprintln(os.Stderr, "benchsum: the benchmark run reported a failure (see above)")
		os.Exit(1)
	}
}

// series is every result of one unit of one benchmark.
type series struct {
	pkg, name, unit string
	values          []float64
}

// summarise copies r to w, then writes the summary table. It reports
// whether r contained a failure.
func summarise(r io.Reader, w io.Writer) (failed bool, err error) {
	var (
		pkg   string
		order []string
		all   = map[string]*series{}
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(line, "pkg: ")
		case strings.HasPrefix(line, "FAIL"), strings.HasPrefix(line, "--- FAIL"),
			strings.HasPrefix(line, "panic: "):
			failed = true
		case strings.HasPrefix(line, "Benchmark"):
			name, results, ok := parseResult(line)
			if !ok {
				continue
			}
			for _, r := range results {
				k := pkg + "\x00" + name + "\x00" + r.unit
				s := all[k]
				if s == nil {
					s = &series{pkg: pkg, name: name, unit: r.unit}
					all[k] = s
					order = append(order, k)
				}
				s.values = append(s.values, r.value)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return failed, fmt.Errorf("read input: %w", err)
	}
	if len(order) == 0 {
		return failed, nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "summary: median ± largest distance from it (lowest .. highest) over n runs")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	last := ""
	for _, k := range order {
		s := all[k]
		if s.pkg != last {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\n", s.pkg)
			last = s.pkg
		}
		med, spread, lo, hi := stats(s.values)
		fmt.Fprintf(tw, "  %s\t%s\t%s\t±%.0f%%\t(%s .. %s)\tn=%d\t\n",
			s.name, s.unit, format(med), spread, format(lo), format(hi), len(s.values))
	}
	return failed, tw.Flush()
}

// result is one value and its unit from a benchmark line.
type result struct {
	value float64
	unit  string
}

// parseResult parses "BenchmarkX-2  100  123 ns/op  4.5 foo/s" into the
// benchmark's name and its value/unit pairs (the iteration count is left
// out).
func parseResult(line string) (name string, results []result, ok bool) {
	f := strings.Fields(line)
	if len(f) < 4 || len(f)%2 != 0 {
		return "", nil, false
	}
	if _, err := strconv.Atoi(f[1]); err != nil {
		return "", nil, false
	}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return "", nil, false
		}
		results = append(results, result{v, f[i+1]})
	}
	return f[0], results, true
}

// stats returns the median of v, the largest distance of a value from it
// in percent of it (0 when the median is 0), and the extremes.
func stats(v []float64) (med, spread, lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	lo, hi = s[0], s[n-1]
	if med != 0 {
		spread = 100 * max(hi-med, med-lo) / abs(med)
	}
	return med, spread, lo, hi
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// format prints v with about four significant digits.
func format(v float64) string {
	return strconv.FormatFloat(v, 'g', 4, 64)
}
