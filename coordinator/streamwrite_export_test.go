package coordinator

// TakeBigWriters takes every big buffer of the streams' writes
// (bigWriters) until the returned func is called.
func TakeBigWriters() (release func()) {
	for range cap(bigWriters.sem) {
		bigWriters.sem <- struct{}{}
	}
	return func() {
		for range cap(bigWriters.sem) {
			<-bigWriters.sem
		}
	}
}

// BigWriteSize is bigWriteSize.
const BigWriteSize = bigWriteSize
