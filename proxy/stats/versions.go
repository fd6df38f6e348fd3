package stats

import (
	"fmt"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Version holds one model version's series, labelled model and version.
// They exist only with a routing file (docs/versions.md), so the
// single-model metrics stay as they are; the labels come from the routing
// file, which bounds them (routing.MaxModels x routing.MaxVersions).
// Unregister removes them when a reload retires the version.
type Version struct {
	set    *metrics.Set
	global *Metrics
	labels string

	Latency        *metrics.PrometheusHistogram
	BatchSize      *metrics.PrometheusHistogram
	QueueWait      *metrics.PrometheusHistogram
	ShadowAgree    *metrics.Counter
	ShadowDisagree *metrics.Counter
	ShadowErrors   *metrics.Counter
	ShadowShed     *metrics.Counter
	ShadowLatency  *metrics.PrometheusHistogram
	Rollbacks      *metrics.Counter

	mu    sync.Mutex
	codes map[int]*metrics.Counter
	names []string // every series registered, for Unregister
}

// VersionGauges are read when /metrics is scraped.
type VersionGauges struct {
	// QueueDepth is the version's waiting + in-flight items for clients;
	// ShadowDepth its mirrored ones.
	QueueDepth, ShadowDepth func() float64
	// Connected is 1 while a ready runtime serving the expected variant
	// is connected.
	Connected func() float64
	// Weight is the version's weight now (0 once rolled back); RolledBack
	// 1 once rolled back.
	Weight, RolledBack func() float64
}

// NewVersion creates the series of model's version in m's set. Its batch
// observations go to m's unlabelled series as well.
func (m *Metrics) NewVersion(model, version string, g VersionGauges) *Version {
	v := &Version{set: m.set, global: m, labels: fmt.Sprintf(`model=%q,version=%q`, model, version), codes: map[int]*metrics.Counter{}}
	hist := func(name string, buckets []float64) *metrics.PrometheusHistogram {
		n := name + "{" + v.labels + "}"
		v.names = append(v.names, n)
		return m.set.NewPrometheusHistogramExt(n, buckets)
	}
	counter := func(name, extra string) *metrics.Counter {
		n := name + "{" + v.labels + extra + "}"
		v.names = append(v.names, n)
		return m.set.NewCounter(n)
	}
	v.Latency = hist("inference_version_latency_seconds", latencyBuckets)
	v.BatchSize = hist("inference_version_batch_size", []float64{1, 2, 4, 8, 16, 32, 64})
	v.QueueWait = hist("inference_version_queue_wait_seconds", latencyBuckets)
	v.ShadowLatency = hist("inference_shadow_latency_seconds", latencyBuckets)
	v.ShadowAgree = counter("inference_shadow_requests_total", `,outcome="agree"`)
	v.ShadowDisagree = counter("inference_shadow_requests_total", `,outcome="disagree"`)
	v.ShadowErrors = counter("inference_shadow_requests_total", `,outcome="error"`)
	v.ShadowShed = counter("inference_shadow_requests_total", `,outcome="shed"`)
	v.Rollbacks = counter("inference_rollbacks_total", "")
	for name, f := range map[string]func() float64{
		"inference_version_queue_depth":        g.QueueDepth,
		"inference_version_shadow_queue_depth": g.ShadowDepth,
		"inference_version_runtime_connected":  g.Connected,
		"inference_version_weight":             g.Weight,
		"inference_version_rolled_back":        g.RolledBack,
	} {
		if f != nil {
			n := name + "{" + v.labels + "}"
			v.names = append(v.names, n)
			m.set.NewGauge(n, f)
		}
	}
	return v
}

// Request counts one client request the version answered (any route).
func (v *Version) Request(status int, took time.Duration) {
	v.Latency.Update(took.Seconds())
	v.mu.Lock()
	c := v.codes[status]
	if c == nil {
		n := fmt.Sprintf(`inference_version_requests_total{%s,code="%d"}`, v.labels, status)
		c = v.set.GetOrCreateCounter(n)
		v.codes[status] = c
		v.names = append(v.names, n)
	}
	v.mu.Unlock()
	c.Inc()
}

// Dispatched and Finished make Version a batching.Observer, feeding the
// unlabelled series too.
func (v *Version) Dispatched(waits []time.Duration) {
	v.global.Dispatched(waits)
	v.BatchSize.Update(float64(len(waits)))
	for _, w := range waits {
		v.QueueWait.Update(w.Seconds())
	}
}

// Finished is called when a batch's runner returns.
func (v *Version) Finished(int, time.Duration, error) {}

// Unregister removes the version's series.
func (v *Version) Unregister() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, n := range v.names {
		v.set.UnregisterMetric(n)
	}
	v.names = nil
}

// Routing holds the routing file's own series.
type Routing struct {
	Applied, Rejected *metrics.Counter
}

// NewRouting creates inference_routing_reloads_total{result} and the
// inference_routing_generation gauge (routing files applied).
func (m *Metrics) NewRouting(generation func() float64) *Routing {
	m.set.NewGauge("inference_routing_generation", generation)
	return &Routing{
		Applied:  m.set.NewCounter(`inference_routing_reloads_total{result="applied"}`),
		Rejected: m.set.NewCounter(`inference_routing_reloads_total{result="rejected"}`),
	}
}
