// Package tracing is `go run ./perf -tracing`: the throughput cost of
// tracing, measured with a real collector (Jaeger, built by `make test`)
// receiving OTLP/HTTP on loopback. Each round starts the stack once per
// setting (tracing off, sampled at -ratios) and measures, in a closed loop:
//
//   - cache-hit throughput: every client sends the same image, so the
//     proxy answers from its cache and tracing's cost weighs most;
//   - saturation throughput: unique images, bound by the runtime.
//
// Settings are interleaved within each round, so drift on a shared machine
// hits them alike; the medians over rounds, and each setting's ratio to
// tracing off, are printed as a markdown table.
package tracing

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/internal/jaegertest"
	"github.com/batchgate/batchgate/perf/harness"
)

// Config is one `go run ./perf -tracing` run.
type Config struct {
	Rounds             int           // each measures every setting once
	Duration           time.Duration // each cache-hit measurement
	SaturationDuration time.Duration // each saturation measurement
	Clients            int           // closed-loop clients for the cache-hit measurement
	Ratios             []float64     // sampling ratios compared with tracing off
	Model              string        // ONNX model; "": what `runtime fetch-model` gives
}

// Run measures tracing off and at each ratio, interleaved over the rounds,
// and prints the table.
func Run(ctx context.Context, c Config) error {
	settings := append([]float64{-1}, c.Ratios...) // -1: off
	return runTracing(ctx, settings, c.Rounds, c.Duration, c.SaturationDuration, c.Clients, c.Model)
}

func settingName(r float64) string {
	if r < 0 {
		return "off"
	}
	return fmt.Sprintf("ratio %g", r)
}

func runTracing(ctx context.Context, settings []float64, rounds int, d, sd time.Duration, clients int, model string) error {
	b, err := harness.Build(model)
	if err != nil {
		return err
	}
	defer b.Close()
	dir, err := os.MkdirTemp("", "batchgate-perf-tracing-") // Jaeger's storage
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := jaegertest.Binary(b.Root)
	if err != nil {
		return err
	}
	j, stopJaeger, err := jaegertest.Run(bin, dir)
	if err != nil {
		return fmt.Errorf("cannot start jaeger: %w", err)
	}
	defer stopJaeger()
	pool, _, err := harness.ImagePool(filepath.Join(b.Root, "proxy/testdata/grace_hopper.jpg"), 16, 1)
	if err != nil {
		return err
	}
	const maxBatch = 8
	hits := map[float64][]float64{}
	sat := map[float64][]float64{}
	for round := 1; round <= rounds; round++ {
		for _, r := range settings {
			cfg := harness.StackConfig{MaxBatch: maxBatch, Window: 2 * time.Millisecond, CacheEntries: 10000}
			if r >= 0 {
				cfg.Env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPEndpoint(),
					"OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=" + strconv.FormatFloat(r, 'g', -1, 64)}
			}
			s, err := b.Stack(cfg)
			if err != nil {
				return err
			}
			c := harness.NewClient(s.URL + "/predict")
			same := pool[0]
			res, _, took := harness.ClosedLoop(ctx, c, clients, time.Second, d, func(*rand.Rand) harness.Upload { return same }, false, func() {})
			h := okPerSecond(res, took)
			res, _, took = harness.ClosedLoop(ctx, c, 2*maxBatch+4, 2*time.Second, sd,
				func(rng *rand.Rand) harness.Upload { return pool[rng.IntN(len(pool))] }, true, func() {})
			u := okPerSecond(res, took)
			s.Stop()
			hits[r], sat[r] = append(hits[r], h), append(sat[r], u)
			fmt.Fprintf(os.Stderr, "perf -tracing: round %d, %s: cache hits %.0f/s, saturation %.2f images/s\n", round, settingName(r), h, u)
		}
	}
	fmt.Print(tracingTable(settings, hits, sat, rounds, d, sd, clients))
	return nil
}

// okPerSecond is the rate of 200 answers.
func okPerSecond(res []harness.Result, took time.Duration) float64 {
	n := 0
	for _, r := range res {
		if r.Status == 200 {
			n++
		}
	}
	return float64(n) / took.Seconds()
}

// median is the interpolated median (harness.QuantilesOf).
func median(xs []float64) float64 { return harness.QuantilesOf(xs, []float64{0.5})[0] }

// tracingTable is the markdown report: medians and ratios to tracing off.
func tracingTable(settings []float64, hits, sat map[float64][]float64, rounds int, d, sd time.Duration, clients int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nTracing overhead on %s: medians of %d rounds; cache hits: %d clients for %v; saturation: unique images for %v.\n\n",
		harness.Machine(), rounds, clients, d, sd)
	b.WriteString("| tracing | cache hits/s | vs off | saturation images/s | vs off |\n|---|---|---|---|---|\n")
	h0, s0 := median(hits[-1]), median(sat[-1])
	for _, r := range settings {
		h, s := median(hits[r]), median(sat[r])
		fmt.Fprintf(&b, "| %s | %.0f | %.3f | %.2f | %.3f |\n", settingName(r), h, h/h0, s, s/s0)
	}
	return b.String()
}
