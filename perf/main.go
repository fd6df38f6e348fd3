// Command perf measures batchgate (or any HTTP image classifier that takes a
// multipart "file" upload) over HTTP, as clients use it, and compares
// batch sizes and batch windows.
//
// For each setting it starts the runtime and the proxy, measures the
// saturation throughput with closed-loop clients, then sends open-loop
// Poisson arrivals at fractions of the raw runtime's capacity, with latency
// counted from each request's scheduled send time. The raw ONNX Runtime
// throughput, measured in the same run, is the reference: every report
// shows the ratio stack / raw. Results go to a timestamped folder as
// report.md, results.csv, results.json and PNG plots.
//
//	go run ./perf -quick          # the `make perf` sweep with the image-size axis, about 6 minutes
//	go run ./perf                 # the whole grid (`make perf-full`)
//	go run ./perf -target http://host:9999/predict   # any classifier
//	go run ./perf -autoscale-sim  # autoscaling ramp simulation (autoscale.go); -autoscale-sim -h
//	go run ./perf -adversarial    # memory under hostile clients (adversarial.go)
//	go run ./perf -chaos          # faults under load (chaos.go); -chaos -short: a quick one
//	go run ./perf -preprocess     # preprocessing against PIL: speed and parity (preprocess.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// options are the parsed flags.
type options struct {
	batchSizes []int
	windows    []time.Duration
	loads      []float64
	duration   time.Duration
	target     string
	model      string
	outDir     string
	images     int
	dedup      bool
	imageSizes []string // the image-size axis (imagesizes.go)
	variants   []string // the model-variant axis (variants.go)
}

func main() {
	// Modes other than the sweep, chosen by the first flag; each has its
	// own flags (-<mode> -h).
	modes := map[string]func([]string) int{
		"autoscale-sim": autoscaleMain, "adversarial": adversarialMain, "chaos": chaosMain,
		"preprocess": preprocessMain, "tracing": tracingMain,
	}
	if len(os.Args) > 1 {
		if mode := modes[strings.TrimLeft(os.Args[1], "-")]; mode != nil {
			os.Exit(mode(os.Args[2:]))
		}
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		os.Exit(2)
	}
	run := run
	if len(opts.variants) > 0 {
		run = runVariants
	}
	if err := run(context.Background(), opts); err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("perf", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "the quick sweep: batch sizes 1,4,8, windows 0,2ms, loads 0.5,0.95,1.2, 4s points")
	bs := fs.String("batch-sizes", "1,2,4,8,16,32", "MAX_BATCH_SIZE values")
	ws := fs.String("windows", "0,2ms,10ms", "BATCH_WINDOW values")
	ls := fs.String("loads", "0.5,0.8,0.95,1.2", "offered loads, as fractions of the raw runtime's capacity")
	d := fs.Duration("duration", 10*time.Second, "length of each measurement")
	target := fs.String("target", "", "measure this URL (multipart \"file\" upload) instead of starting batchgate")
	model := fs.String("model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	out := fs.String("out", "perf/results", "parent folder of the timestamped results folder")
	images := fs.Int("images", 64, "distinct test images")
	dedup := fs.Bool("dedup", true, "also run the Zipf dedup scenario (cache on versus off)")
	variants := fs.String("variants", "", `model-variant axis, e.g. "fp32,int8": the sweep once per variant's model, then variants.md (variants.go)`)
	sizes := fs.String("image-sizes", "small,medium,12mp", "image-size axis: small (500x375), medium (768x576), 12mp (4032x3024); empty: none")
	fs.Bool("autoscale-sim", false, "as the first flag: run the autoscaling simulation and exit (-autoscale-sim -h: its flags)")
	fs.Bool("adversarial", false, "as the first flag: run the adversarial memory soak and exit (-adversarial -h: its flags)")
	fs.Bool("chaos", false, "as the first flag: apply faults under load and exit (-chaos -h: its flags)")
	fs.Bool("preprocess", false, "as the first flag: preprocessing against PIL, speed and parity, and exit (-preprocess -h: its flags)")
	fs.Bool("tracing", false, "as the first flag: tracing's throughput cost against a real Jaeger, and exit (-tracing -h: its flags)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if *quick {
		*bs, *ws, *ls = "1,4,8", "0,2ms", "0.5,0.95,1.2"
		if !flagSet(fs, "duration") {
			*d = 4 * time.Second
		}
	}
	o := options{duration: *d, target: *target, model: *model, outDir: *out, images: *images, dedup: *dedup}
	for s := range strings.SplitSeq(*bs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-batch-sizes: bad value %q", s)
		}
		o.batchSizes = append(o.batchSizes, n)
	}
	for s := range strings.SplitSeq(*ws, ",") {
		s = strings.TrimSpace(s)
		if s == "0" {
			s = "0s"
		}
		w, err := time.ParseDuration(s)
		if err != nil || w < 0 {
			return o, fmt.Errorf("-windows: bad value %q", s)
		}
		o.windows = append(o.windows, w)
	}
	for s := range strings.SplitSeq(*ls, ",") {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || f <= 0 {
			return o, fmt.Errorf("-loads: bad value %q", s)
		}
		o.loads = append(o.loads, f)
	}
	for s := range strings.SplitSeq(*sizes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if _, ok := imageSizes[s]; !ok {
				return o, fmt.Errorf("-image-sizes: bad value %q (small, medium or 12mp)", s)
			}
			o.imageSizes = append(o.imageSizes, s)
		}
	}
	if *variants != "" {
		o.variants = strings.Split(*variants, ",")
	}
	if o.duration <= 0 || o.images < 1 {
		return o, errors.New("-duration and -images must be positive")
	}
	return o, nil
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
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

