// Package stats holds the proxy's Prometheus metrics. Their names are
// documented (docs/operations.md) and must stay stable: dashboards, alerts
// and the KEDA trigger read them.
//
// Every series is created once: per route and status code on first use, per
// rejection reason up front, so a request costs map lookups, never a
// formatted name.
package stats

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Routes are the values of the route label; anything else is "other".
var Routes = []string{
	"/predict", "/v2/models/infer", "/v2/models/metadata", "/v2/models/ready", "/v2/other",
	"/v2", "/v2/health/live", "/v2/health/ready", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
	"other",
}

// Reasons are the values of inference_rejections_total's reason label.
var Reasons = []string{
	"queue_full", "decode_queue_full", "upload_budget", "upload_too_slow", "upload_client_limit", "upload_key_limit", "client_busy", "client_refusals", "slow_request", "decode_memory", "deadline", "unavailable",
	"unsupported_format", "too_many_pixels", "body_too_large", "length_required", "corrupt_image",
	"bad_request", "bad_tensor", "not_found", "method_not_allowed", "cancelled", "internal",
	"auth_missing", "auth_invalid", "auth_scope", "auth_rate", "auth_concurrency",
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics are the proxy's metrics, all in one *metrics.Set.
type Metrics struct {
	set *metrics.Set

	BatchSize      *metrics.PrometheusHistogram
	QueueWait      *metrics.PrometheusHistogram
	RuntimeSeconds *metrics.PrometheusHistogram
	CacheHits      *metrics.Counter
	CacheMisses    *metrics.Counter
	CacheCoalesced *metrics.Counter
	Panics         *metrics.Counter
	RuntimeStalls  *metrics.Counter

	routes     map[string]*route // fixed after New
	rejections map[string]*metrics.Counter
}

// route holds one route's series; codes grow with the statuses seen.
type route struct {
	name    string
	latency *metrics.PrometheusHistogram
	mu      sync.RWMutex
	codes   map[int]*code
}

type code struct{ requests, exceptions *metrics.Counter }

// Gauges are read when /metrics is scraped.
type Gauges struct {
	// QueueDepth is waiting + in-flight items (the autoscaling signal
	// before issue 24; kept for dashboards and targetQueueDepth).
	QueueDepth func() float64
	// RuntimeDemand is the runtime work offered so far, seconds: the
	// measured runtime time per item summed over every item sent to the
	// runtime, refused ones included, cache hits never (a counter; its
	// rate is the offered load in runtimes, the autoscaling signal).
	RuntimeDemand func() float64
	// RuntimeBusy is the runtime's busy time so far, seconds (a counter;
	// its rate is the busy fraction, at most 1 per runtime).
	RuntimeBusy func() float64
	// ExpectedWait is the wait a request arriving now can expect, seconds:
	// queue depth x the measured runtime time per item.
	ExpectedWait func() float64
	// RuntimeConnected is 1 while a ready runtime is connected.
	RuntimeConnected func() float64
	// UploadBytes and DecodeBytes are the bytes reserved from the two
	// memory budgets.
	UploadBytes, DecodeBytes func() float64
}

// New creates every metric in set.
// WritePrometheus writes m's series, and this process's (go_*, process_*),
// in Prometheus' text format: only the set m was made with, never another
// proxy's in the same process.
func (m *Metrics) WritePrometheus(w io.Writer) {
	m.set.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

func New(set *metrics.Set, g Gauges) *Metrics {
	m := &Metrics{
		set:            set,
		BatchSize:      set.NewPrometheusHistogramExt("inference_batch_size", []float64{1, 2, 4, 8, 16, 32, 64}),
		QueueWait:      set.NewPrometheusHistogramExt("inference_queue_wait_seconds", latencyBuckets),
		RuntimeSeconds: set.NewPrometheusHistogramExt("inference_runtime_seconds", latencyBuckets),
		CacheHits:      set.NewCounter("inference_cache_hits_total"),
		CacheMisses:    set.NewCounter("inference_cache_misses_total"),
		CacheCoalesced: set.NewCounter("inference_cache_coalesced_total"),
		Panics:         set.NewCounter("inference_panics_total"),
		RuntimeStalls:  set.NewCounter("inference_runtime_stalls_total"),
		routes:         map[string]*route{},
		rejections:     map[string]*metrics.Counter{},
	}
	for _, r := range Routes {
		m.routes[r] = &route{name: r, codes: map[int]*code{},
			latency: set.NewPrometheusHistogramExt(fmt.Sprintf(`inference_latency_seconds{route=%q}`, r), latencyBuckets)}
	}
	for _, r := range Reasons {
		m.rejections[r] = set.NewCounter(fmt.Sprintf(`inference_rejections_total{reason=%q}`, r))
	}
	gauge := func(name string, f func() float64) {
		if f != nil {
			set.NewGauge(name, f)
		}
	}
	gauge("inference_queue_depth", g.QueueDepth)
	gauge("inference_runtime_demand_seconds_total", g.RuntimeDemand)
	gauge("inference_runtime_busy_seconds_total", g.RuntimeBusy)
	gauge("inference_expected_wait_seconds", g.ExpectedWait)
	gauge("inference_runtime_connected", g.RuntimeConnected)
	gauge("inference_upload_bytes_reserved", g.UploadBytes)
	gauge("inference_decode_bytes_reserved", g.DecodeBytes)
	return m
}

// Request counts one finished HTTP request on route (one of Routes).
func (m *Metrics) Request(routeName string, status int, took time.Duration) {
	r := m.routes[routeName]
	if r == nil {
		r = m.routes["other"]
	}
	r.latency.Update(took.Seconds())
	r.mu.RLock()
	c := r.codes[status]
	r.mu.RUnlock()
	if c == nil {
		r.mu.Lock()
		if c = r.codes[status]; c == nil {
			c = &code{requests: m.set.GetOrCreateCounter(fmt.Sprintf(`inference_requests_total{route=%q,code="%d"}`, r.name, status))}
			if status >= 500 {
				c.exceptions = m.set.GetOrCreateCounter(fmt.Sprintf(`inference_exceptions_total{route=%q,code="%d"}`, r.name, status))
			}
			r.codes[status] = c
		}
		r.mu.Unlock()
	}
	c.requests.Inc()
	if c.exceptions != nil {
		c.exceptions.Inc()
	}
}

// Rejected counts a request refused before or instead of inference, by one
// of Reasons.
func (m *Metrics) Rejected(reason string) {
	if c := m.rejections[reason]; c != nil {
		c.Inc()
		return
	}
	m.rejections["internal"].Inc() // a reason missing from Reasons: a bug
}

// Dispatched and Finished make Metrics a batching.Observer.
func (m *Metrics) Dispatched(waits []time.Duration) {
	m.BatchSize.Update(float64(len(waits)))
	for _, w := range waits {
		m.QueueWait.Update(w.Seconds())
	}
}

// Finished is called when a batch's runner returns.
func (m *Metrics) Finished(int, time.Duration, error) {}
