package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBarePortArgs: beam PORT takes a port and nothing else; any other
// word is still an unknown command, and beam alone prints the help.
func TestBarePortArgs(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		wantErr string
		wantOut string
	}{
		{nil, "", "beam 3000"},
		{[]string{"exposee"}, `unknown command "exposee"`, ""},
		{[]string{"0"}, `unknown command "0"`, ""},
		{[]string{"65536"}, `unknown command "65536"`, ""},
		{[]string{"3000", "4000"}, "accepts at most 1 arg", ""},
	} {
		var out, errOut bytes.Buffer
		root := NewCmdRoot(&Factory{Out: &out, ErrOut: &errOut, Getenv: func(string) string { return "" }})
		root.SetArgs(tt.args)
		root.SetOut(&out)
		err := root.Execute()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("beam %v: %v", tt.args, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("beam %v: error %v, want %q", tt.args, err, tt.wantErr)
		case !strings.Contains(out.String(), tt.wantOut):
			t.Errorf("beam %v printed %q, want %q in it", tt.args, out.String(), tt.wantOut)
		}
	}
}

// TestSavedCoordinator: beam PORT joins the coordinator an earlier beam
// up left in the state directory, and nothing when there is none.
func TestSavedCoordinator(t *testing.T) {
	dir := t.TempDir()
	if got := savedCoordinator(dir); got != "" {
		t.Errorf("no state: got %q, want none", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"private_key":"x","coordinator":"http://127.0.0.1:1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := savedCoordinator(dir), "http://127.0.0.1:1"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
