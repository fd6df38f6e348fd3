package protocols

import (
	"strings"
	"testing"
)

// TestReport: the report says whether each goal is met, from the medians.
func TestReport(t *testing.T) {
	c := Config{Rounds: 3, Requests: 10, Clients: 8, K: 5}
	for _, tc := range []struct {
		name                                 string
		httpP50, grpcP50, httpRate, grpcRate []float64
		wantLatency, wantThroughput          string
	}{
		{"both met", []float64{38, 39, 40}, []float64{38.5, 39.5, 40.5}, []float64{27, 28, 29}, []float64{28, 29, 30},
			"+0.50 ms (goal: within 1 ms): met", "1.036 (goal: at least 1, within the runs' spread): met"},
		{"latency missed", []float64{38, 39, 40}, []float64{40, 41, 42}, []float64{27, 28, 29}, []float64{28, 28, 28},
			"+2.00 ms (goal: within 1 ms): NOT met", "1.000 (goal: at least 1, within the runs' spread): met"},
		{"throughput missed", []float64{38, 39, 40}, []float64{38, 39, 40}, []float64{27, 28, 29}, []float64{20, 21, 22},
			"+0.00 ms (goal: within 1 ms): met", "0.750 (goal: at least 1, within the runs' spread): NOT met"},
	} {
		got := Report(c, tc.httpP50, tc.grpcP50, tc.httpRate, tc.grpcRate)
		for _, want := range []string{tc.wantLatency, tc.wantThroughput} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: report lacks %q:\n%s", tc.name, want, got)
			}
		}
	}
}
