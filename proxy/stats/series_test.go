package stats

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestSeries: every documented series, by name and labels, holds what was
// counted into it. A renamed series, a wrong label or a count that goes to
// another series fails here, not on a dashboard.
func TestSeries(t *testing.T) {
	set := metrics.NewSet()
	m := New(set, Gauges{
		QueueDepth:       func() float64 { return 3 },
		RuntimeDemand:    func() float64 { return 1.5 },
		RuntimeBusy:      func() float64 { return 1.25 },
		ExpectedWait:     func() float64 { return 0.5 },
		RuntimeConnected: func() float64 { return 1 },
		UploadBytes:      func() float64 { return 1024 },
		DecodeBytes:      func() float64 { return 2048 },
	})
	m.Request("/predict", 200, 20*time.Millisecond)
	m.Request("/predict", 200, 30*time.Millisecond)
	m.Request("/predict", 503, time.Second)
	m.Request("/v2/models/infer", 400, time.Millisecond)
	m.Request("/no/such/route", 404, time.Millisecond) // counted as "other"
	m.Rejected("queue_full")
	m.Rejected("queue_full")
	m.Rejected("auth_rate")
	m.Rejected("no_such_reason") // a bug: counted as internal
	m.Dispatched([]time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond})
	m.CacheHits.Add(4)
	m.CacheMisses.Add(5)
	m.CacheCoalesced.Add(6)
	m.Panics.Inc()
	m.RuntimeStalls.Add(2)
	m.RuntimeSeconds.Update(0.04)

	got := testenv.SetMetrics(t, set)
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{`inference_requests_total{route="/predict",code="200"}`, 2},
		{`inference_requests_total{route="/predict",code="503"}`, 1},
		{`inference_exceptions_total{route="/predict",code="503"}`, 1},
		{`inference_requests_total{route="/v2/models/infer",code="400"}`, 1},
		{`inference_requests_total{route="other",code="404"}`, 1},
		{`inference_latency_seconds_count{route="/predict"}`, 3},
		{`inference_latency_seconds_sum{route="/predict"}`, 1.05},
		{`inference_latency_seconds_bucket{route="/predict",le="0.025"}`, 1},
		{`inference_latency_seconds_bucket{route="/predict",le="0.05"}`, 2},
		{`inference_latency_seconds_bucket{route="/predict",le="+Inf"}`, 3},
		{`inference_latency_seconds_count{route="other"}`, 1},
		{`inference_latency_seconds_count{route="/metrics"}`, 0},
		{`inference_rejections_total{reason="queue_full"}`, 2},
		{`inference_rejections_total{reason="auth_rate"}`, 1},
		{`inference_rejections_total{reason="internal"}`, 1},
		{`inference_rejections_total{reason="deadline"}`, 0},
		{"inference_batch_size_count", 1},
		{"inference_batch_size_sum", 3},
		{`inference_batch_size_bucket{le="2"}`, 0},
		{`inference_batch_size_bucket{le="4"}`, 1},
		{"inference_queue_wait_seconds_count", 3},
		{"inference_queue_wait_seconds_sum", 0.006},
		{"inference_runtime_seconds_count", 1},
		{"inference_runtime_seconds_sum", 0.04},
		{"inference_cache_hits_total", 4},
		{"inference_cache_misses_total", 5},
		{"inference_cache_coalesced_total", 6},
		{"inference_panics_total", 1},
		{"inference_runtime_stalls_total", 2},
		{"inference_queue_depth", 3},
		{"inference_runtime_demand_seconds_total", 1.5},
		{"inference_runtime_busy_seconds_total", 1.25},
		{"inference_expected_wait_seconds", 0.5},
		{"inference_runtime_connected", 1},
		{"inference_upload_bytes_reserved", 1024},
		{"inference_decode_bytes_reserved", 2048},
	} {
		if v := got.Value(t, tc.series); !near(v, tc.want) {
			t.Errorf("%s = %v, want %v", tc.series, v, tc.want)
		}
	}
	// A status not seen has no series yet; a status below 500 no
	// exception series.
	for _, absent := range []string{
		`inference_requests_total{route="/predict",code="404"}`,
		`inference_exceptions_total{route="/predict",code="200"}`,
		`inference_requests_total{route="/no/such/route",code="404"}`,
		`inference_rejections_total{reason="no_such_reason"}`,
	} {
		if v, ok := got.Lookup(absent); ok {
			t.Errorf("%s = %v; want no such series", absent, v)
		}
	}
	// Every route and every reason has its series from the start.
	for _, r := range Routes {
		got.Value(t, `inference_latency_seconds_count{route="`+r+`"}`)
	}
	for _, r := range Reasons {
		got.Value(t, `inference_rejections_total{reason="`+r+`"}`)
	}
}

