// Package sweep is the batch-size and batch-window sweep (`make perf`,
// `go run ./perf`): it measures batchgate (or any HTTP image classifier
// that takes a multipart "file" upload) over HTTP, as clients use it.
//
// For each setting it starts the runtime and the proxy, measures the
// saturation throughput with closed-loop clients, then sends open-loop
// Poisson arrivals at fractions of the raw runtime's capacity, with latency
// counted from each request's scheduled send time. The raw ONNX Runtime
// throughput, measured in the same run, is the reference: every report
// shows the ratio stack / raw. Results go to a timestamped folder as
// report.md, results.csv, results.json and PNG plots; with Variants, once
// per model variant, then variants.md (variants.go).
package sweep

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// Config is one sweep (`go run ./perf`'s flags).
type Config struct {
	BatchSizes []int           // MAX_BATCH_SIZE values
	Windows    []time.Duration // BATCH_WINDOW values
	Loads      []float64       // offered loads, as fractions of the raw runtime's capacity
	Duration   time.Duration   // of each measurement
	Target     string          // measure this URL instead of starting batchgate
	Model      string          // ONNX model; "": what `runtime fetch-model` gives
	OutDir     string          // parent of the timestamped results folder
	Images     int             // distinct test images
	Dedup      bool            // also run the Zipf dedup scenario (cache on versus off)
	ImageSizes []string        // the image-size axis (imagesizes.go)
	Variants   []string        // the model-variant axis (variants.go)
}

// point is one measurement.
type point struct {
	Setting     string             `json:"setting"`
	BatchSize   int                `json:"batch_size"`
	Window      string             `json:"window"`
	Mode        string             `json:"mode"` // "closed" (saturation), "open", "dedup-cache", "dedup-nocache"
	Load        float64            `json:"load"` // fraction of raw capacity (open loop)
	OfferedRPS  float64            `json:"offered_rps"`
	Requests    int                `json:"requests"`
	Throughput  float64            `json:"throughput_rps"`
	P50ms       float64            `json:"p50_ms"`
	P90ms       float64            `json:"p90_ms"`
	P99ms       float64            `json:"p99_ms"`
	MaxMs       float64            `json:"max_ms"`
	Statuses    map[string]int     `json:"statuses"`
	MeanBatch   float64            `json:"mean_batch_size"`
	BatchHist   map[string]float64 `json:"batch_size_buckets"` // le -> batches
	QueueWaitMs float64            `json:"mean_queue_wait_ms"`
	ExecMs      float64            `json:"mean_batch_exec_ms"`
	ProxyCPUms  float64            `json:"proxy_cpu_ms_per_image"`
	RtCPUms     float64            `json:"runtime_cpu_ms_per_image"`
	RawRPS      float64            `json:"raw_images_per_s"`
	Ratio       float64            `json:"stack_over_raw"`
	HitRatio    float64            `json:"cache_hit_ratio"`
	// OverheadP50ms is the median of latency minus the inference time the
	// answer reports: what the proxy and HTTP add (image-size axis).
	OverheadP50ms float64 `json:"overhead_p50_ms,omitempty"`
	InferP50ms    float64 `json:"inference_p50_ms,omitempty"`
}

// report is everything one run produces.
type report struct {
	Started    time.Time       `json:"started"`
	Machine    string          `json:"machine"`
	Target     string          `json:"target"`
	Model      string          `json:"model"`
	Raw        map[int]float64 `json:"raw_images_per_s"` // batch size -> images/s
	AvgImageKB int             `json:"avg_image_kb"`
	Points     []point         `json:"points"`
}

