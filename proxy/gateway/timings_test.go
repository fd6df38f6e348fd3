package gateway

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestPredictTimingsAddUp: a /predict answer's timings account for the
// whole of its server time: read, preprocess, queue, transfer, inference
// and other add up to server_ms, none is negative, the runtime call's
// transfer is measured, and server_ms is no more than the request's
// latency in the proxy's log (which adds only the answer's encoding). A
// repeated image, answered from the cache, accounts for its time too.
func TestPredictTimingsAddUp(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	parts := []string{"read_ms", "preprocess_ms", "queue_ms", "transfer_ms", "inference_ms", "other_ms"}
	for i := range 6 {
		img := testenv.UniquePNG(9400 + i%5) // the last one repeats the first: a cache hit
		r := do(t, rawReq(tp.url+"/predict", "image/png", img))
		if r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.raw)
		}
		tm, _ := r.body["timings"].(map[string]any)
		server, _ := tm["server_ms"].(float64)
		sum := 0.0
		for _, k := range parts {
			v, ok := tm[k].(float64)
			cachedPart := k == "read_ms" || k == "other_ms"
			if !ok && (i < 5 || cachedPart) {
				t.Errorf("request %d: timings %v lack %s", i, tm, k)
			}
			if v < 0 {
				t.Errorf("request %d: %s = %v < 0", i, k, v)
			}
			sum += v
		}
		// Each part is rounded down to the microsecond.
		if server <= 0 || math.Abs(sum-server) > 0.01 {
			t.Errorf("request %d: parts add up to %.3f ms, server_ms %.3f: %v", i, sum, server, tm)
		}
		if i < 5 && tm["transfer_ms"].(float64) <= 0 {
			t.Errorf("request %d: transfer_ms %v, want the runtime call's time beyond the model's", i, tm["transfer_ms"])
		}
		if cached := r.body["cached"] == true; cached != (i == 5) {
			t.Errorf("request %d: cached %v", i, cached)
		}
		rid := r.header.Get("X-Request-Id")
		var logged float64
		for line := range strings.SplitSeq(tp.log.String(), "\n") {
			var l struct {
				RequestID string  `json:"request_id"`
				Latency   float64 `json:"latency_ms"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.RequestID == rid {
				logged = l.Latency
			}
		}
		if logged == 0 || server > logged {
			t.Errorf("request %d: server_ms %.3f, logged latency %.3f: want at most the logged latency", i, server, logged)
		}
	}
}
