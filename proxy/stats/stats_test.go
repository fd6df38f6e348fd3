package stats

import (
	"bytes"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// The autoscaling series are exported under their documented names, in
// seconds, from the gauges' functions; inference_queue_depth stays.
func TestAutoscalingSeries(t *testing.T) {
	set := metrics.NewSet()
	New(set, Gauges{
		QueueDepth:    func() float64 { return 7 },
		RuntimeDemand: func() float64 { return 12.5 },
		RuntimeBusy:   func() float64 { return 10.25 },
		ExpectedWait:  func() float64 { return 0.75 },
	})
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, tc := range []struct{ name, want string }{
		{"inference_queue_depth", "7"},
		{"inference_runtime_demand_seconds_total", "12.5"},
		{"inference_runtime_busy_seconds_total", "10.25"},
		{"inference_expected_wait_seconds", "0.75"},
	} {
		if line := tc.name + " " + tc.want; !strings.Contains("\n"+b.String(), "\n"+line+"\n") {
			t.Errorf("no line %q in\n%s", line, b.String())
		}
	}
}
