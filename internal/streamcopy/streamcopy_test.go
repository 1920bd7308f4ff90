package streamcopy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// chunkReader returns its data in reads of the sizes in chunks (each
// limited by the buffer offered), recording the buffer sizes offered.
type chunkReader struct {
	data    []byte
	chunks  []int
	offered []int
	err     error // returned once data is exhausted; io.EOF if nil
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.offered = append(r.offered, len(p))
	if len(r.data) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := len(r.data)
	if len(r.chunks) > 0 {
		n = min(n, r.chunks[0])
		r.chunks = r.chunks[1:]
	}
	n = copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func TestCopyBufferSizes(t *testing.T) {
	tests := []struct {
		name   string
		chunks []int // read sizes the source allows
		want   []int // buffer sizes offered, in order
	}{
		{"short reads stay small", []int{100, 200, 300}, []int{smallSize, smallSize, smallSize, smallSize}},
		{"a full read moves to large", []int{smallSize, largeSize, largeSize}, []int{smallSize, largeSize, largeSize, largeSize}},
		{"a short read goes back to small", []int{smallSize, largeSize, 1000, 10}, []int{smallSize, largeSize, largeSize, smallSize, smallSize}},
		{"a read of a quarter keeps large", []int{smallSize, largeSize / 4, 5}, []int{smallSize, largeSize, largeSize, smallSize}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total := 0
			for _, c := range tt.chunks {
				total += c
			}
			data := bytes.Repeat([]byte("0123456789abcdef"), total/16+1)[:total]
			r := &chunkReader{data: data, chunks: tt.chunks}
			var out bytes.Buffer
			n, err := Copy(&out, r)
			if err != nil || n != int64(total) {
				t.Fatalf("Copy = %d, %v; want %d, nil", n, err, total)
			}
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("copied bytes differ from the source's")
			}
			if len(r.offered) != len(tt.want) {
				t.Fatalf("buffer sizes offered %v, want %v", r.offered, tt.want)
			}
			for i := range tt.want {
				if r.offered[i] != tt.want[i] {
					t.Fatalf("buffer sizes offered %v, want %v", r.offered, tt.want)
				}
			}
		})
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.after {
		return w.after, errors.New("disk full")
	}
	w.after -= len(p)
	return len(p), nil
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestCopyErrors(t *testing.T) {
	readErr := errors.New("connection reset")
	tests := []struct {
		name  string
		dst   io.Writer
		src   *chunkReader
		wantN int64
		want  error // matched with errors.Is; nil means success
		text  string
	}{
		{"read error after data", io.Discard, &chunkReader{data: make([]byte, 10), err: readErr}, 10, readErr, ""},
		{"write error", &failWriter{after: 5}, &chunkReader{data: make([]byte, 10)}, 5, nil, "disk full"},
		{"short write", shortWriter{}, &chunkReader{data: make([]byte, 10)}, 5, io.ErrShortWrite, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := Copy(tt.dst, tt.src)
			if n != tt.wantN {
				t.Errorf("Copy copied %d bytes, want %d", n, tt.wantN)
			}
			switch {
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("Copy error %v, want %v", err, tt.want)
			case tt.text != "" && (err == nil || err.Error() != tt.text):
				t.Errorf("Copy error %v, want %q", err, tt.text)
			}
		})
	}
}

// TestCopyHostSockets copies between two loopback TCP connections (the
// splice path) and checks every byte arrives.
func TestCopyHostSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for range 2 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() (*net.TCPConn, *net.TCPConn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.TCPConn), (<-accepted).(*net.TCPConn)
	}
	srcW, src := dial() // the test writes srcW; Copy reads src
	dst, dstR := dial() // Copy writes dst; the test reads dstR
	defer srcW.Close()
	defer src.Close()
	defer dst.Close()
	defer dstR.Close()
	data := bytes.Repeat([]byte("beam"), 300_000)
	go func() {
		srcW.Write(data)
		srcW.Close()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := Copy(dst, src)
		dst.CloseWrite()
		done <- err
	}()
	got, err := io.ReadAll(dstR)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the %d sent", len(got), len(data))
	}
}