// TestSeriesNames: the set of series names is the documented one
// (docs/operations.md): a series added, renamed or dropped must change
// this list too.
func TestSeriesNames(t *testing.T) {
	set := metrics.NewSet()
	f := func() float64 { return 0 }
	New(set, Gauges{QueueDepth: f, RuntimeDemand: f, RuntimeBusy: f, ExpectedWait: f, RuntimeConnected: f, UploadBytes: f, DecodeBytes: f})
	var names []string
	for _, s := range testenv.SetMetrics(t, set).Samples() {
		n := s.Name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suffix); ok && histograms[base] {
				n = base
			}
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	want := []string{
		"inference_batch_size",
		"inference_cache_coalesced_total",
		"inference_cache_hits_total",
		"inference_cache_misses_total",
		"inference_decode_bytes_reserved",
		"inference_expected_wait_seconds",
		"inference_latency_seconds",
		"inference_panics_total",
		"inference_queue_depth",
		"inference_queue_wait_seconds",
		"inference_rejections_total",
		"inference_runtime_busy_seconds_total",
		"inference_runtime_connected",
		"inference_runtime_demand_seconds_total",
		"inference_runtime_seconds",
		"inference_runtime_stalls_total",
		"inference_upload_bytes_reserved",
	}
	if !slices.Equal(names, want) {
		t.Errorf("series names:\n got %q\nwant %q", names, want)
	}
	// Without gauge functions, no gauge series.
	bare := metrics.NewSet()
	New(bare, Gauges{})
	if testenv.SetMetrics(t, bare).Has("inference_queue_depth") {
		t.Error("inference_queue_depth exported without its function")
	}
}

var histograms = map[string]bool{
	"inference_batch_size": true, "inference_latency_seconds": true, "inference_queue_wait_seconds": true,
	"inference_runtime_seconds": true, "inference_version_latency_seconds": true, "inference_version_batch_size": true,
	"inference_version_queue_wait_seconds": true, "inference_shadow_latency_seconds": true,
}

// TestVersionSeries: a version's series carry its model and version
// labels, feed the unlabelled batch series too, and all go on Unregister.
func TestVersionSeries(t *testing.T) {
	set := metrics.NewSet()
	m := New(set, Gauges{})
	r := m.NewRouting(func() float64 { return 7 })
	v := m.NewVersion("resnet50", "v2", VersionGauges{
		QueueDepth: func() float64 { return 2 }, ShadowDepth: func() float64 { return 1 },
		Connected: func() float64 { return 1 }, Weight: func() float64 { return 40 }, RolledBack: func() float64 { return 0 },
	})
	other := m.NewVersion("resnet50", "v1", VersionGauges{})
	v.Request(200, 10*time.Millisecond)
	v.Request(200, 10*time.Millisecond)
	v.Request(500, 10*time.Millisecond)
	other.Request(200, time.Millisecond)
	v.Dispatched([]time.Duration{time.Millisecond, time.Millisecond})
	v.ShadowAgree.Add(3)
	v.ShadowDisagree.Inc()
	v.ShadowShed.Add(2)
	v.Rollbacks.Inc()
	r.Applied.Add(2)
	r.Rejected.Inc()

	got := testenv.SetMetrics(t, set)
	const l = `model="resnet50",version="v2"`
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{`inference_version_requests_total{` + l + `,code="200"}`, 2},
		{`inference_version_requests_total{` + l + `,code="500"}`, 1},
		{`inference_version_requests_total{model="resnet50",version="v1",code="200"}`, 1},
		{`inference_version_latency_seconds_count{` + l + `}`, 3},
		{`inference_version_batch_size_count{` + l + `}`, 1},
		{`inference_version_batch_size_sum{` + l + `}`, 2},
		{`inference_version_queue_wait_seconds_count{` + l + `}`, 2},
		{"inference_batch_size_count", 1}, // the unlabelled series too
		{"inference_queue_wait_seconds_count", 2},
		{`inference_shadow_requests_total{` + l + `,outcome="agree"}`, 3},
		{`inference_shadow_requests_total{` + l + `,outcome="disagree"}`, 1},
		{`inference_shadow_requests_total{` + l + `,outcome="error"}`, 0},
		{`inference_shadow_requests_total{` + l + `,outcome="shed"}`, 2},
		{`inference_shadow_latency_seconds_count{` + l + `}`, 0},
		{`inference_rollbacks_total{` + l + `}`, 1},
		{`inference_version_queue_depth{` + l + `}`, 2},
		{`inference_version_shadow_queue_depth{` + l + `}`, 1},
		{`inference_version_runtime_connected{` + l + `}`, 1},
		{`inference_version_weight{` + l + `}`, 40},
		{`inference_version_rolled_back{` + l + `}`, 0},
		{"inference_routing_generation", 7},
		{`inference_routing_reloads_total{result="applied"}`, 2},
		{`inference_routing_reloads_total{result="rejected"}`, 1},
	} {
		if v := got.Value(t, tc.series); !near(v, tc.want) {
			t.Errorf("%s = %v, want %v", tc.series, v, tc.want)
		}
	}
	if v, ok := got.Lookup(`inference_version_weight{model="resnet50",version="v1"}`); ok {
		t.Errorf("v1 has a weight series (%v) without its function", v)
	}

	v.Unregister()
	after := testenv.SetMetrics(t, set)
	for _, s := range after.Samples() {
		if s.Labels["version"] == "v2" {
			t.Errorf("after Unregister: %s is still there", s.Key())
		}
	}
	after.Value(t, `inference_version_requests_total{model="resnet50",version="v1",code="200"}`) // v1's stay
}

// near compares sums of float seconds.
func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