// Run runs the sweep and writes its results folder under OutDir; with
// Variants, once per model variant (runVariants).
func Run(ctx context.Context, o Config) error {
	if len(o.Variants) > 0 {
		return runVariants(ctx, o)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102-150405")
	dir := filepath.Join(o.OutDir, stamp)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pool, avg, err := harness.ImagePool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), o.Images, 1)
	if err != nil {
		return err
	}
	rep := &report{Started: time.Now().UTC(), Machine: harness.Machine(), Target: o.Target, AvgImageKB: avg / 1024, Raw: map[int]float64{}}
	bar := harness.NewProgress(os.Stderr)
	defer bar.Done()

	if o.Target != "" {
		rep.Points, err = measureTarget(ctx, o, pool, bar)
		if err != nil {
			return err
		}
		return writeReport(dir, rep)
	}

	bins, err := harness.BuildBinaries(root, dir+"/bin")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir + "/bin")
	ortLib := harness.ORTLibrary(root)
	if o.Model == "" {
		if o.Model, err = bins.DefaultModel(root); err != nil {
			return err
		}
	}
	rep.Model = filepath.Base(o.Model)
	cache := filepath.Join(root, ".deps/ort-cache")

	// The reference: raw ONNX Runtime, same model, one thread, no HTTP.
	bar.Phase("raw ONNX Runtime reference")
	if rep.Raw, err = rawReference(bins, o, ortLib, cache); err != nil {
		return err
	}
	capacity := rep.Raw[o.BatchSizes[0]]

	total := len(o.BatchSizes)*len(o.Windows)*(1+len(o.Loads)) + 2*len(o.ImageSizes)
	if o.Dedup {
		total += 2
	}
	bar.SetTotal(total)
	for _, bs := range o.BatchSizes {
		for _, w := range o.Windows {
			cfg := harness.StackConfig{Model: o.Model, ORTLibrary: ortLib, ORTCache: cache, MaxBatch: bs, Window: w}
			pts, err := measureSetting(ctx, bins, cfg, o, pool, capacity, bar)
			if err != nil {
				return err
			}
			for i := range pts {
				pts[i].RawRPS = rep.Raw[bs]
				if pts[i].Mode == "closed" && rep.Raw[bs] > 0 {
					pts[i].Ratio = pts[i].Throughput / rep.Raw[bs]
				}
			}
			rep.Points = append(rep.Points, pts...)
		}
	}
	if len(o.ImageSizes) > 0 {
		// The proxy's defaults: batch 8 (or the sweep's largest below
		// it), no batch window.
		bs := o.BatchSizes[0]
		for _, b := range o.BatchSizes {
			if b <= 8 {
				bs = max(bs, b)
			}
		}
		pts, err := measureImageSizes(ctx, bins, harness.StackConfig{Model: o.Model, ORTLibrary: ortLib, ORTCache: cache, MaxBatch: bs},
			o, rep.Raw[1], bar)
		if err != nil {
			return err
		}
		rep.Points = append(rep.Points, pts...)
	}
	if o.Dedup {
		pts, err := measureDedup(ctx, bins, harness.StackConfig{Model: o.Model, ORTLibrary: ortLib, ORTCache: cache,
			MaxBatch: o.BatchSizes[len(o.BatchSizes)-1]}, o, bar)
		if err != nil {
			return err
		}
		rep.Points = append(rep.Points, pts...)
	}
	return writeReport(dir, rep)
}

// rawReference is `runtime bench`'s images/s per batch size: raw ONNX
// Runtime, same model, one thread, no HTTP.
func rawReference(bins harness.Binaries, o Config, ortLib, cache string) (map[int]float64, error) {
	sizes := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(o.BatchSizes)), ","), "[]")
	raw, err := exec.Command(bins.Runtime, "bench", "-model", o.Model, "-ort-library", ortLib, "-ort-cache-dir", cache,
		"-batch-sizes", sizes, "-min-time", (o.Duration / 2).String()).Output()
	if err != nil {
		return nil, fmt.Errorf("raw benchmark failed: %w", err)
	}
	rates := map[int]float64{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 6 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				rates[n], _ = strconv.ParseFloat(f[5], 64)
			}
		}
	}
	if rates[o.BatchSizes[0]] <= 0 {
		return nil, fmt.Errorf("raw benchmark gave no throughput:\n%s", raw)
	}
	return rates, nil
}

