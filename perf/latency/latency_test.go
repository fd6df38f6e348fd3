package latency

import (
	"strings"
	"testing"
)

// TestReport: the report gives each part's median and says whether the
// goals are met.
func TestReport(t *testing.T) {
	samples := map[string][]float64{}
	for i, f := range append(append([]string{"latency"}, fields...), "unaccounted", "overhead") {
		samples[f] = []float64{float64(i), float64(i) + 1, float64(i) + 2}
	}
	samples["unaccounted"] = []float64{0.2, 0.4, 0.6}
	samples["overhead"] = []float64{1, 2, 3}
	got := Report(Config{Requests: 3}, samples)
	for _, want := range []string{
		"| latency | 1.00 | 0.20-1.80 |",
		"| inference_ms | 6.00 |",
		"unaccounted (latency - server_ms + other_ms) 0.40 ms, goal at most 0.5 ms: met",
		"latency - inference_ms 2.00 ms, goal at most 1.5 ms: NOT met",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
}
