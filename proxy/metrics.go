package main

import (
	"fmt"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// proxyMetrics holds the proxy's metrics, all in one *metrics.Set that main
// registers. Names are documented in the README and must stay stable.
type proxyMetrics struct {
	set *metrics.Set

	batchSize      *metrics.PrometheusHistogram
	queueWait      *metrics.PrometheusHistogram
	runtimeSeconds *metrics.PrometheusHistogram
	cacheHits      *metrics.Counter
	cacheMisses    *metrics.Counter
	cacheCoalesced *metrics.Counter

	mu        sync.Mutex
	latencies map[string]*metrics.PrometheusHistogram
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newProxyMetrics(set *metrics.Set, queueDepth func() float64, connected func() float64) *proxyMetrics {
	m := &proxyMetrics{
		set:            set,
		batchSize:      set.NewPrometheusHistogramExt("inference_batch_size", []float64{1, 2, 4, 8, 16, 32, 64}),
		queueWait:      set.NewPrometheusHistogramExt("inference_queue_wait_seconds", latencyBuckets),
		runtimeSeconds: set.NewPrometheusHistogramExt("inference_runtime_seconds", latencyBuckets),
		cacheHits:      set.NewCounter("inference_cache_hits_total"),
		cacheMisses:    set.NewCounter("inference_cache_misses_total"),
		cacheCoalesced: set.NewCounter("inference_cache_coalesced_total"),
		latencies:      map[string]*metrics.PrometheusHistogram{},
	}
	set.NewGauge("inference_queue_depth", queueDepth)
	set.NewGauge("inference_runtime_connected", connected)
	return m
}

// request counts one finished HTTP request.
func (m *proxyMetrics) request(route string, status int, took time.Duration) {
	m.set.GetOrCreateCounter(fmt.Sprintf(`inference_requests_total{route=%q,code="%d"}`, route, status)).Inc()
	if status >= 500 {
		m.set.GetOrCreateCounter(fmt.Sprintf(`inference_exceptions_total{route=%q,code="%d"}`, route, status)).Inc()
	}
	m.mu.Lock()
	h := m.latencies[route]
	if h == nil {
		h = m.set.NewPrometheusHistogramExt(fmt.Sprintf(`inference_latency_seconds{route=%q}`, route), latencyBuckets)
		m.latencies[route] = h
	}
	m.mu.Unlock()
	h.Update(took.Seconds())
}

// rejected counts a request refused before or instead of inference.
func (m *proxyMetrics) rejected(reason string) {
	m.set.GetOrCreateCounter(fmt.Sprintf(`inference_rejections_total{reason=%q}`, reason)).Inc()
}

// Dispatched and Finished make proxyMetrics the batcher's Observer.
func (m *proxyMetrics) Dispatched(waits []time.Duration) {
	m.batchSize.Update(float64(len(waits)))
	for _, w := range waits {
		m.queueWait.Update(w.Seconds())
	}
}

func (m *proxyMetrics) Finished(int, time.Duration, error) {}
