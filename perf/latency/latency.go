// Package latency is `go run ./perf -latency`: where one request's time
// goes, at one keep-alive client with the batch window at 0 (issue 29's
// conditions). Each request is a unique 500x375 JPEG to /predict; the
// report gives the medians of the client's latency and of each field of
// the answer's timings, and two derived figures:
//
//   - unaccounted: the client's latency less the answer's server_ms and
//     other_ms, what no named part of the answer explains (HTTP parsing and
//     writing, the loopback, the answer's encoding, the proxy's own
//     routing and hand-offs);
//   - overhead: the client's latency less inference_ms, all that is not
//     the model.
package latency

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// Config is one `go run ./perf -latency` run.
type Config struct {
	Requests int    // measured requests, after Warmup more
	Warmup   int    // unmeasured requests first
	Model    string // ONNX model; "": what `runtime fetch-model` gives
}

// fields are the answer's timings, in the order the report lists them.
var fields = []string{"read_ms", "preprocess_ms", "queue_ms", "transfer_ms", "inference_ms", "other_ms", "server_ms"}

// Run starts a stack, sends the requests one after another on one
// keep-alive connection, and prints the report.
func Run(ctx context.Context, c Config) error {
	b, err := harness.Build(c.Model)
	if err != nil {
		return err
	}
	defer b.Close()
	s, err := b.Stack(harness.StackConfig{MaxBatch: 8, CacheEntries: 10000})
	if err != nil {
		return err
	}
	defer s.Stop()
	pool, _, err := harness.SizedPool(filepath.Join(b.Root, "proxy/testdata/grace_hopper.jpg"), 500, 375, 16, 1)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	samples := map[string][]float64{}
	for i := range c.Warmup + c.Requests {
		body, contentType := pool[i%len(pool)].Body(true)
		t := time.Now()
		tm, err := predict(ctx, client, s.URL+"/predict", body, contentType)
		took := float64(time.Since(t).Microseconds()) / 1000
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		if i < c.Warmup {
			continue
		}
		samples["latency"] = append(samples["latency"], took)
		for _, f := range fields {
			samples[f] = append(samples[f], tm[f])
		}
		samples["unaccounted"] = append(samples["unaccounted"], took-tm["server_ms"]+tm["other_ms"])
		samples["overhead"] = append(samples["overhead"], took-tm["inference_ms"])
	}
	fmt.Print(Report(c, samples))
	return nil
}

// predict sends one image and returns its answer's timings.
func predict(ctx context.Context, client *http.Client, url string, body []byte, contentType string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var out struct {
		Cached  bool               `json:"cached"`
		Timings map[string]float64 `json:"timings"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Cached || out.Timings["server_ms"] == 0 {
		return nil, fmt.Errorf("unexpected answer (cached, or no timings): %.300s", b)
	}
	return out.Timings, nil
}

// Report is the markdown table of medians and spreads (10th to 90th
// percentile), with issue 29's goals.
func Report(c Config, samples map[string][]float64) string {
	q := func(name string) []float64 {
		return harness.QuantilesOf(slices.Clone(samples[name]), []float64{0.1, 0.5, 0.9})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nWhere /predict's time goes on %s: one keep-alive client, unique 500x375 JPEGs, batch window 0; %d requests after %d unmeasured.\n\n",
		harness.Machine(), c.Requests, c.Warmup)
	b.WriteString("| part | median ms | p10-p90 ms |\n|---|---|---|\n")
	for _, name := range append(append([]string{"latency"}, fields...), "unaccounted", "overhead") {
		v := q(name)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f-%.2f |\n", name, v[1], v[0], v[2])
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	un, over := q("unaccounted")[1], q("overhead")[1]
	fmt.Fprintf(&b, "\n- unaccounted (latency - server_ms + other_ms) %.2f ms, goal at most 0.5 ms: %s\n", un, verdict(un <= 0.5))
	fmt.Fprintf(&b, "- latency - inference_ms %.2f ms, goal at most 1.5 ms: %s\n", over, verdict(over <= 1.5))
	return b.String()
}
