package derpserver

import "github.com/prometheus/client_golang/prometheus"

// Collector returns a Prometheus collector of the relay's metrics
// (beam_relay_*). It reads the server's counters when scraped and adds
// nothing to the relay path.
func (s *Server) Collector() prometheus.Collector { return relayCollector{s} }

var (
	relayClientsDesc = prometheus.NewDesc("beam_relay_clients",
		"Connected relay clients, by kind: node or mesh (a meshed relay).", []string{"kind"}, nil)
	relayRemoteDesc = prometheus.NewDesc("beam_relay_remote_clients",
		"Clients known to be connected to meshed relays.", nil, nil)
	relayHandshakesDesc = prometheus.NewDesc("beam_relay_handshakes_total",
		"Client handshakes, by result: accepted or refused.", []string{"result"}, nil)
	relayPacketsDesc = prometheus.NewDesc("beam_relay_packets_relayed_total",
		"Packets written to their destination client.", nil, nil)
	relayBytesDesc = prometheus.NewDesc("beam_relay_bytes_relayed_total",
		"Bytes of packets written to their destination client.", nil, nil)
	relayForwardedDesc = prometheus.NewDesc("beam_relay_packets_forwarded_total",
		"Packets handed to a meshed relay for a client connected there.", nil, nil)
	relayDropsDesc = prometheus.NewDesc("beam_relay_drops_total",
		"Dropped packets, by reason: queue_full, unknown_dest, to_self or gone.", []string{"reason"}, nil)
	relaySTUNDroppedDesc = prometheus.NewDesc("beam_relay_stun_dropped_total",
		"STUN requests left unanswered because their source address was past its rate limit.", nil, nil)
	relayQueueDesc = prometheus.NewDesc("beam_relay_queue_packets",
		"Packets waiting in the clients' send queues, summed over clients.", nil, nil)
	relayQueueMaxDesc = prometheus.NewDesc("beam_relay_queue_max_packets",
		"Packets waiting in the longest client send queue.", nil, nil)
	relayQueueBytesDesc = prometheus.NewDesc("beam_relay_queue_bytes",
		"Bytes waiting in the clients' send queues, summed over clients.", nil, nil)
)

type relayCollector struct{ s *Server }

func (c relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{relayClientsDesc, relayRemoteDesc, relayHandshakesDesc, relayPacketsDesc,
		relayBytesDesc, relayForwardedDesc, relayDropsDesc, relayQueueDesc, relayQueueMaxDesc, relayQueueBytesDesc, relaySTUNDroppedDesc} {
		ch <- d
	}
}

func (c relayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	pkts, maxPkts, bytes := c.s.queueDepth()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v int64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge(relayClientsDesc, float64(st.Clients-st.MeshClients), "node")
	gauge(relayClientsDesc, float64(st.MeshClients), "mesh")
	gauge(relayRemoteDesc, float64(st.RemoteClients))
	counter(relayHandshakesDesc, st.Accepted, "accepted")
	counter(relayHandshakesDesc, st.Refused, "refused")
	counter(relayPacketsDesc, st.PacketsRelayed)
	counter(relayBytesDesc, st.BytesRelayed)
	counter(relayForwardedDesc, st.PacketsForwarded)
	counter(relayDropsDesc, st.DropsQueueFull, "queue_full")
	counter(relayDropsDesc, st.DropsUnknownDest, "unknown_dest")
	counter(relayDropsDesc, st.DropsToSelf, "to_self")
	counter(relayDropsDesc, st.DropsGone, "gone")
	counter(relaySTUNDroppedDesc, st.STUNDropped)
	gauge(relayQueueDesc, float64(pkts))
	gauge(relayQueueMaxDesc, float64(maxPkts))
	gauge(relayQueueBytesDesc, float64(bytes))
}

// queueDepth sums the packets and bytes waiting in every client's send
// queues and finds the longest queue. It takes each queue's lock in turn,
// once per scrape.
func (s *Server) queueDepth() (pkts, maxPkts, bytes int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, c := range s.clients {
		n := 0
		for _, q := range []*pktQueue{c.sendQ, c.discoQ} {
			qp, qb := q.depth()
			n += qp
			bytes += qb
		}
		pkts += n
		maxPkts = max(maxPkts, n)
	}
	return pkts, maxPkts, bytes
}

// depth returns the number of queued packets and their bytes.
func (q *pktQueue) depth() (pkts, bytes int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head, q.bytes
}
