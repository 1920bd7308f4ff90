package coordinator

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"beam.dev/beam/wire"
)

// metrics are the coordinator's own counters; the gauges (nodes, streams)
// are read from its state when scraped.
type metrics struct {
	streamsOpened atomic.Uint64
	// registrations counts register answers: ok, refused (4xx), error (5xx).
	regOK, regRefused, regError atomic.Uint64
	// machineLimited counts sealed requests refused by the per-source
	// rate limit.
	machineLimited atomic.Uint64
	// nodeLimited counts registered nodes' sealed requests refused by
	// their own per-node rate limit.
	nodeLimited atomic.Uint64
	// fanout is the time from the first change marked for a map stream to
	// the delta that carries it being written.
	fanout prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "beam_coordinator_map_fanout_seconds",
			Help:    "Time from a change (node online, endpoints, policy, routes) to the map delta carrying it being written to a node's stream, batching delay included.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
}

// countRegistration counts the result of a registration and passes it on.
func (s *Server) countRegistration(resp *wire.RegisterResponse, aerr *apiError) (*wire.RegisterResponse, *apiError) {
	switch {
	case aerr == nil:
		s.met.regOK.Add(1)
	case aerr.status >= 500:
		s.met.regError.Add(1)
	default:
		s.met.regRefused.Add(1)
	}
	return resp, aerr
}

// takeFirstMark returns when the first change not yet taken was marked
// (zero if none) and forgets it.
func (ss *session) takeFirstMark() time.Time {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	t := ss.firstMark
	ss.firstMark = time.Time{}
	return t
}

// noteMarkLocked records the time of the first change marked since the
// last take. ss.mu must be held.
func (ss *session) noteMarkLocked() {
	if ss.firstMark.IsZero() {
		ss.firstMark = time.Now()
	}
}

// observeFanout records the fan-out latency of a delta whose first change
// was marked at marked.
func (s *Server) observeFanout(marked time.Time) {
	if !marked.IsZero() {
		s.met.fanout.Observe(time.Since(marked).Seconds())
	}
}

// storeErrorCounter is implemented by stores that count their failures
// (sqlstore.Store): errors of the database, not "not found" or conflicts.
type storeErrorCounter interface {
	StoreErrors() uint64
}

// Collector returns a Prometheus collector of the coordinator's metrics
// (beam_coordinator_*). Gauges are read from the coordinator's state when
// scraped, under its lock, once per scrape.
func (s *Server) Collector() prometheus.Collector { return coordCollector{s} }

var (
	coordNodesDesc = prometheus.NewDesc("beam_coordinator_nodes",
		"Registered nodes, by state: online (a map stream open) or offline.", []string{"state"}, nil)
	coordNetworksDesc = prometheus.NewDesc("beam_coordinator_networks",
		"Networks.", nil, nil)
	coordStreamsDesc = prometheus.NewDesc("beam_coordinator_streams",
		"Open map streams.", nil, nil)
	coordStreamsOpenedDesc = prometheus.NewDesc("beam_coordinator_streams_opened_total",
		"Map streams opened.", nil, nil)
	coordRegistrationsDesc = prometheus.NewDesc("beam_coordinator_registrations_total",
		"Registration requests answered, by result: ok, refused (the node's fault: bad or spent key, not allowed) or error (the coordinator's).", []string{"result"}, nil)
	coordStoreErrorsDesc = prometheus.NewDesc("beam_coordinator_store_errors_total",
		"Failed database operations of the store.", nil, nil)
	coordReplayEntriesDesc = prometheus.NewDesc("beam_coordinator_replay_entries",
		"Sealed requests remembered against replays (those of registered nodes and valid auth keys, for the clock-skew window).", nil, nil)
	coordRateLimitedDesc = prometheus.NewDesc("beam_coordinator_rate_limited_total",
		"Sealed requests refused because their source address sent too many.", nil, nil)
	coordNodeRateLimitedDesc = prometheus.NewDesc("beam_coordinator_node_rate_limited_total",
		"Registered nodes' sealed requests refused because the node sent too many.", nil, nil)
)

type coordCollector struct{ s *Server }

func (c coordCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{coordNodesDesc, coordNetworksDesc, coordStreamsDesc, coordStreamsOpenedDesc,
		coordRegistrationsDesc, coordStoreErrorsDesc, coordReplayEntriesDesc, coordRateLimitedDesc, coordNodeRateLimitedDesc} {
		ch <- d
	}
	c.s.met.fanout.Describe(ch)
}

func (c coordCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	nodes, streams, networks := len(s.nodes), len(s.sessions), len(s.networks)
	online := 0
	for k := range s.nodes {
		if s.sessions[k] != nil {
			online++
		}
	}
	s.mu.Unlock()
	gauge := func(d *prometheus.Desc, v int, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), lv...)
	}
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge(coordNodesDesc, online, "online")
	gauge(coordNodesDesc, nodes-online, "offline")
	gauge(coordNetworksDesc, networks)
	gauge(coordStreamsDesc, streams)
	counter(coordStreamsOpenedDesc, s.met.streamsOpened.Load())
	counter(coordRegistrationsDesc, s.met.regOK.Load(), "ok")
	counter(coordRegistrationsDesc, s.met.regRefused.Load(), "refused")
	counter(coordRegistrationsDesc, s.met.regError.Load(), "error")
	var storeErrs uint64
	if sc, ok := s.store.(storeErrorCounter); ok {
		storeErrs = sc.StoreErrors()
	}
	counter(coordStoreErrorsDesc, storeErrs)
	gauge(coordReplayEntriesDesc, s.replay.len())
	counter(coordRateLimitedDesc, s.met.machineLimited.Load())
	counter(coordNodeRateLimitedDesc, s.met.nodeLimited.Load())
	s.met.fanout.Collect(ch)
}