// measureSetting starts one stack and measures saturation and each load.
func measureSetting(ctx context.Context, bins harness.Binaries, cfg harness.StackConfig, o Config, pool []harness.Upload, capacity float64, bar *harness.Progress) ([]point, error) {
	setting := fmt.Sprintf("batch=%d window=%v", cfg.MaxBatch, cfg.Window)
	bar.Phase("starting " + setting)
	s, err := harness.StartStack(bins, cfg)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	c := harness.NewClient(s.URL + "/predict")
	base := point{Setting: setting, BatchSize: cfg.MaxBatch, Window: cfg.Window.String()}
	var pts []point

	// Saturation: enough closed-loop clients to fill two batches.
	bar.Phase(setting + " saturation")
	p, err := measure(s, base, func(n *int, elapsed *time.Duration) []harness.Result {
		res, total, took := harness.ClosedLoop(ctx, c, 2*cfg.MaxBatch+4, harness.Warmup(o.Duration), o.Duration, func(r *rand.Rand) harness.Upload { return pool[r.IntN(len(pool))] }, true, bar.Tick)
		*n = total
		*elapsed = took
		return res
	})
	if err != nil {
		return nil, err
	}
	p.Mode = "closed"
	pts = append(pts, p)
	bar.Step()

	rng := rand.New(rand.NewPCG(uint64(cfg.MaxBatch), uint64(cfg.Window)))
	for _, load := range o.Loads {
		bar.Phase(fmt.Sprintf("%s load %.2f", setting, load))
		rate := load * capacity
		sched := harness.PoissonSchedule(rng, rate, o.Duration)
		p, err := measure(s, base, func(n *int, elapsed *time.Duration) []harness.Result {
			*n = len(sched)
			start := time.Now()
			res := harness.OpenLoop(ctx, c, sched, func(i int) harness.Upload { return pool[i%len(pool)] }, true, 4096, bar.Tick)
			*elapsed = time.Since(start)
			return res
		})
		if err != nil {
			return nil, err
		}
		// Offered: what this Poisson sample actually sent, not the rate
		// parameter (a few seconds of arrivals vary by tens of percent).
		p.Mode, p.Load, p.OfferedRPS = "open", load, float64(len(sched))/o.Duration.Seconds()
		pts = append(pts, p)
		bar.Step()
	}
	return pts, nil
}

// measure runs load against s and fills a point from the results, the
// metrics and the CPU time it cost.
// load returns the measured results and reports the number of requests
// answered in all (warm-up included) and the time the results cover.
func measure(s *harness.Stack, base point, load func(n *int, elapsed *time.Duration) []harness.Result) (point, error) {
	before, err := harness.Scrape(s.Metrics)
	if err != nil {
		return base, err
	}
	pcpu, rcpu := harness.CPUSeconds(s.Proxy().Pid()), harness.CPUSeconds(s.Runtime().Pid())
	var n int
	var took time.Duration
	res := load(&n, &took)
	after, err := harness.Scrape(s.Metrics)
	if err != nil {
		return base, err
	}
	d := harness.Delta(before, after)
	p := fill(base, res, took)
	// CPU per image: all the CPU spent, warm-up included, over every
	// request answered, warm-up included (n).
	if n > 0 {
		p.ProxyCPUms = 1000 * (harness.CPUSeconds(s.Proxy().Pid()) - pcpu) / float64(n)
		p.RtCPUms = 1000 * (harness.CPUSeconds(s.Runtime().Pid()) - rcpu) / float64(n)
	}
	if cnt := d["inference_batch_size_count"]; cnt > 0 {
		p.MeanBatch = d["inference_batch_size_sum"] / cnt
		p.QueueWaitMs = 1000 * d["inference_queue_wait_seconds_sum"] / max(d["inference_queue_wait_seconds_count"], 1)
		p.ExecMs = 1000 * d["inference_runtime_seconds_sum"] / max(d["inference_runtime_seconds_count"], 1)
		p.BatchHist = map[string]float64{}
		prev := 0.0
		for _, le := range []string{"1", "2", "4", "8", "16", "32", "64", "+Inf"} {
			v := d[`inference_batch_size_bucket{le="`+le+`"}`]
			p.BatchHist[le] = v - prev // per-bucket, not cumulative
			prev = v
		}
	}
	return p, nil
}

