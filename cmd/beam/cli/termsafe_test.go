package cli

import "testing"

func TestCell(t *testing.T) {
	tests := []struct{ in, want string }{
		{"laptop", "laptop"},
		{"Jürgen’s Mac", "Jürgen’s Mac"},
		{"evil\x1b]0;pwned\x07\x1b[2J", `evil\x1b]0;pwned\x07\x1b[2J`},
		{"a\tb\r\nc", `a\x09b\x0d\x0ac`},
		{"abc\u202etxt", `abc\u202etxt`},
		{"a\xffb", `a\xffb`},
		{"\u0085x", `\u0085x`},
	}
	for _, tc := range tests {
		if got := cell(tc.in); got != tc.want {
			t.Errorf("cell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
