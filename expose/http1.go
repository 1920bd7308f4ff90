package expose

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
)

// This file holds the HTTP/1.x framing the device-side expose relay needs
// (RFC 9112): enough of each request and response head to know where the
// message ends, what to log, and whether the connection switches
// protocols. Heads and bodies are forwarded as they arrived, byte for
// byte; nothing is re-encoded.
//
// Requests come from the network (the edge, or any peer the ACL lets in),
// so they are parsed strictly and anything that two HTTP parsers could
// frame differently is refused: bare LF or CR, folded lines, white space
// before a colon, Content-Length together with Transfer-Encoding,
// Transfer-Encoding other than "chunked", differing Content-Lengths,
// malformed chunk sizes. Responses come from the device's own app and are
// parsed as leniently as Go's HTTP client parses them.

const (
	// maxHeadBytes caps a request or response head (request line or
	// status line plus header fields), like http.DefaultMaxHeaderBytes.
	maxHeadBytes = 1 << 20
	// maxChunkLine caps a chunk-size line with its extensions.
	maxChunkLine = 4 << 10
	// maxTrailerBytes caps the trailer section of a chunked body.
	maxTrailerBytes = 64 << 10
)

var (
	errHeadTooLarge = errors.New("message head too large")
	errChunkLine    = errors.New("malformed chunk-size line")
	errChunkData    = errors.New("chunk data not followed by CRLF")
	errTrailer      = errors.New("malformed trailer section")
)

// framing says how a message body is delimited.
type framing uint8

const (
	bodyNone       framing = iota // no body
	bodyLength                    // Content-Length bytes
	bodyChunked                   // chunked transfer coding
	bodyUntilClose                // everything until the sender closes (responses only)
	bodyTunnel                    // the connection switched protocols (101, or 2xx to CONNECT)
)

// reqHead is what the relay needs from a request head. Its byte slices
// point into the head and are valid only as long as it is.
type reqHead struct {
	method     []byte
	target     []byte
	minor      int // HTTP/1.minor
	host       []byte
	forwarded  []byte // the first X-Forwarded-For field
	framing    framing
	length     int64 // with bodyLength
	mayUpgrade bool  // an Upgrade field or CONNECT: the response may switch protocols
	close      bool  // the client asked to close after this exchange
}

// headError is a request the relay refuses, with the status to answer.
type headError struct {
	status int
	reason string
}

func (e *headError) Error() string { return e.reason }

func badRequest(reason string) *headError {
	return &headError{status: http.StatusBadRequest, reason: reason}
}

// respHead is what the relay needs from a response head.
type respHead struct {
	status  int
	framing framing
	length  int64 // with bodyLength
}

// headEnd returns the length of the head at the start of b, through the
// empty line that ends it (CRLF CRLF, or LF LF which the strict request
// parser then refuses), or -1 if b holds no complete head. The search
// starts at from, so a caller that reads more can skip what it searched.
func headEnd(b []byte, from int) int {
	for {
		i := bytes.IndexByte(b[from:], '\n')
		if i < 0 {
			return -1
		}
		i += from
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
		from = i + 1
	}
}

// nextLine cuts the first line off b, without its line ending (see
// cutLineEnd).
func nextLine(b []byte, strict bool) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, false
	}
	line, ok = cutLineEnd(b[:i+1], strict)
	return line, b[i+1:], ok
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChar[c] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue reports whether b is a field value of visible characters,
// spaces, tabs and obs-text (no CR, LF, NUL or other controls).
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// trimOWS trims spaces and tabs at both ends.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseLength parses a Content-Length value: decimal digits only, below
// 2^62.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// eachToken calls fn with each element of a comma-separated list,
// trimmed; empty elements are skipped.
func eachToken(b []byte, fn func([]byte)) {
	for len(b) > 0 {
		var el []byte
		if i := bytes.IndexByte(b, ','); i >= 0 {
			el, b = b[:i], b[i+1:]
		} else {
			el, b = b, nil
		}
		if el = trimOWS(el); len(el) > 0 {
			fn(el)
		}
	}
}

