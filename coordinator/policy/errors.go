package policy

import (
	"errors"
	"fmt"
)

// ErrTestFailed is wrapped by the *Error that Validate returns when an
// entry of the policy's "tests" block does not hold.
var ErrTestFailed = errors.New("policy test failed")

// Error is a problem at a position in a policy file. Parse returns one (or
// several joined with errors.Join) for every syntax or semantic problem it
// finds; Validate returns one wrapping ErrTestFailed.
type Error struct {
	// Line and Column locate the offending value, both 1-based, counted in
	// bytes as hujson does. Zero means the position is unknown.
	Line, Column int
	// Msg says what is wrong, for people ("unknown group \"group:x\"").
	Msg string
	// Err is the underlying error, if any (a hujson syntax error or
	// ErrTestFailed).
	Err error
}

// Error implements error as "policy: line L, column C: Msg".
func (e *Error) Error() string {
	if e.Line == 0 {
		return "policy: " + e.Msg
	}
	return fmt.Sprintf("policy: line %d, column %d: %s", e.Line, e.Column, e.Msg)
}

// Unwrap returns e.Err.
func (e *Error) Unwrap() error { return e.Err }

// pos is a 1-based line and column in the policy source.
type pos struct{ line, col int }

// posAt converts a byte offset in src into a pos, like hujson does.
func posAt(src []byte, off int) pos {
	if off < 0 {
		off = 0
	}
	if off > len(src) {
		off = len(src)
	}
	line, last := 1, -1
	for i, c := range src[:off] {
		if c == '\n' {
			line++
			last = i
		}
	}
	return pos{line: line, col: off - last}
}

func (p pos) String() string { return fmt.Sprintf("%d:%d", p.line, p.col) }
