package gateway

import (
	"path/filepath"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestMetricsOwnSet: two proxies in one process each serve their own
// series on their metrics port. Before, the handler wrote the global
// registry, where both sets were registered: each served both, every
// series twice (refused by the parser) and the other's counts included.
func TestMetricsOwnSet(t *testing.T) {
	dir := t.TempDir()
	a := startProxyNoWait(t, testConfig(filepath.Join(dir, "a.sock")))
	b := startProxyNoWait(t, testConfig(filepath.Join(dir, "b.sock")))
	for range 3 {
		get(t, a.url+"/healthz")
	}
	const series = `inference_requests_total{route="/healthz",code="200"}`
	if got := metricValue(t, a.metricsURL, series); got != 3 {
		t.Errorf("proxy a: %s = %v, want its 3", series, got)
	}
	bm := testenv.MustParseMetrics(t, get(t, b.metricsURL+"/metrics").raw) // refuses a series twice
	if got, ok := bm.Lookup(series); ok && got != 0 {
		t.Errorf("proxy b: %s = %v, want none: it serves a's series", series, got)
	}
	if got := metricValue(t, b.metricsURL, "go_goroutines"); got <= 0 {
		t.Errorf("proxy b: go_goroutines = %v, want the process's metrics too", got)
	}
}
