package main

// `go run ./perf -autoscale-sim`: why the chart scales on queue depth. A
// discrete-event simulation (autoscale_sim.go) of pods fed by the measured
// service-time distribution of one pod (autoscale_dist.go), scaled by the
// HPA as Kubernetes implements it (autoscale_hpa.go), on a ramp of Poisson
// arrivals; it compares the chart's KEDA queue-depth trigger with the
// seed's CPU-50% HPA and sweeps targetQueueDepth. Deterministic for -seed,
// a few seconds. Results go to perf/results/autoscale-<timestamp>/.

import (
	"encoding/csv"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// autoscaleOptions are -autoscale-sim's flags.
type autoscaleOptions struct {
	seed                         uint64
	seeds                        int
	delays                       []float64
	targets                      []float64
	rampUp, hold, rampDown, tail float64
	low, peak                    float64
	serviceTimes                 string
	serviceScale                 float64
	lb                           string
	cpuWindow                    float64
	cpuTarget, cpuRequest        float64
	maxReplicas                  int
	outDir                       string
	valuesPath                   string // the chart's values.yaml: its keda block is the "chart default" row
	chart                        chartKEDA
	scenarioNames                []string // ramp, step, sawtooth
	candidates                   bool     // also run loadCandidates (the frontier)
}

// measureServiceTimes is set by autoscale_measure.go (build tag
// autoscale_measure): it times batches through the engine into a file.
var measureServiceTimes func(out string, args []string) error

// autoscaleMain runs the simulation with args (what follows -autoscale-sim)
// and returns the exit code.
func autoscaleMain(args []string) int {
	if len(args) > 0 && strings.TrimLeft(args[0], "-") == "measure" {
		if measureServiceTimes == nil || len(args) < 2 {
			fmt.Fprintln(os.Stderr, "perf -autoscale-sim: usage: go run -tags autoscale_measure ./perf -autoscale-sim -measure FILE [-runs N ...]")
			return 2
		}
		if err := measureServiceTimes(args[1], args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "perf -autoscale-sim -measure:", err)
			return 1
		}
		return 0
	}
	o, err := parseAutoscaleFlags(args)
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintln(os.Stderr, "perf -autoscale-sim:", err)
		return 2
	}
	dist := &measuredService
	if o.serviceTimes != "" {
		if dist, err = loadServiceTimes(o.serviceTimes); err != nil {
			fmt.Fprintln(os.Stderr, "perf -autoscale-sim:", err)
			return 1
		}
	}
	if o.serviceScale != 1 {
		dist = dist.scaled(o.serviceScale)
	}
	start := time.Now()
	sw := runSweep(o, dist)
	dir := filepath.Join(o.outDir, "autoscale-"+time.Now().UTC().Format("20060102-150405"))
	if err := writeAutoscale(dir, o, dist, sw); err != nil {
		fmt.Fprintln(os.Stderr, "perf -autoscale-sim:", err)
		return 1
	}
	fmt.Print(autoscaleTables(o, dist, sw))
	fmt.Fprintf(os.Stderr, "perf -autoscale-sim: %d runs in %.1f s; results in %s (report.md, summary.csv, timeseries.csv, autoscale.png, tradeoff.png)\n",
		len(sw.runs)*o.seeds+len(steadyLoads), time.Since(start).Seconds(), dir)
	return 0
}