// parseRequestHead parses a request head (as cut by headEnd) strictly.
func parseRequestHead(h []byte) (reqHead, *headError) {
	var r reqHead
	line, rest, ok := nextLine(h, true)
	if !ok {
		return r, badRequest("request line not ended by CRLF")
	}
	// request-line = method SP request-target SP HTTP-version
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return r, badRequest("malformed request line")
	}
	r.method = line[:sp1]
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return r, badRequest("malformed request line")
	}
	r.target = line[sp1+1 : sp1+1+sp2]
	version := line[sp1+1+sp2+1:]
	if !isToken(r.method) {
		return r, badRequest("malformed method")
	}
	for _, c := range r.target {
		if c <= ' ' || c == 0x7f {
			return r, badRequest("malformed request target")
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		r.minor = 1
	case "HTTP/1.0":
		r.minor = 0
	default:
		if len(version) == 8 && string(version[:5]) == "HTTP/" && version[6] == '.' &&
			version[5] >= '0' && version[5] <= '9' && version[7] >= '0' && version[7] <= '9' {
			return r, &headError{status: http.StatusHTTPVersionNotSupported, reason: "HTTP version not supported"}
		}
		return r, badRequest("malformed HTTP version")
	}

	var (
		hosts       int
		sawLength   bool
		sawTE       bool
		teChunked   bool
		keepAlive   bool
		sawUpgrade  bool
		sawFwdFor   bool
		lengthValue int64
	)
	for {
		line, rest, ok = nextLine(rest, true)
		if !ok {
			return r, badRequest("header line not ended by CRLF")
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return r, badRequest("folded header line")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return r, badRequest("malformed header field name")
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validValue(value) {
			return r, badRequest("invalid character in header field value")
		}
		switch {
		case asciiEqualFold(name, "host"):
			hosts++
			r.host = value
		case asciiEqualFold(name, "content-length"):
			n, ok := parseLength(value)
			if !ok {
				return r, badRequest("malformed Content-Length")
			}
			if sawLength && n != lengthValue {
				return r, badRequest("differing Content-Lengths")
			}
			sawLength, lengthValue = true, n
		case asciiEqualFold(name, "transfer-encoding"):
			if sawTE {
				return r, &headError{status: http.StatusNotImplemented, reason: "more than one Transfer-Encoding field"}
			}
			sawTE = true
			codings := 0
			eachToken(value, func(c []byte) {
				codings++
				teChunked = asciiEqualFold(c, "chunked")
			})
			if codings != 1 || !teChunked {
				return r, &headError{status: http.StatusNotImplemented, reason: "unsupported Transfer-Encoding"}
			}
		case asciiEqualFold(name, "connection"):
			eachToken(value, func(c []byte) {
				switch {
				case asciiEqualFold(c, "close"):
					r.close = true
				case asciiEqualFold(c, "keep-alive"):
					keepAlive = true
				}
			})
		case asciiEqualFold(name, "upgrade"):
			sawUpgrade = true
		case asciiEqualFold(name, "x-forwarded-for"):
			if !sawFwdFor {
				sawFwdFor, r.forwarded = true, value
			}
		}
	}
	if len(rest) != 0 {
		return r, badRequest("bytes after the end of the head")
	}
	switch {
	case hosts > 1:
		return r, badRequest("more than one Host field")
	case hosts == 0 && r.minor == 1:
		return r, badRequest("missing Host field")
	case sawTE && sawLength:
		return r, badRequest("both Content-Length and Transfer-Encoding")
	case sawTE && r.minor == 0:
		return r, badRequest("Transfer-Encoding in an HTTP/1.0 request")
	case sawTE:
		r.framing = bodyChunked
	case sawLength && lengthValue > 0:
		r.framing, r.length = bodyLength, lengthValue
	}
	if r.minor == 0 && !keepAlive {
		r.close = true
	}
	r.mayUpgrade = sawUpgrade || string(r.method) == http.MethodConnect
	return r, nil
}

// reqKind is what framing a response needs to know of its request.
type reqKind struct {
	head       bool // a HEAD request: the response has no body
	connect    bool // a CONNECT request: a 2xx response opens a tunnel
	mayUpgrade bool // the request may switch protocols (101)
}

// kind returns what framing the response to r needs to know of r.
func (r *reqHead) kind() reqKind {
	return reqKind{
		head:       string(r.method) == http.MethodHead,
		connect:    string(r.method) == http.MethodConnect,
		mayUpgrade: r.mayUpgrade,
	}
}

// parseResponseHead parses a response head from the app to a request of
// kind k.
func parseResponseHead(h []byte, k reqKind) (respHead, error) {
	var r respHead
	line, rest, ok := nextLine(h, false)
	if !ok {
		return r, errors.New("malformed status line")
	}
	// status-line = HTTP-version SP status-code SP [ reason-phrase ]
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[7] < '0' || line[7] > '9' || line[8] != ' ' ||
		len(line) > 12 && line[12] != ' ' {
		return r, errors.New("malformed status line")
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return r, errors.New("malformed status code")
		}
		r.status = r.status*10 + int(c-'0')
	}
	if r.status < 100 {
		return r, errors.New("malformed status code")
	}
	var (
		sawLength, sawTE, chunked bool
		length                    int64
		last                      []byte // name of the previous field, for folded lines
	)
	for {
		line, rest, ok = nextLine(rest, false)
		if !ok {
			return r, errors.New("malformed header section")
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			// obs-fold continues the previous field; refuse it on the
			// fields that frame the body.
			if last == nil || asciiEqualFold(last, "content-length") || asciiEqualFold(last, "transfer-encoding") {
				return r, errors.New("folded framing header")
			}
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return r, errors.New("malformed header line")
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		last = name
		switch {
		case asciiEqualFold(name, "content-length"):
			n, ok := parseLength(value)
			if !ok {
				return r, errors.New("malformed Content-Length")
			}
			if sawLength && n != length {
				return r, errors.New("differing Content-Lengths")
			}
			sawLength, length = true, n
		case asciiEqualFold(name, "transfer-encoding"):
			sawTE = true
			eachToken(value, func(c []byte) { chunked = asciiEqualFold(c, "chunked") })
		}
	}
	if len(rest) != 0 {
		return r, errors.New("bytes after the end of the head")
	}
	switch {
	case r.status == http.StatusSwitchingProtocols:
		if !k.mayUpgrade {
			return r, errors.New("101 Switching Protocols to a request that did not ask to upgrade")
		}
		r.framing = bodyTunnel
	case r.status < 200, r.status == http.StatusNoContent, r.status == http.StatusNotModified,
		k.head:
		r.framing = bodyNone
	case k.connect && r.status < 300:
		r.framing = bodyTunnel
	case sawTE && chunked:
		r.framing = bodyChunked
	case sawTE:
		r.framing = bodyUntilClose
	case sawLength && length == 0:
		r.framing = bodyNone
	case sawLength:
		r.framing, r.length = bodyLength, length
	default:
		r.framing = bodyUntilClose
	}
	return r, nil
}

// asciiEqualFold reports whether b equals the lower-case ASCII s, ignoring
// ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// parseChunkSize parses a chunk-size line without its line ending: hex
// digits, then optionally ";" and extensions. strict refuses white space
// before the ";" and control characters in the extensions.
func parseChunkSize(line []byte, strict bool) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false // at least 2^60: no real chunk is that big
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	if !strict {
		rest = trimOWS(rest)
	}
	if len(rest) == 0 {
		return n, true
	}
	if rest[0] != ';' || strict && !validValue(rest) {
		return 0, false
	}
	return n, true
}

