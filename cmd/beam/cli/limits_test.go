package cli

import (
	"testing"

	"beam.dev/beam/internal/connlimit"
)

func TestConnLimits(t *testing.T) {
	for _, tc := range []struct {
		name      string
		flag      int
		share     float64
		nofile    uint64
		perSource int
		want      connlimit.Limits
	}{
		{"edge of beam server, 2048 files", 0, shareServerEdge, 2048, edgeConnsPerSource, connlimit.Limits{Max: 1024, PerSource: 256}},
		{"edge alone, 1M files", 0, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{Max: 786432, PerSource: 512}},
		{"relay alone, 1M files", 0, shareAlone, 1 << 20, controlConnsPerSource, connlimit.Limits{Max: 786432, PerSource: 196608}},
		{"coordinator of beam server, 2048 files", 0, shareServerControl, 2048, controlConnsPerSource, connlimit.Limits{Max: 512, PerSource: 128}},
		{"tiny limit", 0, shareServerControl, 100, controlConnsPerSource, connlimit.Limits{Max: minMaxConns, PerSource: minMaxConns / 4}},
		{"unknown limit", 0, shareAlone, 0, edgeConnsPerSource, connlimit.Limits{Max: fallbackMaxConns, PerSource: 512}},
		{"set by flag", 40, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{Max: 40, PerSource: 10}},
		{"no cap", -1, shareAlone, 1 << 20, edgeConnsPerSource, connlimit.Limits{}},
	} {
		if got := connLimits(tc.flag, tc.share, tc.nofile, tc.perSource); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