func parseAutoscaleFlags(args []string) (autoscaleOptions, error) {
	fs := flag.NewFlagSet("perf -autoscale-sim", flag.ContinueOnError)
	seed := fs.Uint64("seed", 1, "first random seed: arrivals, service times and load balancing")
	seeds := fs.Int("seeds", 5, "runs per row, with seeds -seed, -seed+1, ...: pooled (the plots show the first)")
	delays := fs.String("start-delays", "10s,30s,60s", "pod start delays to compare (creation to ready: image pull, model load, warm-up)")
	targets := fs.String("targets", "1,2,4,8,16", "targetQueueDepth values swept for the queue-depth policy (the chart's is 8)")
	up := fs.Duration("ramp-up", 5*time.Minute, "ramp from -low to -peak")
	hold := fs.Duration("hold", 10*time.Minute, "time at -peak")
	down := fs.Duration("ramp-down", 5*time.Minute, "ramp from -peak back to -low")
	tail := fs.Duration("tail", 10*time.Minute, "time at -low after the ramp")
	low := fs.Float64("low", 0.2, "lowest load, in units of one pod's capacity")
	peak := fs.Float64("peak", 4, "peak load, in units of one pod's capacity")
	scale := fs.Float64("service-scale", 1, "multiply every service time by this (a CPU faster or slower than the measured one)")
	fs.String("measure", "", "as the first flag: time batches through the engine into this `file` and exit (build with -tags autoscale_measure; -measure FILE -h lists its flags)")
	svc := fs.String("service-times", "", "service times to use instead of the embedded ones: a -measure `file` (its CPU times) or `runtime bench -min-runs 1 -min-time 0` output")
	lb := fs.String("lb", "rr", "load balancing across ready pods: rr (round-robin), random or least (shortest queue)")
	cpuWindow := fs.Duration("cpu-window", 15*time.Second, "metrics-server resolution: CPU averaged over this window, sampled as often")
	cpuTarget := fs.Float64("cpu-target", 50, "the seed's CPU utilization target, percent")
	cpuRequest := fs.Float64("cpu-request", 1, "CPU cores in the seed's HPA denominator (its usage: runtime + proxy)")
	maxRepl := fs.Int("max-replicas", 5, "maxReplicas (the chart's keda.maxReplicas and hpa.maxReplicas); minReplicas is 1")
	values := fs.String("values", "helm/batchgate/values.yaml", "the chart's values: its keda block is the \"chart default\" policy (trigger, targets, behavior)")
	scen := fs.String("scenarios", "ramp,step,sawtooth", "load scenarios: ramp (-low, -peak, -ramp-up, -hold, -ramp-down, -tail), step (-low to -peak within 10 s) and sawtooth (1.5x to 3x, 2-min period)")
	cands := fs.Bool("candidates", true, "also run the load-proportional candidates (the frontier in tradeoff.png)")
	out := fs.String("out", "perf/results", "parent folder of the autoscale-<timestamp> results folder")
	if err := fs.Parse(args); err != nil {
		return autoscaleOptions{}, err
	}
	o := autoscaleOptions{seed: *seed, seeds: *seeds, rampUp: up.Seconds(), hold: hold.Seconds(), rampDown: down.Seconds(), tail: tail.Seconds(),
		low: *low, peak: *peak, serviceTimes: *svc, serviceScale: *scale, lb: *lb, cpuWindow: cpuWindow.Seconds(), cpuTarget: *cpuTarget / 100,
		cpuRequest: *cpuRequest, maxReplicas: *maxRepl, outDir: *out, valuesPath: *values, candidates: *cands}
	for s := range strings.SplitSeq(*scen, ",") {
		s = strings.TrimSpace(s)
		if s != "ramp" && s != "step" && s != "sawtooth" {
			return o, fmt.Errorf("-scenarios: want ramp, step or sawtooth, got %q", s)
		}
		o.scenarioNames = append(o.scenarioNames, s)
	}
	k, err := readChartKEDA(o.valuesPath)
	if err != nil {
		return o, fmt.Errorf("-values: %w", err)
	}
	o.chart = k
	for s := range strings.SplitSeq(*delays, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			return o, fmt.Errorf("-start-delays: bad value %q", s)
		}
		o.delays = append(o.delays, d.Seconds())
	}
	for s := range strings.SplitSeq(*targets, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || v <= 0 {
			return o, fmt.Errorf("-targets: bad value %q", s)
		}
		o.targets = append(o.targets, v)
	}
	switch {
	case o.maxReplicas < 1 || o.serviceScale <= 0 || o.seeds < 1:
		return o, fmt.Errorf("-max-replicas, -service-scale and -seeds must be positive")
	case o.lb != "rr" && o.lb != "random" && o.lb != "least":
		return o, fmt.Errorf("-lb: want rr, random or least, got %q", o.lb)
	case o.low <= 0 || o.peak < o.low || o.cpuWindow <= 0 || o.cpuTarget <= 0 || o.cpuRequest <= 0:
		return o, fmt.Errorf("want 0 < -low <= -peak and positive -cpu-window, -cpu-target, -cpu-request")
	case o.rampUp < 0 || o.hold < 0 || o.rampDown < 0 || o.tail < 0 || o.rampUp+o.hold+o.rampDown+o.tail <= 0:
		return o, fmt.Errorf("the ramp's durations must be >= 0 and not all 0")
	}
	return o, nil
}