// splicer moves bytes from r to w while a parser looks at them in r's
// buffer. Bytes the parser has checked are "pending": they are written in
// one go when the parser needs to read more or the message ends, so a head
// and a small body leave in one write, and a stream never waits in the
// buffer while the splicer blocks on a read.
type splicer struct {
	r    *bufio.Reader
	w    io.Writer
	pend int // bytes at the front of r's buffer that are due to w

	big []byte // a head larger than r's buffer, copied out of it

	// tap, if not nil, gets a copy of what is written to w (the
	// inspector's capture).
	tap *capBuf
}

// flush writes the pending bytes.
func (s *splicer) flush() error {
	if s.pend == 0 {
		return nil
	}
	b, _ := s.r.Peek(s.pend)
	if s.tap != nil {
		s.tap.write(b)
	}
	_, err := s.w.Write(b)
	s.r.Discard(s.pend)
	s.pend = 0
	return err
}

// fill returns the buffered bytes after the pending ones, at least n of
// them (n at most r's buffer size) unless reading fails. When it has to
// read, it writes the pending bytes first.
func (s *splicer) fill(n int) ([]byte, error) {
	if s.r.Buffered()-s.pend >= n {
		b, _ := s.r.Peek(s.r.Buffered())
		return b[s.pend:], nil
	}
	if err := s.flush(); err != nil {
		return nil, err
	}
	_, err := s.r.Peek(n)
	b, _ := s.r.Peek(s.r.Buffered())
	return b, err
}

// take marks the next n bytes (as returned by fill) as due to w.
func (s *splicer) take(n int) { s.pend += n }

// drop consumes the next n bytes (as returned by fill) without
// forwarding them.
func (s *splicer) drop(n int) error {
	if err := s.flush(); err != nil {
		return err
	}
	_, err := s.r.Discard(n)
	return err
}

