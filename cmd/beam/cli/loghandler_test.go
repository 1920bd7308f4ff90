package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestComponentOncePerLine(t *testing.T) {
	var buf bytes.Buffer
	f := &Factory{ErrOut: &buf}
	l := f.Logger(slog.LevelInfo)
	for _, tc := range []struct {
		name   string
		logger *slog.Logger
		want   string
	}{
		{"none", l, "msg=hi k=v"},
		{"one", l.With("component", "coordinator"), "msg=hi component=coordinator k=v"},
		{"repeated", l.With("component", "coordinator").With("component", "coordinator"), "msg=hi component=coordinator k=v"},
		{"layers", l.With("component", "edge-node", "a", 1).With("component", "engine").With("component", "netstack", "b", 2),
			"msg=hi component=edge-node/engine/netstack a=1 b=2 k=v"},
		{"group", l.With("component", "x").WithGroup("g").With("component", "y"), "msg=hi component=x g.component=y g.k=v"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			tc.logger.Info("hi", "k", "v")
			line := strings.TrimSpace(buf.String())
			if _, got, _ := strings.Cut(line, "level=INFO "); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
