package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/internal/jaegertest"
)

// tracingMain is `perf -tracing`: the throughput cost of tracing, measured
// with a real collector (Jaeger, built by `make test`) receiving OTLP/HTTP
// on loopback. Each round starts the stack once per setting (tracing off,
// sampled at -ratios) and measures, in a closed loop:
//
//   - cache-hit throughput: every client sends the same image, so the
//     proxy answers from its cache and tracing's cost weighs most;
//   - saturation throughput: unique images, bound by the runtime.
//
// Settings are interleaved within each round, so drift on a shared machine
// hits them alike; the medians over rounds, and each setting's ratio to
// tracing off, are printed as a markdown table.
func tracingMain(args []string) int {
	fs := flag.NewFlagSet("perf -tracing", flag.ContinueOnError)
	rounds := fs.Int("rounds", 3, "rounds; each measures every setting once")
	d := fs.Duration("duration", 6*time.Second, "length of each cache-hit measurement")
	sd := fs.Duration("saturation-duration", 20*time.Second, "length of each saturation measurement (about 10 images/s: long enough to count)")
	clients := fs.Int("clients", 16, "closed-loop clients for the cache-hit measurement")
	ratios := fs.String("ratios", "0.01,1", "sampling ratios to compare with tracing off")
	model := fs.String("model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *rounds < 1 || *d <= 0 || *sd <= 0 || *clients < 1 {
		fmt.Fprintln(os.Stderr, "perf -tracing: -rounds, -clients, -duration and -saturation-duration must be positive")
		return 2
	}
	var settings []float64 // -1: off
	settings = append(settings, -1)
	for s := range strings.SplitSeq(*ratios, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || r < 0 || r > 1 {
			fmt.Fprintf(os.Stderr, "perf -tracing: -ratios: bad value %q\n", s)
			return 2
		}
		settings = append(settings, r)
	}
	if err := runTracing(context.Background(), settings, *rounds, *d, *sd, *clients, *model); err != nil {
		fmt.Fprintln(os.Stderr, "perf -tracing:", err)
		return 1
	}
	return 0
}

func settingName(r float64) string {
	if r < 0 {
		return "off"
	}
	return fmt.Sprintf("ratio %g", r)
}

func runTracing(ctx context.Context, settings []float64, rounds int, d, sd time.Duration, clients int, model string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "batchgate-perf-tracing-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := buildBinaries(root, dir)
	if err != nil {
		return err
	}
	bin, err := jaegertest.Binary(root)
	if err != nil {
		return err
	}
	j, stopJaeger, err := jaegertest.Run(bin, dir)
	if err != nil {
		return fmt.Errorf("cannot start jaeger: %w", err)
	}
	defer stopJaeger()
	ortLib := os.Getenv("ORT_LIBRARY")
	if ortLib == "" {
		ortLib = filepath.Join(root, ".deps/onnxruntime/libonnxruntime.so.1")
	}
	if model == "" {
		out, err := exec.Command(bins.runtime, "fetch-model", "-dir", filepath.Join(root, ".deps/models")).Output()
		if err != nil {
			return fmt.Errorf("cannot get the model: %w", err)
		}
		model = strings.TrimSpace(string(out))
	}
	pool, _, err := imagePool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), 16, 1)
	if err != nil {
		return err
	}
	const maxBatch = 8
	hits := map[float64][]float64{}
	sat := map[float64][]float64{}
	for round := 1; round <= rounds; round++ {
		for _, r := range settings {
			cfg := stackConfig{model: model, ortLibrary: ortLib, ortCache: filepath.Join(root, ".deps/ort-cache"),
				maxBatch: maxBatch, window: 2 * time.Millisecond, cacheEntries: 10000}
			if r >= 0 {
				cfg.env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPEndpoint(),
					"OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=" + strconv.FormatFloat(r, 'g', -1, 64)}
			}
			s, err := startStack(bins, cfg)
			if err != nil {
				return err
			}
			c := newClient(s.url + "/predict")
			same := pool[0]
			res, _, took := closedLoop(ctx, c, clients, time.Second, d, func(*rand.Rand) upload { return same }, false, func() {})
			h := okPerSecond(res, took)
			res, _, took = closedLoop(ctx, c, 2*maxBatch+4, 2*time.Second, sd,
				func(rng *rand.Rand) upload { return pool[rng.IntN(len(pool))] }, true, func() {})
			u := okPerSecond(res, took)
			s.stop()
			hits[r], sat[r] = append(hits[r], h), append(sat[r], u)
			fmt.Fprintf(os.Stderr, "perf -tracing: round %d, %s: cache hits %.0f/s, saturation %.2f images/s\n", round, settingName(r), h, u)
		}
	}
	fmt.Print(tracingTable(settings, hits, sat, rounds, d, sd, clients))
	return nil
}

// okPerSecond is the rate of 200 answers.
func okPerSecond(res []result, took time.Duration) float64 {
	n := 0
	for _, r := range res {
		if r.status == 200 {
			n++
		}
	}
	return float64(n) / took.Seconds()
}

// median is the interpolated median (quantilesOf, autoscale_dist.go).
func median(xs []float64) float64 { return quantilesOf(xs, []float64{0.5})[0] }

// tracingTable is the markdown report: medians and ratios to tracing off.
func tracingTable(settings []float64, hits, sat map[float64][]float64, rounds int, d, sd time.Duration, clients int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nTracing overhead on %s: medians of %d rounds; cache hits: %d clients for %v; saturation: unique images for %v.\n\n",
		machine(), rounds, clients, d, sd)
	b.WriteString("| tracing | cache hits/s | vs off | saturation images/s | vs off |\n|---|---|---|---|---|\n")
	h0, s0 := median(hits[-1]), median(sat[-1])
	for _, r := range settings {
		h, s := median(hits[r]), median(sat[r])
		fmt.Fprintf(&b, "| %s | %.0f | %.3f | %.2f | %.3f |\n", settingName(r), h, h/h0, s, s/s0)
	}
	return b.String()
}
