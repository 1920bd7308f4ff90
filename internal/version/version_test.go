package version

import (
	"strings"
	"testing"
)

func TestOverride(t *testing.T) {
	old := override
	t.Cleanup(func() { override = old })
	override = "v9.9.9"
	if got := String(); got != "v9.9.9" {
		t.Errorf("String() = %q, want v9.9.9", got)
	}
	if got := Long(); !strings.HasPrefix(got, "v9.9.9 go") || !strings.Contains(got, "/") {
		t.Errorf("Long() = %q, want v9.9.9 goVERSION OS/ARCH", got)
	}
	override = ""
	if got := String(); got == "" {
		t.Error("String() without override is empty")
	}
}
