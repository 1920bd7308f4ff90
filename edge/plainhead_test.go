package edge

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// readPlainHeadString runs readPlainHead on in, as it would find it
// buffered, and returns its result, the header it filled and the bytes
// it left unread.
func readPlainHeadString(in string, head bool) (plainHead, bool, http.Header, string) {
	br := bufio.NewReader(strings.NewReader(in))
	br.Peek(1)
	h := http.Header{}
	ph, ok := readPlainHead(br, h, head)
	rest, _ := io.ReadAll(br)
	return ph, ok, h, string(rest)
}

func TestReadPlainHead(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		head   bool // a response to a HEAD
		ok     bool
		want   plainHead
		header http.Header
	}{
		{
			name:   "common",
			in:     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: Mon, 07 Dec 2026 05:00:00 GMT\r\n\r\nhello",
			ok:     true,
			want:   plainHead{status: 200, length: 5},
			header: http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}, "Date": {"Mon, 07 Dec 2026 05:00:00 GMT"}},
		},
		{
			name:   "names canonicalized, values trimmed, repeated fields kept in order",
			in:     "HTTP/1.1 404 Not Found\r\ncontent-length:  0 \r\nset-cookie: a=1\r\nSET-COOKIE:\tb=2\r\nX-Long-Custom-Field-Name-Beyond-32-Bytes: v\r\n\r\n",
			ok:     true,
			want:   plainHead{status: 404, length: 0},
			header: http.Header{"Content-Length": {"0"}, "Set-Cookie": {"a=1", "b=2"}, "X-Long-Custom-Field-Name-Beyond-32-Bytes": {"v"}},
		},
		{
			name:   "no reason phrase",
			in:     "HTTP/1.1 201\r\nContent-Length: 0\r\n\r\n",
			ok:     true,
			want:   plainHead{status: 201},
			header: http.Header{"Content-Length": {"0"}},
		},
		{
			name:   "Connection and Keep-Alive dropped, close noted",
			in:     "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nhi",
			ok:     true,
			want:   plainHead{status: 200, length: 2, close: true},
			header: http.Header{"Content-Length": {"2"}},
		},
		{
			name:   "HEAD: no body, its length goes to the client",
			in:     "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
			head:   true,
			ok:     true,
			want:   plainHead{status: 200},
			header: http.Header{"Content-Length": {"1234"}},
		},
		{
			name:   "304 without a length",
			in:     "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n",
			ok:     true,
			want:   plainHead{status: 304},
			header: http.Header{"Etag": {`"x"`}},
		},
		{name: "head not all buffered", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"},
		{name: "HTTP/1.0", in: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "no length: ends with the connection", in: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
		{name: "chunked and a length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "two lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "signed length", in: "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"},
		{name: "empty length", in: "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"},
		{name: "204 with a length", in: "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "informational", in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{name: "switching protocols", in: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"},
		{name: "Connection names a field", in: "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n"},
		{name: "Trailer", in: "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nContent-Length: 0\r\n\r\n"},
		{name: "obs-fold", in: "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n"},
		{name: "space before the colon", in: "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n"},
		{name: "bare LF in a value", in: "HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n"},
		{name: "control byte in a value", in: "HTTP/1.1 200 OK\r\nX-A: 1\x01\r\nContent-Length: 0\r\n\r\n"},
		{name: "bad status", in: "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"},
		{name: "status of four digits", in: "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ph, ok, h, rest := readPlainHeadString(tt.in, tt.head)
			if ok != tt.ok {
				t.Fatalf("readPlainHead ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				if len(h) != 0 || rest != tt.in {
					t.Fatalf("refused head: header %v and %q unread, want nothing changed", h, rest)
				}
				return
			}
			if ph != tt.want {
				t.Errorf("got %+v, want %+v", ph, tt.want)
			}
			if diff := cmp.Diff(tt.header, h); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
			if _, body, _ := strings.Cut(tt.in, "\r\n\r\n"); rest != body {
				t.Errorf("left %q unread, want the body %q", rest, body)
			}
		})
	}
}

// FuzzReadPlainHead checks readPlainHead against http.ReadResponse, which
// reads every head it leaves: a head it takes must be one ReadResponse
// takes too, with the same status, header (minus the hop-by-hop fields),
// body length and keep-alive.
func FuzzReadPlainHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 200 OK\r\ncontent-length: 007\r\nKeep-Alive: timeout=5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 204\r\nset-cookie: a\r\nSet-Cookie: b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nClose: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, head bool) {
		ph, ok, h, rest := readPlainHeadString(in, head)
		if !ok {
			if len(h) != 0 || rest != in {
				t.Fatalf("refused head: header %v and %q unread, want nothing changed", h, rest)
			}
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(in)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("readPlainHead took a head that http.ReadResponse refuses: %v", err)
		}
		removeHopHeaders(resp.Header)
		if resp.StatusCode != ph.status {
			t.Errorf("status %d, ReadResponse %d", ph.status, resp.StatusCode)
		}
		if diff := cmp.Diff(resp.Header, h); diff != "" {
			t.Errorf("header (-ReadResponse +readPlainHead):\n%s", diff)
		}
		want := resp.ContentLength
		if head || resp.StatusCode == 204 || resp.StatusCode == 304 {
			want = 0
		}
		if ph.length != want {
			t.Errorf("body length %d, ReadResponse %d", ph.length, want)
		}
		if ph.close != resp.Close {
			t.Errorf("close %v, ReadResponse %v", ph.close, resp.Close)
		}
	})
}