// rampProfile is low -> peak -> low -> tail.
func (o autoscaleOptions) rampProfile() []loadPoint {
	t1 := o.rampUp
	t2 := t1 + o.hold
	t3 := t2 + o.rampDown
	t4 := t3 + o.tail
	return []loadPoint{{0, o.low}, {t1, o.peak}, {t2, o.peak}, {t3, o.low}, {t4, o.low}}
}

// policies are the compared configurations: the queue-depth trigger at
// each target (the chart's behavior), the seed's CPU HPA (runtime and proxy
// CPU against -cpu-request), and the chart's own CPU HPA for
// keda.enabled=false (the runtime container against its 1-CPU request,
// 80%).
func (o autoscaleOptions) policies() []scalePolicy {
	var ps []scalePolicy
	for _, t := range o.targets {
		ps = append(ps, scalePolicy{name: fmt.Sprintf("queue depth %g", t), kind: queuePolicy, target: t, behavior: chartBehavior, sweep: true})
	}
	// The chart's trigger with Kubernetes' default scale-up (the larger of
	// +100% and +4 pods per 15 s): the metric apart from the rate limit.
	fast := chartBehavior
	fast.up = defaultBehavior.up
	ps = append(ps,
		scalePolicy{name: "queue depth 8, up +4 pods", kind: queuePolicy, target: 8, behavior: fast},
		o.chart.policy(),
		scalePolicy{name: fmt.Sprintf("CPU %g%% (seed)", o.cpuTarget*100), kind: cpuPolicy, target: o.cpuTarget,
			cpuRequest: o.cpuRequest, proxyCPU: true, behavior: defaultBehavior},
		scalePolicy{name: "runtime CPU 80% (chart, KEDA off)", kind: cpuPolicy, target: 0.8, cpuRequest: 1, behavior: defaultBehavior},
	)
	if o.candidates {
		ps = append(ps, loadCandidates()...)
	}
	return ps
}

// autoscaleRun is one policy at one start delay.
type autoscaleRun struct {
	scenario string
	delay    float64
	policy   scalePolicy
	res      simResult // the first seed's run: the plots and time series
	// Over every seed: latencies pooled, counts summed, cost and time to
	// the first scale-up averaged.
	p50, p99           float64 // seconds
	p99Lo, p99Hi       float64 // the range of the per-seed p99s
	arrivals, rejected int
	replicaSeconds     float64
	firstScaleUp       float64 // -1: never
	maxReplicas        int
	drops              int // replicas removed while arrivals were flat, summed over the seeds
}

type autoscaleSweep struct {
	profile  []loadPoint // the ramp's
	scens    []loadScenario
	capacity float64
	runs     []autoscaleRun
	steady   []steadyPoint
}

// steadyPoint is one pod at a constant load for an hour: what a queue
// depth target means in utilization and latency.
type steadyPoint struct {
	load, depth, p50, p99, reject float64
}

// steadyLoads are the loads of the one-pod table.
var steadyLoads = []float64{0.5, 0.7, 0.8, 0.9, 0.95, 1.0}