// fill computes throughput, latency percentiles and statuses.
func fill(p point, res []harness.Result, took time.Duration) point {
	p.Requests = len(res)
	p.Statuses = map[string]int{}
	var ok []time.Duration
	hits := 0
	for _, r := range res {
		p.Statuses[strconv.Itoa(r.Status)]++
		if r.Status == 200 {
			ok = append(ok, r.Latency)
			if r.Cached {
				hits++
			}
		}
	}
	p.Throughput = float64(len(ok)) / took.Seconds()
	s := harness.Summarize(ok)
	p.P50ms, p.P90ms, p.P99ms, p.MaxMs = harness.Millis(s.P50), harness.Millis(s.P90), harness.Millis(s.P99), harness.Millis(s.Max)
	if len(ok) > 0 {
		p.HitRatio = float64(hits) / float64(len(ok))
	}
	return p
}

// measureDedup sends Zipf-distributed requests over a pool of images, with
// the cache on and off.
func measureDedup(ctx context.Context, bins harness.Binaries, cfg harness.StackConfig, o Config, bar *harness.Progress) ([]point, error) {
	root, _ := harness.RepoRoot()
	pool, _, err := harness.ImagePool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), 200, 2)
	if err != nil {
		return nil, err
	}
	var pts []point
	for _, entries := range []int{10000, 0} {
		mode := map[bool]string{true: "dedup-cache", false: "dedup-nocache"}[entries > 0]
		bar.Phase(mode)
		cfg.CacheEntries = entries
		s, err := harness.StartStack(bins, cfg)
		if err != nil {
			return nil, err
		}
		c := harness.NewClient(s.URL + "/predict")
		base := point{Setting: fmt.Sprintf("batch=%d zipf(1.1) over %d images", cfg.MaxBatch, len(pool)), BatchSize: cfg.MaxBatch, Window: "0s"}
		p, err := measure(s, base, func(n *int, elapsed *time.Duration) []harness.Result {
			res, total, took := harness.ClosedLoop(ctx, c, 2*cfg.MaxBatch+4, harness.Warmup(o.Duration), o.Duration, func(r *rand.Rand) harness.Upload {
				return pool[harness.NewZipf(r, 1.1, len(pool))()]
			}, false, bar.Tick)
			*n = total
			*elapsed = took
			return res
		})
		s.Stop()
		if err != nil {
			return nil, err
		}
		p.Mode = mode
		pts = append(pts, p)
		bar.Step()
	}
	return pts, nil
}

// measureTarget measures an external classifier: saturation, then the
// loads as fractions of that saturation throughput.
func measureTarget(ctx context.Context, o Config, pool []harness.Upload, bar *harness.Progress) ([]point, error) {
	c := harness.NewClient(o.Target)
	bar.SetTotal(1 + len(o.Loads))
	base := point{Setting: "target " + o.Target}
	bar.Phase("saturation")
	res, _, took := harness.ClosedLoop(ctx, c, 8, harness.Warmup(o.Duration), o.Duration, func(r *rand.Rand) harness.Upload { return pool[r.IntN(len(pool))] }, true, bar.Tick)
	sat := fill(base, res, took)
	sat.Mode = "closed"
	bar.Step()
	if sat.Throughput == 0 {
		return nil, fmt.Errorf("no successful request to %s: statuses %v", o.Target, sat.Statuses)
	}
	pts := []point{sat}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, load := range o.Loads {
		bar.Phase(fmt.Sprintf("load %.2f", load))
		sched := harness.PoissonSchedule(rng, load*sat.Throughput, o.Duration)
		start := time.Now()
		r := harness.OpenLoop(ctx, c, sched, func(i int) harness.Upload { return pool[i%len(pool)] }, true, 4096, bar.Tick)
		p := fill(base, r, time.Since(start))
		p.Mode, p.Load, p.OfferedRPS = "open", load, float64(len(sched))/o.Duration.Seconds()
		pts = append(pts, p)
		bar.Step()
	}
	return pts, nil
}
