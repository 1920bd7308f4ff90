package configs

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUsers: every User= of the systemd units is created by the
// sysusers.d file shipped beside them, so the units start on a machine
// where nobody created the user by hand.
func TestSystemdUsers(t *testing.T) {
	created := map[string]bool{}
	f, err := os.Open(filepath.Join("systemd", "beam.sysusers.conf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "u" {
			created[fields[1]] = true
		}
	}
	units, err := filepath.Glob(filepath.Join("systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units: %v", err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if user, ok := strings.CutPrefix(strings.TrimSpace(line), "User="); ok && !created[user] {
				t.Errorf("%s runs as %q, which beam.sysusers.conf does not create (it creates %v)", u, user, created)
			}
		}
	}
}