// readHead returns the next message head, through its empty line, without
// consuming it: the caller then forwards it with takeHead or consumes it
// with dropHead. A head larger than r's buffer is copied out of it. EOF
// before the first byte is io.EOF; EOF within a head is
// io.ErrUnexpectedEOF.
func (s *splicer) readHead() ([]byte, error) {
	s.big = nil
	b, err := s.fill(1)
	from := 0
	for {
		if i := headEnd(b, from); i >= 0 {
			return b[:i], nil
		}
		if err != nil {
			if len(b) == 0 && err == io.EOF {
				return nil, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(b) >= maxHeadBytes {
			return nil, errHeadTooLarge
		}
		from = max(0, len(b)-2)
		if len(b) < s.r.Size() {
			b, err = s.fill(len(b) + 1)
			continue
		}
		return s.readBigHead(b)
	}
}

// readBigHead continues readHead once the buffer is full (and nothing is
// pending): it moves the head into s.big as it arrives.
func (s *splicer) readBigHead(b []byte) ([]byte, error) {
	s.big = append([]byte(nil), b...)
	s.r.Discard(len(b))
	for {
		nb, err := s.fill(1)
		old := len(s.big)
		s.big = append(s.big, nb...)
		if i := headEnd(s.big, max(0, old-2)); i >= 0 {
			s.r.Discard(i - old)
			s.big = s.big[:i]
			return s.big, nil
		}
		s.r.Discard(len(nb))
		if len(s.big) >= maxHeadBytes {
			return nil, errHeadTooLarge
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// takeHead forwards the head readHead returned.
func (s *splicer) takeHead(h []byte) error {
	if len(s.big) == 0 {
		s.take(len(h))
		return nil
	}
	if err := s.flush(); err != nil {
		return err
	}
	if s.tap != nil {
		s.tap.write(h)
	}
	_, err := s.w.Write(h)
	s.big = nil
	return err
}

// dropHead consumes the head readHead returned without forwarding it.
func (s *splicer) dropHead(h []byte) error {
	if len(s.big) > 0 {
		s.big = nil
		return nil
	}
	return s.drop(len(h))
}

// readLine returns the next line through its LF, not yet consumed, of at
// most limit bytes (limit at most r's buffer size).
func (s *splicer) readLine(limit int) ([]byte, error) {
	b, err := s.fill(1)
	for {
		i := bytes.IndexByte(b, '\n')
		if i >= limit || i < 0 && len(b) >= limit {
			return nil, errChunkLine
		}
		if i >= 0 {
			return b[:i+1], nil
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		b, err = s.fill(len(b) + 1)
	}
}

// copyN forwards the next n bytes.
func (s *splicer) copyN(n int64) error {
	for n > 0 {
		b, err := s.fill(1)
		k := int(min(int64(len(b)), n))
		s.take(k)
		n -= int64(k)
		if n > 0 && err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// copyAll forwards everything until r ends, then writes what is pending.
// A clean EOF is not an error.
func (s *splicer) copyAll() error {
	for {
		b, err := s.fill(1)
		s.take(len(b))
		if err != nil {
			if ferr := s.flush(); ferr != nil {
				return ferr
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// copyChunked forwards a chunked body through its trailer section. strict
// refuses what a lenient parser might read differently (requests).
func (s *splicer) copyChunked(strict bool) error {
	for {
		line, err := s.readLine(maxChunkLine)
		if err != nil {
			return err
		}
		l, ok := cutLineEnd(line, strict)
		if !ok {
			return errChunkLine
		}
		size, ok := parseChunkSize(l, strict)
		if !ok {
			return errChunkLine
		}
		s.take(len(line))
		if size == 0 {
			return s.copyTrailer(strict)
		}
		if err := s.copyN(size); err != nil {
			return err
		}
		crlf, err := s.fill(2)
		switch {
		case len(crlf) >= 2 && crlf[0] == '\r' && crlf[1] == '\n':
			s.take(2)
		case !strict && len(crlf) >= 1 && crlf[0] == '\n':
			s.take(1)
		case err != nil && len(crlf) < 2:
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		default:
			return errChunkData
		}
	}
}

// copyTrailer forwards the trailer section after the last chunk, through
// its empty line.
func (s *splicer) copyTrailer(strict bool) error {
	total := 0
	for {
		line, err := s.readLine(maxChunkLine)
		if err != nil {
			return err
		}
		total += len(line)
		if total > maxTrailerBytes {
			return errTrailer
		}
		l, ok := cutLineEnd(line, strict)
		if !ok {
			return errTrailer
		}
		if strict && len(l) > 0 {
			colon := bytes.IndexByte(l, ':')
			if colon <= 0 || !isToken(l[:colon]) || !validValue(l[colon+1:]) {
				return errTrailer
			}
		}
		s.take(len(line))
		if len(l) == 0 {
			return nil
		}
	}
}

// cutLineEnd removes the line ending of a line that includes it: CRLF, or
// with !strict also a bare LF. It refuses a CR anywhere else when strict.
func cutLineEnd(line []byte, strict bool) ([]byte, bool) {
	l := line[:len(line)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	} else if strict {
		return nil, false
	}
	if strict && bytes.IndexByte(l, '\r') >= 0 {
		return nil, false
	}
	return l, true
}

// copyBody forwards a body framed as f.
func (s *splicer) copyBody(f framing, length int64, strict bool) error {
	switch f {
	case bodyLength:
		return s.copyN(length)
	case bodyChunked:
		return s.copyChunked(strict)
	case bodyUntilClose, bodyTunnel:
		return s.copyAll()
	}
	return nil
}
