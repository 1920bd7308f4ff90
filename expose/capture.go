package expose

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// This file holds what the inspector (inspector.go) shows: each exchange
// the device's routes carried, with its request and response heads and
// bodies, captured as they pass through the relay and bounded per body.

const (
	// DefaultBodyLimit is how much of each request and response body the
	// inspector keeps when InspectorOptions.BodyLimit is 0.
	DefaultBodyLimit = 1 << 20
	// maxExchanges and maxStoredBytes bound the inspector's memory: the
	// oldest exchanges go first.
	maxExchanges   = 500
	maxStoredBytes = 64 << 20
)

// Answerer says who answered an exchange.
type Answerer string

const (
	ByApp  Answerer = "app"  // the device's app
	ByEdge Answerer = "edge" // the edge refused it (route policy); it never reached the device
	ByBeam Answerer = "beam" // the device answered itself: the app could not be reached or answered badly
)

// Exchange is one request and its response through one of the device's
// routes, or one connection of a tcp, udp or tls (passthrough) route
// (Kind other than "http": no heads or bodies, only sizes).
type Exchange struct {
	ID         string        `json:"id"`
	Kind       string        `json:"kind"` // "http", "tcp", "udp" or "tls"
	Start      time.Time     `json:"start"`
	Duration   time.Duration `json:"duration"`
	Method     string        `json:"method,omitempty"`
	Host       string        `json:"host,omitempty"`
	Path       string        `json:"path,omitempty"`
	Status     int           `json:"status,omitempty"`
	Client     string        `json:"client,omitempty"`
	Port       uint16        `json:"port"`
	AnsweredBy Answerer      `json:"answered_by"`
	// Replay is set for an exchange the inspector sent to the app itself;
	// ReplayOf names the exchange it repeated (edited if Edited).
	Replay   bool   `json:"replay,omitempty"`
	ReplayOf string `json:"replay_of,omitempty"`
	Edited   bool   `json:"edited,omitempty"`
	// Size is the response body's size in bytes as sent (for a
	// connection: the bytes from the app).
	Size int64 `json:"size"`
	// BytesIn, of a connection, are the bytes from the client.
	BytesIn int64 `json:"bytes_in,omitempty"`
	// Timings.
	FirstByte time.Duration `json:"first_byte,omitempty"` // from the request's head to the response's
	Error     string        `json:"error,omitempty"`

	Request  *Message `json:"request,omitempty"`
	Response *Message `json:"response,omitempty"`

	seq  uint64
	mem  int                                     // memSize when the store took it
	dial func(context.Context) (net.Conn, error) // reaches the app, for replays

	// raw, until parsed, is the capture that Request and Response are
	// parsed from on first use (see parsed): the relay only copies the
	// bytes, and an exchange nobody opens is never parsed.
	parse sync.Once
	raw   *rawCapture // &rawLine until parsed
	// rawLine holds raw, so that recording an exchange allocates it
	// with the Exchange.
	rawLine rawCapture
}

// rawCapture is a finished capture's bytes, waiting to be parsed.
type rawCapture struct {
	req, resp           []byte
	reqTotal, respTotal int64
	reqHead, respHead   int
	limit               int
	by                  Answerer
}

// parsed parses x's capture into Request and Response, once, and
// returns x. The store's readers (get, since) call it before anyone reads
// those fields.
func (x *Exchange) parsed() *Exchange {
	x.parse.Do(func() {
		if x.raw == nil {
			return
		}
		c := *x.raw
		x.raw, x.rawLine = nil, rawCapture{}
		req, m := parseRequest(c.req, c.reqHead, c.reqTotal, c.limit)
		x.Request = m
		if len(c.resp) > 0 {
			limit := c.limit
			if c.by == ByBeam {
				limit = max(limit, len(c.resp)) // the device's own page, whole
			}
			x.Response = parseResponse(c.resp, c.respHead, c.respTotal, limit, req)
			x.Size = x.Response.BodySize
		}
	})
	return x
}

