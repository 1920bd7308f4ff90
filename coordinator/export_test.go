package coordinator

// SetFrameSplitAtForTest makes map messages whose JSON passes n bytes
// split across frames, for nodes that take them in pieces, and returns
// a func that restores the limit.
func SetFrameSplitAtForTest(n int) (restore func()) {
	old := frameSplitAt
	frameSplitAt = n
	return func() { frameSplitAt = old }
}
