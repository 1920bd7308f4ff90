package zapslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestRecords(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	zl := New(log).Named("acme").With(zap.String("identifier", "app.example.test"))
	zl.Info("trying to solve challenge", zap.String("challenge_type", "dns-01"))
	zl.Warn("retrying", zap.Int("attempt", 2))
	zl.Error("could not get certificate", zap.Error(errors.New("rate limited")))

	var recs []map[string]any
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	want := []struct {
		level, msg, key string
		val             any
	}{
		{"DEBUG", "trying to solve challenge", "challenge_type", "dns-01"},
		{"WARN", "retrying", "attempt", float64(2)},
		{"ERROR", "could not get certificate", "error", "rate limited"},
	}
	if len(recs) != len(want) {
		t.Fatalf("got %d records, want %d:\n%s", len(recs), len(want), buf.String())
	}
	for i, w := range want {
		r := recs[i]
		if r["level"] != w.level || r["msg"] != w.msg || r[w.key] != w.val {
			t.Errorf("record %d = %v, want level %s, msg %q, %s=%v", i, r, w.level, w.msg, w.key, w.val)
		}
		if r["identifier"] != "app.example.test" || r["logger"] != "acme" {
			t.Errorf("record %d = %v: the With field and the logger name are missing", i, r)
		}
	}
}

// TestEnabled follows the slog handler's level: zap skips what slog would
// drop, before building the entry.
func TestEnabled(t *testing.T) {
	var buf bytes.Buffer
	zl := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if ce := zl.Check(zap.InfoLevel, "chatter"); ce != nil {
		t.Error("an info entry is enabled under a warn-level handler")
	}
	if ce := zl.Check(zap.WarnLevel, "kept"); ce == nil {
		t.Error("a warning is not enabled under a warn-level handler")
	}
	zl.Info("chatter")
	if buf.Len() != 0 {
		t.Errorf("info entry written: %q", buf.String())
	}
}