func run(ctx context.Context, o options) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102-150405")
	dir := filepath.Join(o.outDir, stamp)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pool, avg, err := imagePool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), o.images, 1)
	if err != nil {
		return err
	}
	rep := &report{Started: time.Now().UTC(), Machine: machine(), Target: o.target, AvgImageKB: avg / 1024, Raw: map[int]float64{}}
	bar := newProgress(os.Stderr)
	defer bar.done()

	if o.target != "" {
		rep.Points, err = measureTarget(ctx, o, pool, bar)
		if err != nil {
			return err
		}
		return writeReport(dir, rep)
	}

	bins, err := buildBinaries(root, dir+"/bin")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir + "/bin")
	ortLib := os.Getenv("ORT_LIBRARY")
	if ortLib == "" {
		ortLib = filepath.Join(root, ".deps/onnxruntime/libonnxruntime.so.1")
	}
	if o.model == "" {
		out, err := exec.Command(bins.runtime, "fetch-model", "-dir", filepath.Join(root, ".deps/models")).Output()
		if err != nil {
			return fmt.Errorf("cannot get the model: %w", err)
		}
		o.model = strings.TrimSpace(string(out))
	}
	rep.Model = filepath.Base(o.model)
	cache := filepath.Join(root, ".deps/ort-cache")

	// The reference: raw ONNX Runtime, same model, one thread, no HTTP.
	bar.phase("raw ONNX Runtime reference")
	sizes := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(o.batchSizes)), ","), "[]")
	raw, err := exec.Command(bins.runtime, "bench", "-model", o.model, "-ort-library", ortLib, "-ort-cache-dir", cache,
		"-batch-sizes", sizes, "-min-time", (o.duration / 2).String()).Output()
	if err != nil {
		return fmt.Errorf("raw benchmark failed: %w", err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 6 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				rep.Raw[n], _ = strconv.ParseFloat(f[5], 64)
			}
		}
	}
	capacity := rep.Raw[o.batchSizes[0]]
	if capacity <= 0 {
		return fmt.Errorf("raw benchmark gave no throughput:\n%s", raw)
	}

	total := len(o.batchSizes)*len(o.windows)*(1+len(o.loads)) + 2*len(o.imageSizes)
	if o.dedup {
		total += 2
	}
	bar.setTotal(total)
	for _, bs := range o.batchSizes {
		for _, w := range o.windows {
			cfg := stackConfig{model: o.model, ortLibrary: ortLib, ortCache: cache, maxBatch: bs, window: w}
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
	if len(o.imageSizes) > 0 {
		// The proxy's defaults: batch 8 (or the sweep's largest below
		// it), no batch window.
		bs := o.batchSizes[0]
		for _, b := range o.batchSizes {
			if b <= 8 {
				bs = max(bs, b)
			}
		}
		pts, err := measureImageSizes(ctx, bins, stackConfig{model: o.model, ortLibrary: ortLib, ortCache: cache, maxBatch: bs},
			o, rep.Raw[1], bar)
		if err != nil {
			return err
		}
		rep.Points = append(rep.Points, pts...)
	}
	if o.dedup {
		pts, err := measureDedup(ctx, bins, stackConfig{model: o.model, ortLibrary: ortLib, ortCache: cache,
			maxBatch: o.batchSizes[len(o.batchSizes)-1]}, o, bar)
		if err != nil {
			return err
		}
		rep.Points = append(rep.Points, pts...)
	}
	return writeReport(dir, rep)
}

// measureSetting starts one stack and measures saturation and each load.
func measureSetting(ctx context.Context, bins binaries, cfg stackConfig, o options, pool []upload, capacity float64, bar *progress) ([]point, error) {
	setting := fmt.Sprintf("batch=%d window=%v", cfg.maxBatch, cfg.window)
	bar.phase("starting " + setting)
	s, err := startStack(bins, cfg)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	c := newClient(s.url + "/predict")
	base := point{Setting: setting, BatchSize: cfg.maxBatch, Window: cfg.window.String()}
	var pts []point

	// Saturation: enough closed-loop clients to fill two batches.
	bar.phase(setting + " saturation")
	p, err := measure(s, base, func(n *int, elapsed *time.Duration) []result {
		res, total, took := closedLoop(ctx, c, 2*cfg.maxBatch+4, warmup(o.duration), o.duration, func(r *rand.Rand) upload { return pool[r.IntN(len(pool))] }, true, bar.tick)
		*n = total
		*elapsed = took
		return res
	})
	if err != nil {
		return nil, err
	}
	p.Mode = "closed"
	pts = append(pts, p)
	bar.step()

	rng := rand.New(rand.NewPCG(uint64(cfg.maxBatch), uint64(cfg.window)))
	for _, load := range o.loads {
		bar.phase(fmt.Sprintf("%s load %.2f", setting, load))
		rate := load * capacity
		sched := poissonSchedule(rng, rate, o.duration)
		p, err := measure(s, base, func(n *int, elapsed *time.Duration) []result {
			*n = len(sched)
			start := time.Now()
			res := openLoop(ctx, c, sched, func(i int) upload { return pool[i%len(pool)] }, true, 4096, bar.tick)
			*elapsed = time.Since(start)
			return res
		})
		if err != nil {
			return nil, err
		}
		// Offered: what this Poisson sample actually sent, not the rate
		// parameter (a few seconds of arrivals vary by tens of percent).
		p.Mode, p.Load, p.OfferedRPS = "open", load, float64(len(sched))/o.duration.Seconds()
		pts = append(pts, p)
		bar.step()
	}
	return pts, nil
}

// measure runs load against s and fills a point from the results, the
// metrics and the CPU time it cost.
// load returns the measured results and reports the number of requests
// answered in all (warm-up included) and the time the results cover.
func measure(s *stack, base point, load func(n *int, elapsed *time.Duration) []result) (point, error) {
	before, err := scrape(s.metrics)
	if err != nil {
		return base, err
	}
	pcpu, rcpu := cpuSeconds(s.px.Process.Pid), cpuSeconds(s.rt.Process.Pid)
	var n int
	var took time.Duration
	res := load(&n, &took)
	after, err := scrape(s.metrics)
	if err != nil {
		return base, err
	}
	d := delta(before, after)
	p := fill(base, res, took)
	// CPU per image: all the CPU spent, warm-up included, over every
	// request answered, warm-up included (n).
	if n > 0 {
		p.ProxyCPUms = 1000 * (cpuSeconds(s.px.Process.Pid) - pcpu) / float64(n)
		p.RtCPUms = 1000 * (cpuSeconds(s.rt.Process.Pid) - rcpu) / float64(n)
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
func fill(p point, res []result, took time.Duration) point {
	p.Requests = len(res)
	p.Statuses = map[string]int{}
	var ok []time.Duration
	hits := 0
	for _, r := range res {
		p.Statuses[strconv.Itoa(r.status)]++
		if r.status == 200 {
			ok = append(ok, r.latency)
			if r.cached {
				hits++
			}
		}
	}
	p.Throughput = float64(len(ok)) / took.Seconds()
	s := summarize(ok)
	p.P50ms, p.P90ms, p.P99ms, p.MaxMs = ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max)
	if len(ok) > 0 {
		p.HitRatio = float64(hits) / float64(len(ok))
	}
	return p
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// measureDedup sends Zipf-distributed requests over a pool of images, with
// the cache on and off.
func measureDedup(ctx context.Context, bins binaries, cfg stackConfig, o options, bar *progress) ([]point, error) {
	root, _ := repoRoot()
	pool, _, err := imagePool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), 200, 2)
	if err != nil {
		return nil, err
	}
	var pts []point
	for _, entries := range []int{10000, 0} {
		mode := map[bool]string{true: "dedup-cache", false: "dedup-nocache"}[entries > 0]
		bar.phase(mode)
		cfg.cacheEntries = entries
		s, err := startStack(bins, cfg)
		if err != nil {
			return nil, err
		}
		c := newClient(s.url + "/predict")
		base := point{Setting: fmt.Sprintf("batch=%d zipf(1.1) over %d images", cfg.maxBatch, len(pool)), BatchSize: cfg.maxBatch, Window: "0s"}
		p, err := measure(s, base, func(n *int, elapsed *time.Duration) []result {
			res, total, took := closedLoop(ctx, c, 2*cfg.maxBatch+4, warmup(o.duration), o.duration, func(r *rand.Rand) upload {
				return pool[newZipf(r, 1.1, len(pool))()]
			}, false, bar.tick)
			*n = total
			*elapsed = took
			return res
		})
		s.stop()
		if err != nil {
			return nil, err
		}
		p.Mode = mode
		pts = append(pts, p)
		bar.step()
	}
	return pts, nil
}

// measureTarget measures an external classifier: saturation, then the
// loads as fractions of that saturation throughput.
func measureTarget(ctx context.Context, o options, pool []upload, bar *progress) ([]point, error) {
	c := newClient(o.target)
	bar.setTotal(1 + len(o.loads))
	base := point{Setting: "target " + o.target}
	bar.phase("saturation")
	res, _, took := closedLoop(ctx, c, 8, warmup(o.duration), o.duration, func(r *rand.Rand) upload { return pool[r.IntN(len(pool))] }, true, bar.tick)
	sat := fill(base, res, took)
	sat.Mode = "closed"
	bar.step()
	if sat.Throughput == 0 {
		return nil, fmt.Errorf("no successful request to %s: statuses %v", o.target, sat.Statuses)
	}
	pts := []point{sat}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, load := range o.loads {
		bar.phase(fmt.Sprintf("load %.2f", load))
		sched := poissonSchedule(rng, load*sat.Throughput, o.duration)
		start := time.Now()
		r := openLoop(ctx, c, sched, func(i int) upload { return pool[i%len(pool)] }, true, 4096, bar.tick)
		p := fill(base, r, time.Since(start))
		p.Mode, p.Load, p.OfferedRPS = "open", load, float64(len(sched))/o.duration.Seconds()
		pts = append(pts, p)
		bar.step()
	}
	return pts, nil
}

// warmup is the unmeasured start of a closed-loop run: a quarter of the
// measurement, at most 2 s.
func warmup(d time.Duration) time.Duration { return min(d/4, 2*time.Second) }

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run perf inside the batchgate repository")
		}
		dir = parent
	}
}

