package coordclient

import (
	"bytes"
	"encoding/binary"
	"testing"

	"beam.dev/beam/types/key"
)

// TestReadPayloadKeepsOpened checks that the payloads readPayload
// returns stay as they were while later frames are read through the
// same pooled buffers (sealedBufs): only the sealed bytes are reused.
func TestReadPayloadKeepsOpened(t *testing.T) {
	shared := key.NewNode().Shared(key.NewMachine().Public())
	var stream bytes.Buffer
	var want [][]byte
	for i := range 50 {
		p := bytes.Repeat([]byte{byte(i)}, 1000+i*700)
		want = append(want, p)
		sealed := shared.Seal(p)
		stream.Write(binary.BigEndian.AppendUint32(nil, uint32(len(sealed))))
		stream.Write(sealed)
	}
	var got [][]byte
	for range want {
		p, err := readPayload(&stream, func(b []byte) ([]byte, error) {
			clear, ok := shared.Open(b)
			if !ok {
				t.Fatal("frame does not open")
			}
			return clear, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("payload %d changed after later reads", i)
		}
	}
}