// Message is the captured head and body of a request or response.
type Message struct {
	Proto  string      `json:"proto,omitempty"`
	Header http.Header `json:"headers"`
	// Body is at most the inspector's body limit; Truncated says it was
	// cut. BodySize is the whole body's size as sent (with chunked
	// framing, if any).
	Body      []byte `json:"body"`
	BodySize  int64  `json:"body_size"`
	Truncated bool   `json:"truncated,omitempty"`
}

// capBuf keeps the first limit bytes written to it and counts all.
type capBuf struct {
	mu    sync.Mutex // guards the following fields
	b     []byte
	limit int
	total int64
}

func (c *capBuf) write(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += int64(len(p))
	if room := c.limit - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
}

// grow lets the next n bytes (a head) in on top of the body limit.
func (c *capBuf) grow(n int) {
	c.mu.Lock()
	c.limit += n
	c.mu.Unlock()
}

func (c *capBuf) snapshot() ([]byte, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.b), c.total
}

// take is snapshot for the capture's last reader: it hands over the
// bytes kept instead of copying them, and keeps no more (a request body
// that is still arriving after its response is only counted, as a copy
// would not have had it either).
func (c *capBuf) take() ([]byte, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.b
	c.b, c.limit = nil, 0
	return b, c.total
}

// capture is the raw bytes of one relayed exchange as they went through.
type capture struct {
	req, resp capBuf
	reqHead   int // bytes of the request head in req
	respHead  int // bytes of response heads (interim ones too) in resp
	respAt    time.Time
	by        Answerer
	limit     int // the body limit
}

// init makes c a capture of bodies up to limit bytes. It keeps a little
// more of the raw stream, for the framing of chunked bodies.
func (c *capture) init(limit int) {
	raw := limit + limit/16 + 4096
	c.req.limit, c.resp.limit = raw, raw
	c.by, c.limit = ByApp, limit
}

// readBody reads at most limit bytes of a body parsed from a capture
// that was cut if cut is set.
func readBody(r io.Reader, limit int, cut bool) ([]byte, bool) {
	b, _ := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if len(b) > limit {
		return b[:limit], true
	}
	return b, cut
}

// parseRequest turns a captured request into a Message. raw holds the
// head and at most the body limit; total counts everything sent.
func parseRequest(raw []byte, headLen int, total int64, limit int) (*http.Request, *Message) {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, &Message{Header: http.Header{}, Body: raw, BodySize: total, Truncated: total > int64(len(raw))}
	}
	m := &Message{Proto: r.Proto, Header: r.Header, BodySize: total - int64(headLen)}
	m.Body, m.Truncated = readBody(r.Body, limit, total > int64(len(raw)))
	if r.Host != "" && m.Header.Get("Host") == "" {
		m.Header.Set("Host", r.Host)
	}
	return r, m
}

// parseResponse turns a captured response to req (nil if unknown) into a
// Message, skipping interim (1xx) responses other than 101.
func parseResponse(raw []byte, headLen int, total int64, limit int, req *http.Request) *Message {
	br := bufio.NewReader(bytes.NewReader(raw))
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return &Message{Header: http.Header{}, Body: raw, BodySize: total, Truncated: total > int64(len(raw))}
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		m := &Message{Proto: resp.Proto, Header: resp.Header, BodySize: max(0, total-int64(headLen))}
		m.Body, m.Truncated = readBody(resp.Body, limit, total > int64(len(raw)))
		return m
	}
}

// store keeps the latest exchanges for the inspector and tells waiters
// about new ones.
type store struct {
	mu      sync.Mutex // guards the following fields
	seq     uint64
	list    []*Exchange // oldest first
	bytes   int
	changed chan struct{} // closed and replaced at each change that someone may wait for
	waited  bool          // since handed out changed
}

func newStore() *store { return &store{changed: make(chan struct{})} }