func runSweep(o autoscaleOptions, dist *serviceDist) autoscaleSweep {
	sw := autoscaleSweep{profile: o.rampProfile()}
	base := defaultSimConfig(dist)
	sw.capacity = base.capacity
	for _, load := range steadyLoads {
		cfg := base
		cfg.seed, cfg.profile, cfg.policy = o.seed, []loadPoint{{0, load}, {3600, load}}, scalePolicy{name: "one pod", kind: fixedReplicas}
		r := simulate(cfg)
		sw.steady = append(sw.steady, steadyPoint{load: load, depth: r.depthArea / r.end, p50: pctSeconds(r.latencies, 50),
			p99: pctSeconds(r.latencies, 99), reject: float64(r.rejected) / float64(max(r.arrivals, 1))})
	}
	type job struct{ scen, delay, policy int }
	policies := o.policies()
	sw.scens = o.scenarios()
	var jobs []job
	for s := range sw.scens {
		for d := range o.delays {
			for p := range policies {
				jobs = append(jobs, job{s, d, p})
			}
		}
	}
	sw.runs = make([]autoscaleRun, len(jobs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range max(goruntime.NumCPU(), 1) {
		wg.Go(func() {
			for i := range next {
				j := jobs[i]
				cfg := base
				sc := sw.scens[j.scen]
				cfg.profile, cfg.policy, cfg.startDelay, cfg.lb, cfg.cpuWindow = sc.profile, policies[j.policy], o.delays[j.delay], o.lb, o.cpuWindow
				cfg.maxReplicas = o.maxReplicas
				sw.runs[i] = runSeeds(cfg, o.seed, o.seeds, sc)
			}
		})
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	return sw
}

// runSeeds runs cfg with seeds seed, seed+1, ... and pools the results.
func runSeeds(cfg simConfig, seed uint64, seeds int, sc loadScenario) autoscaleRun {
	run := autoscaleRun{scenario: sc.name, delay: cfg.startDelay, policy: cfg.policy, p99Lo: math.Inf(1), firstScaleUp: -1}
	var all []time.Duration
	ups, upSum := 0, 0.0
	for k := range seeds {
		cfg.seed = seed + uint64(k)
		r := simulate(cfg)
		if k == 0 {
			run.res = r
		}
		p99 := pctSeconds(r.latencies, 99)
		run.p99Lo, run.p99Hi = min(run.p99Lo, p99), max(run.p99Hi, p99)
		all = append(all, r.latencies...)
		run.arrivals += r.arrivals
		run.rejected += r.rejected
		run.replicaSeconds += r.replicaSeconds / float64(seeds)
		run.maxReplicas = max(run.maxReplicas, r.maxReplicas)
		run.drops += dropsDuring(r.steps, sc.flatFrom, sc.flatTo)
		if r.firstScaleUp >= 0 {
			ups++
			upSum += r.firstScaleUp
		}
	}
	if ups > 0 {
		run.firstScaleUp = upSum / float64(ups)
	}
	run.p50, run.p99 = pctSeconds(all, 50), pctSeconds(all, 99)
	return run
}

func (r autoscaleRun) rejectShare() float64 {
	return float64(r.rejected) / float64(max(r.arrivals, 1))
}

func fmtSeconds(s float64) string {
	if s < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1f", s)
}

// autoscaleTables is the Markdown of the service distribution, the runs
// and the trade-off.
func autoscaleTables(o autoscaleOptions, dist *serviceDist, sw autoscaleSweep) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Service time per batch, ms (%s):\n\n| batch | runs |", dist.source)
	for _, p := range serviceQuantiles {
		fmt.Fprintf(&b, " p%g |", p*100)
	}
	b.WriteString(" mean | images/s |\n|---|---|" + strings.Repeat("---|", len(serviceQuantiles)+2) + "\n")
	for n := 1; n <= 4; n++ {
		fmt.Fprintf(&b, "| %d | %d |", n, dist.runs[n])
		for _, v := range dist.table(n) {
			fmt.Fprintf(&b, " %.1f |", v)
		}
		fmt.Fprintf(&b, " %.1f | %.2f |\n", dist.mean(n)*1000, dist.capacity(n))
	}
	total := o.rampUp + o.hold + o.rampDown + o.tail
	fmt.Fprintf(&b, "\nOne pod's capacity (full batches of 4): %.2f images/s. Ramp: %.2gx to %.2gx in %.0f s, %.0f s at %.2gx, back to %.2gx in %.0f s, %.0f s tail; %.0f s in all, seed %d, load balancing %s, metrics-server window %.0f s.\n\n",
		sw.capacity, o.low, o.peak, o.rampUp, o.hold, o.peak, o.low, o.rampDown, o.tail, total, o.seed, o.lb, o.cpuWindow)
	fmt.Fprintf(&b, "Seeds %d to %d: latencies and 429s pooled over the %d runs of each row, replica-seconds and the first scale-up averaged; the per-seed p99s span the range shown.\n\n",
		o.seed, o.seed+uint64(o.seeds)-1, o.seeds)
	b.WriteString(scenarioText(sw))
	b.WriteString(goalTable(sw))
	b.WriteString("\nEvery run. Replicas dropped at plateau: removed while arrivals were flat (the ramp's and the step's hold, the sawtooth's teeth), summed over the seeds.\n\n")
	b.WriteString("| scenario | start delay | policy | p50 ms | p99 ms | p99 per seed, ms | 429 share | replica-seconds | mean replicas | first scale-up s | max replicas | replica drops at plateau |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range sw.runs {
		fmt.Fprintf(&b, "| %s | %.0f s | %s | %.0f | %.0f | %.0f-%.0f | %.2f%% | %.0f | %.2f | %s | %d | %d |\n", r.scenario, r.delay, r.policy.name, r.p50*1000, r.p99*1000,
			r.p99Lo*1000, r.p99Hi*1000, 100*r.rejectShare(), r.replicaSeconds, r.replicaSeconds/r.res.end, fmtSeconds(r.firstScaleUp), r.maxReplicas, r.drops)
	}
	b.WriteString("\nOne pod at a steady load (an hour of Poisson arrivals): the mean of inference_queue_depth it shows, and its latency. The queue trigger settles where each pod shows about targetQueueDepth.\n\n| load | mean queue depth | p50 ms | p99 ms | 429 share |\n|---|---|---|---|---|\n")
	for _, s := range sw.steady {
		fmt.Fprintf(&b, "| %.2f | %.1f | %.0f | %.0f | %.2f%% |\n", s.load, s.depth, s.p50*1000, s.p99*1000, 100*s.reject)
	}
	return b.String()
}

func writeAutoscale(dir string, o autoscaleOptions, dist *serviceDist, sw autoscaleSweep) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# batchgate autoscaling simulation\n\n`go run ./perf -autoscale-sim %s`, %s.\n\n", strings.Join(os.Args[2:], " "),
		time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	b.WriteString(autoscaleTables(o, dist, sw))
	b.WriteString("\n![replicas, capacity and p99 over time](autoscale.png)\n\n![p99 vs replica-seconds](tradeoff.png)\n")
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := writeAutoscaleCSV(dir, sw, o.seeds); err != nil {
		return err
	}
	if err := timelinePlot(filepath.Join(dir, "autoscale.png"), o, sw); err != nil {
		return err
	}
	return tradeoffPlot(filepath.Join(dir, "tradeoff.png"), sw)
}

func writeAutoscaleCSV(dir string, sw autoscaleSweep, seeds int) error {
	f, err := os.Create(filepath.Join(dir, "summary.csv"))
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"scenario", "start_delay_s", "policy", "seeds", "arrivals", "rejected", "p50_ms", "p99_ms", "p99_min_ms", "p99_max_ms", "reject_share",
		"replica_seconds", "first_scale_up_s", "max_replicas", "replica_drops_at_plateau"})
	g := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for _, r := range sw.runs {
		w.Write([]string{r.scenario, g(r.delay), r.policy.name, strconv.Itoa(seeds), strconv.Itoa(r.arrivals), strconv.Itoa(r.rejected),
			g(r.p50 * 1000), g(r.p99 * 1000), g(r.p99Lo * 1000), g(r.p99Hi * 1000), g(r.rejectShare()), g(r.replicaSeconds),
			g(r.firstScaleUp), strconv.Itoa(r.maxReplicas), strconv.Itoa(r.drops)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	// Time series of the first seed: per reporting window and run,
	// arrivals/s, 429s, p99 and the replicas at the window's end.
	f, err = os.Create(filepath.Join(dir, "timeseries.csv"))
	if err != nil {
		return err
	}
	w = csv.NewWriter(f)
	w.Write([]string{"scenario", "start_delay_s", "policy", "window_start_s", "arrivals_per_s", "rejected", "p99_ms", "ready_replicas", "replicas"})
	for _, r := range sw.runs {
		if !r.policy.chart && r.policy.kind == loadPolicy {
			continue // the candidates: summary.csv only
		}
		win := simWindow
		for i, ws := range r.res.windows {
			at := float64(i+1) * win
			s := stepAt(r.res.steps, at)
			p99 := ""
			if len(ws.lat) > 0 {
				p99 = g(pctSeconds(ws.lat, 99) * 1000)
			}
			w.Write([]string{r.scenario, g(r.delay), r.policy.name, g(float64(i) * win), g(float64(ws.arrivals) / win), strconv.Itoa(ws.rejected),
				p99, strconv.Itoa(s.ready), strconv.Itoa(s.total)})
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// stepLine plots y of each step against minutes, held until end seconds.
func stepLine(steps []stepPoint, end float64, y func(stepPoint) float64) (*plotter.Line, error) {
	var xy plotter.XYs
	for _, st := range steps {
		xy = append(xy, plotter.XY{X: st.at / 60, Y: y(st)})
	}
	xy = append(xy, plotter.XY{X: end / 60, Y: xy[len(xy)-1].Y})
	l, err := plotter.NewLine(xy)
	if err != nil {
		return nil, err
	}
	l.StepStyle = plotter.PostStep
	return l, nil
}

// stepAt is the replica state in force at t.
func stepAt(steps []stepPoint, t float64) stepPoint {
	s := steps[0]
	for _, x := range steps {
		if x.at > t {
			break
		}
		s = x
	}
	return s
}

// timelinePlot draws, per start delay (columns), arrivals and ready
// capacity, replicas, and p99 per window over time for the chart's queue
// policy (target 8, or the first target) and the seed's CPU policy.
func timelinePlot(path string, o autoscaleOptions, sw autoscaleSweep) error {
	type series struct {
		run   autoscaleRun
		color color.Color
		dash  []vg.Length
	}
	cols := len(o.delays)
	rows := 3 * len(sw.scens)
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for si, sc := range sw.scens {
		end := sc.profile[len(sc.profile)-1].at
		row := 3 * si
		for c, d := range o.delays {
			var ss []series
			for _, r := range sw.runs {
				if r.delay != d || r.scenario != sc.name {
					continue
				}
				switch {
				case r.policy.chart:
					ss = append(ss, series{r, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255}, nil})
				case r.policy.kind == cpuPolicy && r.policy.proxyCPU:
					ss = append(ss, series{r, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255}, []vg.Length{vg.Points(4), vg.Points(2)}})
				}
			}
			// Row 0: offered arrivals and the capacity of ready pods.
			p := plot.New()
			p.Title.Text = fmt.Sprintf("%s, start delay %.0f s", sc.name, d)
			p.Y.Label.Text = "images/s"
			var offered plotter.XYs
			win := simWindow
			for i, ws := range ss[0].run.res.windows {
				offered = append(offered, plotter.XY{X: (float64(i) + 0.5) * win / 60, Y: float64(ws.arrivals) / win})
			}
			l, err := plotter.NewLine(offered)
			if err != nil {
				return err
			}
			l.Color = color.Gray{Y: 0x60}
			l.Width = vg.Points(1.5)
			p.Add(l)
			p.Legend.Add("arrivals", l)
			for _, s := range ss {
				l, err := stepLine(s.run.res.steps, end, func(st stepPoint) float64 { return float64(st.ready) * sw.capacity })
				if err != nil {
					return err
				}
				l.Color, l.Dashes = s.color, s.dash
				p.Add(l)
				p.Legend.Add("capacity, "+s.run.policy.name, l)
			}
			p.Legend.Top = true
			p.Legend.TextStyle.Font.Size = vg.Points(7)
			p.Y.Min = 0
			grid[row][c] = p

			// Row 1: replicas (started or not).
			p = plot.New()
			p.Y.Label.Text = "replicas"
			for _, s := range ss {
				l, err := stepLine(s.run.res.steps, end, func(st stepPoint) float64 { return float64(st.total) })
				if err != nil {
					return err
				}
				l.Color, l.Dashes = s.color, s.dash
				p.Add(l)
				p.Legend.Add(s.run.policy.name, l)
			}
			p.Legend.Top = true
			p.Legend.TextStyle.Font.Size = vg.Points(7)
			p.Y.Min, p.Y.Max = 0, float64(o.maxReplicas)+1.5
			grid[row+1][c] = p

			// Row 2: p99 per window, log scale.
			p = plot.New()
			p.Y.Label.Text = fmt.Sprintf("p99 per %.0f s, s", win)
			p.X.Label.Text = "minutes"
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = ticks125{}
			for _, s := range ss {
				var xy plotter.XYs
				for i, ws := range s.run.res.windows {
					if len(ws.lat) > 0 {
						xy = append(xy, plotter.XY{X: (float64(i) + 0.5) * win / 60, Y: pctSeconds(ws.lat, 99)})
					}
				}
				l, err := plotter.NewLine(xy)
				if err != nil {
					return err
				}
				l.Color, l.Dashes = s.color, s.dash
				p.Add(l)
				p.Legend.Add(s.run.policy.name, l)
			}
			p.Legend.Top = true
			p.Legend.TextStyle.Font.Size = vg.Points(7)
			p.Y.Min, p.Y.Max = 0.05, 20
			grid[row+2][c] = p
		}
		for _, r := range grid[row : row+3] {
			for _, p := range r {
				p.X.Min, p.X.Max = 0, end/60
				p.X.Tick.Marker = minuteTicks{}
			}
		}
		for c := range grid[row] {
			grid[row][c].Y.Max = float64(o.maxReplicas) * sw.capacity * 1.45 // room for the legend
		}
	}
	img := vgimg.NewWith(vgimg.UseWH(vg.Length(4*cols)*vg.Inch, vg.Length(7.5*float64(len(sw.scens)))*vg.Inch), vgimg.UseDPI(80))
	dc := draw.New(img)
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter, PadY: vg.Millimeter,
		PadTop: vg.Points(2), PadBottom: vg.Points(2), PadLeft: vg.Points(2), PadRight: vg.Points(2)}
	canvases := plot.Align(grid, t, dc)
	for i := range rows {
		for j := range cols {
			grid[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// tradeoffPlot draws p99 against replica-seconds over the first scenario
// (the ramp): one line per start delay through the queue targets, the
// load-proportional candidates as dots (the frontier), and the chart's
// default and the CPU policies as labelled crosses.
func tradeoffPlot(path string, sw autoscaleSweep) error {
	p := plot.New()
	first := sw.scens[0].name
	p.Title.Text = fmt.Sprintf("p99 vs cost, %s (queue targets labelled; dots: load-proportional candidates)", first)
	p.X.Label.Text, p.Y.Label.Text = "replica-seconds", "p99 latency, s"
	delays := []float64{}
	for _, r := range sw.runs {
		if r.scenario == first && !slices.Contains(delays, r.delay) {
			delays = append(delays, r.delay)
		}
	}
	for i, d := range delays {
		var q, cpu, cand plotter.XYs
		var ql, cl []string
		for _, r := range sw.runs {
			if r.delay != d || r.scenario != first {
				continue
			}
			pt := plotter.XY{X: r.replicaSeconds, Y: r.p99}
			switch {
			case r.policy.sweep:
				q, ql = append(q, pt), append(ql, fmt.Sprintf("%g", r.policy.target))
			case r.policy.kind == loadPolicy && !r.policy.chart:
				cand = append(cand, pt)
			case r.policy.chart:
				cpu, cl = append(cpu, pt), append(cl, "chart default")
			default:
				cpu, cl = append(cpu, pt), append(cl, strings.TrimPrefix(r.policy.name, "CPU "))
			}
		}
		if len(cand) > 0 {
			dots, err := plotter.NewScatter(cand)
			if err != nil {
				return err
			}
			dots.Color, dots.Radius = plotutil.Color(i), vg.Points(1.5)
			p.Add(dots)
		}
		l, pts, err := plotter.NewLinePoints(q)
		if err != nil {
			return err
		}
		l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
		p.Add(l, pts)
		p.Legend.Add(fmt.Sprintf("queue depth, start delay %.0f s", d), l, pts)
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: q, Labels: ql})
		if err != nil {
			return err
		}
		p.Add(labels)
		sc, err := plotter.NewScatter(cpu)
		if err != nil {
			return err
		}
		sc.Color, sc.Shape = plotutil.Color(i), draw.CrossGlyph{}
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("other policies, start delay %.0f s", d), sc)
		if i == 0 {
			labels, err := plotter.NewLabels(plotter.XYLabels{XYs: cpu, Labels: cl})
			if err != nil {
				return err
			}
			for k := range labels.TextStyle {
				labels.TextStyle[k].Font.Size = vg.Points(7)
			}
			p.Add(labels)
		}
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = ticks125{}
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// ticks125 marks 1, 2 and 5 times the powers of ten (for log axes).
type ticks125 struct{}

func (ticks125) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return out
}

// minuteTicks marks every 5 minutes.
type minuteTicks struct{}

func (minuteTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for v := math.Ceil(lo/5) * 5; v <= hi; v += 5 {
		out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', 0, 64)})
	}
	return out
}
