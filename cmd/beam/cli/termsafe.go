package cli

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// cell returns s safe to print in a table on a terminal: control and
// format characters (escape sequences, bidi overrides, tabs, newlines)
// and invalid UTF-8 written as Go escapes (\x1b, \u202e), so text that
// nodes report about themselves (hostnames, OS names) cannot move the
// cursor, recolor the screen or break the table's columns.
func cell(s string) string {
	safe := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r):
			b.WriteString(s[i : i+n])
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += n
	}
	return b.String()
}
