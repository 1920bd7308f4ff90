package edge

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// edgeMetrics are the edge's request and connection metrics. Requests are
// counted once each, after the response (a map lookup per request, none
// per byte); connection gauges are atomics.
type edgeMetrics struct {
	requests *prometheus.CounterVec   // route, code
	duration *prometheus.HistogramVec // route

	connsAccepted, connsRefused atomic.Uint64
	connsOpen                   atomic.Int64
}

func newEdgeMetrics() *edgeMetrics {
	return &edgeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "beam_edge_http_requests_total",
			Help: "HTTP requests answered by the edge, by route (the route's host; \"none\" for a host without a route) and status code, refusals by the edge included.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "beam_edge_http_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, by route.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
	}
}

// request counts one HTTP request for host, answered with status after d.
// Only hosts with a route get a label of their own, so a client cannot
// make up label values.
func (e *Edge) observeRequest(host string, status int, d time.Duration) {
	route := "none"
	if rt := e.routes.Load().hosts[host]; rt != nil {
		route = host
	}
	if status == 0 {
		status = 200
	}
	e.met.requests.WithLabelValues(route, statusLabel(status)).Inc()
	e.met.duration.WithLabelValues(route).Observe(d.Seconds())
}

// statusLabel returns the decimal text of a status code, without
// allocating for the common ones.
func statusLabel(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 301:
		return "301"
	case 302:
		return "302"
	case 304:
		return "304"
	case 308:
		return "308"
	case 400:
		return "400"
	case 401:
		return "401"
	case 403:
		return "403"
	case 404:
		return "404"
	case 429:
		return "429"
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	case 504:
		return "504"
	}
	return strconv.Itoa(code)
}

// connOpened and connClosed track client connections the caps admitted;
// connRefused counts those they closed at once.
func (m *edgeMetrics) connOpened()  { m.connsAccepted.Add(1); m.connsOpen.Add(1) }
func (m *edgeMetrics) connClosed()  { m.connsOpen.Add(-1) }
func (m *edgeMetrics) connRefused() { m.connsRefused.Add(1) }

// Collector returns a Prometheus collector of the edge's metrics
// (beam_edge_*): requests by route and status, their latency, client
// connections and the routes served.
func (e *Edge) Collector() prometheus.Collector { return edgeCollector{e} }

var (
	edgeConnsDesc = prometheus.NewDesc("beam_edge_connections_total",
		"Client TCP connections accepted by the edge's listeners, by result: admitted, or refused by the connection caps.", []string{"result"}, nil)
	edgeConnsOpenDesc = prometheus.NewDesc("beam_edge_connections_open",
		"Client TCP connections open.", nil, nil)
	edgeRoutesDesc = prometheus.NewDesc("beam_edge_routes",
		"Routes the edge serves, by kind: http or tls (by host), tcp or udp (by port).", []string{"kind"}, nil)
)

type edgeCollector struct{ e *Edge }

func (c edgeCollector) Describe(ch chan<- *prometheus.Desc) {
	c.e.met.requests.Describe(ch)
	c.e.met.duration.Describe(ch)
	ch <- edgeConnsDesc
	ch <- edgeConnsOpenDesc
	ch <- edgeRoutesDesc
}

func (c edgeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.e.met
	m.requests.Collect(ch)
	m.duration.Collect(ch)
	ch <- prometheus.MustNewConstMetric(edgeConnsDesc, prometheus.CounterValue, float64(m.connsAccepted.Load()), "admitted")
	ch <- prometheus.MustNewConstMetric(edgeConnsDesc, prometheus.CounterValue, float64(m.connsRefused.Load()), "refused")
	ch <- prometheus.MustNewConstMetric(edgeConnsOpenDesc, prometheus.GaugeValue, float64(m.connsOpen.Load()))
	t := c.e.routes.Load()
	kinds := map[Proto]int{ProtoHTTP: 0, ProtoTLS: 0}
	for _, rt := range t.hosts {
		kinds[rt.Proto]++
	}
	kinds[ProtoTCP], kinds[ProtoUDP] = len(t.tcp), len(t.udp)
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(edgeRoutesDesc, prometheus.GaugeValue, float64(n), string(k))
	}
}

// certOrders counts the certificate orders of a CertManager: [renewal][ok].
type certOrders struct {
	n [2][2]atomic.Uint64
}

// countOrder counts the outcome of a certificate order from certmagic's
// events (onEvent passes them all): obtained and failed certificates,
// first ones and renewals, of every name the manager serves.
func (m *CertManager) countOrder(event string, data map[string]any) {
	ok := 0
	switch event {
	case "cert_obtained":
		ok = 1
	case "cert_failed":
	default:
		return
	}
	renewal := 0
	if r, _ := data["renewal"].(bool); r {
		renewal = 1
	}
	m.orders.n[renewal][ok].Add(1)
}

var certOrdersDesc = prometheus.NewDesc("beam_edge_acme_orders_total",
	"ACME certificate orders finished, by kind (new or renewal) and result (ok or failed).", []string{"kind", "result"}, nil)

// Collector returns a Prometheus collector of the manager's ACME orders
// (beam_edge_acme_orders_total).
func (m *CertManager) Collector() prometheus.Collector { return certCollector{m} }

type certCollector struct{ m *CertManager }

func (c certCollector) Describe(ch chan<- *prometheus.Desc) { ch <- certOrdersDesc }

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	for renewal, kind := range []string{"new", "renewal"} {
		for ok, result := range []string{"failed", "ok"} {
			ch <- prometheus.MustNewConstMetric(certOrdersDesc, prometheus.CounterValue, float64(c.m.orders.n[renewal][ok].Load()), kind, result)
		}
	}
}