// machine describes where the numbers come from.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs", cpu, runtime.NumCPU())
}

// progress draws a progress bar on stderr.
type progress struct {
	w            *os.File
	total, steps atomic.Int64
	requests     atomic.Int64
	label        atomic.Value
	stop         chan struct{}
	finished     chan struct{}
}

func newProgress(w *os.File) *progress {
	p := &progress{w: w, stop: make(chan struct{}), finished: make(chan struct{})}
	p.label.Store("")
	go func() {
		defer close(p.finished)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				p.draw()
				fmt.Fprintln(p.w)
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

func (p *progress) draw() {
	total := max(p.total.Load(), 1)
	frac := min(float64(p.steps.Load())/float64(total), 1)
	const width = 30
	bar := strings.Repeat("=", int(frac*width)) + strings.Repeat(" ", width-int(frac*width))
	fmt.Fprintf(p.w, "\r[%s] %3.0f%% %d/%d points, %d requests  %-50.50s", bar, frac*100, p.steps.Load(), total, p.requests.Load(), p.label.Load())
}

func (p *progress) setTotal(n int) { p.total.Store(int64(n)) }
func (p *progress) phase(s string) { p.label.Store(s) }
func (p *progress) tick()          { p.requests.Add(1) }
func (p *progress) step()          { p.steps.Add(1) }
func (p *progress) done()          { close(p.stop); <-p.finished }
