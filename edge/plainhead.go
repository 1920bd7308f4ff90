package edge

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
)

// This file reads the head of the common response on the lean path
// (plain.go) without http.ReadResponse, which allocates a dozen times
// for it (the Response, a header map that the edge then copies into the
// client's, a string per value, the body readers). The common response
// is an HTTP/1.1 final response whose whole head is already buffered,
// framed by one Content-Length (or bodiless: to a HEAD, a 204, a 304),
// with no field that needs more than dropping (Connection naming only
// close or keep-alive, Keep-Alive). Anything else, including every head
// that http.ReadResponse would refuse, is left unread for
// http.ReadResponse, so the lean path accepts nothing the reverse
// proxy's transport would not, and frames it the same way.

// maxPlainFields caps the fields of a head read here; more go to
// http.ReadResponse.
const maxPlainFields = 32

// plainHead is a response head read by readPlainHead.
type plainHead struct {
	status int
	length int64 // body bytes that follow the head
	close  bool  // Connection: close; the connection is not used again
}

// readPlainHead reads the head of a common response (see above) from br
// into h, the client's response header, minus the hop-by-hop fields.
// head is whether the request was a HEAD. It reports false, having
// consumed nothing and changed nothing in h, for any other head.
func readPlainHead(br *bufio.Reader, h http.Header, head bool) (plainHead, bool) {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		return plainHead{}, false
	}
	b := buf[:end+2] // every line with its CRLF
	// The status line: "HTTP/1.1 200" and an optional reason, which the
	// client does not get (net/http writes its own).
	i := bytes.Index(b, []byte("\r\n"))
	line := b[:i]
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " ||
		!isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) ||
		len(line) > 12 && line[12] != ' ' || bytes.IndexByte(line, '\n') >= 0 {
		return plainHead{}, false
	}
	ph := plainHead{status: int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')}
	if ph.status < 200 || ph.status > 599 {
		return plainHead{}, false // informational, or unusual: ReadResponse's loop
	}
	type field struct {
		key    string
		v0, v1 int // the value is b[v0:v1]
	}
	var fields [maxPlainFields]field
	nf := 0
	sawLength := false
	for p := i + 2; p < len(b); {
		j := bytes.Index(b[p:], []byte("\r\n"))
		line, start := b[p:p+j], p
		p += j + 2
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return plainHead{}, false // also an obs-fold continuation
		}
		key, ok := plainKey(line[:colon])
		if !ok {
			return plainHead{}, false
		}
		v0, v1 := start+colon+1, start+len(line)
		for _, c := range b[v0:v1] {
			if !validValueByte(c) {
				return plainHead{}, false
			}
		}
		for v0 < v1 && (b[v0] == ' ' || b[v0] == '\t') {
			v0++
		}
		for v1 > v0 && (b[v1-1] == ' ' || b[v1-1] == '\t') {
			v1--
		}
		v := b[v0:v1]
		switch key {
		case "Content-Length":
			if sawLength || len(v) == 0 || len(v) > 18 {
				return plainHead{}, false
			}
			sawLength = true
			for _, c := range v {
				if !isDigit(c) {
					return plainHead{}, false
				}
				ph.length = ph.length*10 + int64(c-'0')
			}
		case "Connection":
			for tok := range bytes.SplitSeq(v, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				switch {
				case asciiEqualFold(tok, "close"):
					ph.close = true
				case len(tok) == 0 || asciiEqualFold(tok, "keep-alive"):
				default:
					return plainHead{}, false // it names fields to drop
				}
			}
			continue
		case "Keep-Alive":
			continue
		case "Transfer-Encoding", "Trailer", "Te", "Upgrade",
			"Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization":
			return plainHead{}, false
		}
		if nf == len(fields) {
			return plainHead{}, false
		}
		fields[nf] = field{key, v0, v1}
		nf++
	}
	switch {
	case head:
		ph.length = 0 // its Content-Length, if any, goes to the client
	case ph.status == http.StatusNoContent || ph.status == http.StatusNotModified:
		if sawLength {
			return plainHead{}, false
		}
	case !sawLength:
		return plainHead{}, false // to the end of the connection
	}
	// Two allocations: the values share one string and one slice.
	s := string(b)
	vals := make([]string, nf)
	for k, f := range fields[:nf] {
		vals[k] = s[f.v0:f.v1]
		if vv := h[f.key]; vv == nil {
			h[f.key] = vals[k : k+1 : k+1]
		} else {
			h[f.key] = append(vv, vals[k])
		}
	}
	br.Discard(end + 4)
	return ph, true
}

// commonKeys are the field names most responses carry, in canonical
// form, so that naming them allocates nothing.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept-Ranges", "Age", "Cache-Control", "Connection", "Content-Encoding",
		"Content-Language", "Content-Length", "Content-Security-Policy", "Content-Type",
		"Date", "Etag", "Expires", "Keep-Alive", "Last-Modified", "Location", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Transfer-Encoding", "Vary",
		"X-Content-Type-Options", "X-Frame-Options", "Access-Control-Allow-Origin",
	} {
		m[k] = k
	}
	return m
}()

// plainKey returns the canonical form of a field name (as net/textproto
// makes it), and false if the name is not a token.
func plainKey(k []byte) (string, bool) {
	var buf [32]byte
	canon := buf[:0]
	upper := true
	for _, c := range k {
		if !isTokenByte(c) {
			return "", false
		}
		if len(canon) < len(buf) {
			switch {
			case upper && 'a' <= c && c <= 'z':
				c -= 'a' - 'A'
			case !upper && 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			}
			canon = append(canon, c)
		}
		upper = c == '-'
	}
	if len(k) <= len(buf) {
		if s, ok := commonKeys[string(canon)]; ok {
			return s, true
		}
	}
	return http.CanonicalHeaderKey(string(k)), true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isTokenByte reports whether c may appear in a token (RFC 9110 section
// 5.6.2), as net/textproto checks field names.
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c < 0x80 && strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validValueByte reports whether c may appear in a field value, as
// net/textproto checks them: anything but the control characters other
// than HTAB.
func validValueByte(c byte) bool {
	return c == '\t' || c >= 0x20 && c != 0x7f
}

// asciiEqualFold reports whether b equals s, ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