// changedLocked tells the waiters for changes, if any, about one.
func (s *store) changedLocked() {
	if s.waited {
		close(s.changed)
		s.changed = make(chan struct{})
		s.waited = false
	}
}

// add assigns x its ID and keeps it.
func (s *store) add(x *Exchange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	x.seq = s.seq
	x.ID = "req_" + strconv.FormatUint(s.seq, 10)
	x.mem = x.memSize()
	s.list = append(s.list, x)
	s.bytes += x.mem
	for len(s.list) > maxExchanges || s.bytes > maxStoredBytes && len(s.list) > 1 {
		s.bytes -= s.list[0].mem
		s.list[0] = nil
		s.list = s.list[1:]
	}
	s.changedLocked()
}

func (x *Exchange) memSize() int {
	n := 512
	if c := x.raw; c != nil {
		n += len(c.req) + len(c.resp)
	}
	for _, m := range []*Message{x.Request, x.Response} {
		if m != nil {
			n += len(m.Body)
			for k, vs := range m.Header {
				n += len(k)
				for _, v := range vs {
					n += len(v)
				}
			}
		}
	}
	return n
}

// replace puts x in place of the exchange with id, as a change that
// live lists receive again; it reports false if id is gone.
func (s *store) replace(id string, x *Exchange) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, old := range s.list {
		if old.ID == id {
			s.seq++
			x.ID, x.seq = id, s.seq
			x.mem = x.memSize()
			s.bytes += x.mem - old.mem
			s.list[k] = x
			s.changedLocked()
			return true
		}
	}
	return false
}

// get returns the exchange with id, parsed, or nil.
func (s *store) get(id string) *Exchange {
	s.mu.Lock()
	var found *Exchange
	for _, x := range s.list {
		if x.ID == id {
			found = x
			break
		}
	}
	s.mu.Unlock()
	if found == nil {
		return nil
	}
	return found.parsed()
}

// since returns the exchanges after seq, oldest first and parsed, and a
// channel closed at the next add.
func (s *store) since(seq uint64) ([]*Exchange, <-chan struct{}) {
	s.mu.Lock()
	var out []*Exchange
	for _, x := range s.list {
		if x.seq > seq {
			out = append(out, x)
		}
	}
	changed := s.changed
	s.waited = true
	s.mu.Unlock()
	// Parsing happens here, in the reader's goroutine, outside the lock
	// the relay takes to add an exchange.
	for _, x := range out {
		x.parsed()
	}
	return out, changed
}

// clear forgets every exchange.
func (s *store) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list, s.bytes = nil, 0
	s.changedLocked()
}

// errNotReplayable is returned for an exchange the inspector cannot send
// again.
var errNotReplayable = errors.New("expose: this exchange cannot be replayed")

// exchange builds the inspector's record of a finished exchange from
// its log line and its capture. It only copies the captured bytes: the
// heads and bodies are parsed when the inspector first shows the
// exchange (Exchange.parsed).
func (c *capture) exchange(l apitype.RequestLog, dial func(context.Context) (net.Conn, error)) *Exchange {
	x := &Exchange{
		Kind: "http", Start: l.Time, Duration: l.Duration, Method: l.Method, Host: l.Host, Path: l.Path,
		Status: l.Status, Client: l.Client, Port: l.Port, AnsweredBy: c.by, dial: dial,
	}
	if !c.respAt.IsZero() {
		x.FirstByte = c.respAt.Sub(l.Time)
	}
	raw := &x.rawLine
	*raw = rawCapture{reqHead: c.reqHead, respHead: c.respHead, limit: c.limit, by: c.by}
	// The exchange is over: its bytes are handed over, not copied.
	raw.req, raw.reqTotal = c.req.take()
	raw.resp, raw.respTotal = c.resp.take()
	if len(raw.resp) > 0 {
		// As parseResponse counts a body: all that followed the heads.
		x.Size = max(0, raw.respTotal-int64(raw.respHead))
	}
	x.raw = raw
	return x
}
