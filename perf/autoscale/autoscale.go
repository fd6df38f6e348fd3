// Package autoscale is `go run ./perf -autoscale-sim`: why the chart
// scales on queue depth. A discrete-event simulation (sim.go) of pods fed
// by the measured service-time distribution of one pod (dist.go), scaled
// by the HPA as Kubernetes implements it (hpa.go), on a ramp of Poisson
// arrivals (load.go: the scenarios and the load-proportional policies); it
// compares the chart's KEDA queue-depth trigger with the seed's CPU-50%
// HPA and sweeps targetQueueDepth. Deterministic for Seed, a few seconds.
// Results go to perf/results/autoscale-<timestamp>/ (plots.go draws them).
package autoscale

import (
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config is one simulation run (`go run ./perf -autoscale-sim`'s flags).
// Times are in seconds, loads in units of one pod's capacity.
type Config struct {
	Seed                         uint64    // first random seed: arrivals, service times, load balancing
	Seeds                        int       // runs per row, seeds Seed, Seed+1, ..., pooled
	Delays                       []float64 // pod start delays compared
	Targets                      []float64 // targetQueueDepth values swept
	RampUp, Hold, RampDown, Tail float64   // the ramp scenario: low -> peak, held, -> low, held
	Low, Peak                    float64
	ServiceTimes                 string  // a file of service times instead of the embedded ones ("": embedded)
	ServiceScale                 float64 // multiplies every service time
	LB                           string  // load balancing: "rr", "random" or "least"
	CPUWindow                    float64 // metrics-server resolution
	CPUTarget, CPURequest        float64 // the seed's CPU HPA: utilization (a fraction) and cores
	MaxReplicas                  int
	OutDir                       string   // parent of the autoscale-<timestamp> folder
	ValuesPath                   string   // the chart's values.yaml: its keda block is the "chart default" row
	Scenarios                    []string // ramp, step, sawtooth
	Candidates                   bool     // also run loadCandidates (the frontier)
	Command                      string   // the command line, for the report

	chart chartKEDA // read from ValuesPath by Run
}

// MeasureServiceTimes is set by measure.go (build tag autoscale_measure):
// it times batches through the engine into the file out; args are its
// flags.
var MeasureServiceTimes func(out string, args []string) error

// Run simulates every scenario and policy, writes report.md, summary.csv,
// timeseries.csv, autoscale.png and tradeoff.png to
// OutDir/autoscale-<timestamp>, and prints the tables.
func Run(o Config) error {
	k, err := readChartKEDA(o.ValuesPath)
	if err != nil {
		return fmt.Errorf("-values: %w", err)
	}
	o.chart = k
	dist := &measuredService
	if o.ServiceTimes != "" {
		if dist, err = loadServiceTimes(o.ServiceTimes); err != nil {
			return err
		}
	}
	if o.ServiceScale != 1 {
		dist = dist.scaled(o.ServiceScale)
	}
	start := time.Now()
	sw := runSweep(o, dist)
	dir := filepath.Join(o.OutDir, "autoscale-"+time.Now().UTC().Format("20060102-150405"))
	if err := writeAutoscale(dir, o, dist, sw); err != nil {
		return err
	}
	fmt.Print(autoscaleTables(o, dist, sw))
	fmt.Fprintf(os.Stderr, "perf -autoscale-sim: %d runs in %.1f s; results in %s (report.md, summary.csv, timeseries.csv, autoscale.png, tradeoff.png)\n",
		len(sw.runs)*o.Seeds+len(steadyLoads), time.Since(start).Seconds(), dir)
	return nil
}

// rampProfile is low -> peak -> low -> tail.
func (o Config) rampProfile() []loadPoint {
	t1 := o.RampUp
	t2 := t1 + o.Hold
	t3 := t2 + o.RampDown
	t4 := t3 + o.Tail
	return []loadPoint{{0, o.Low}, {t1, o.Peak}, {t2, o.Peak}, {t3, o.Low}, {t4, o.Low}}
}

// policies are the compared configurations: the queue-depth trigger at
// each target (the chart's behavior), the seed's CPU HPA (runtime and proxy
// CPU against -cpu-request), and the chart's own CPU HPA for
// keda.enabled=false (the runtime container against its 1-CPU request,
// 80%).
func (o Config) policies() []scalePolicy {
	var ps []scalePolicy
	for _, t := range o.Targets {
		ps = append(ps, scalePolicy{name: fmt.Sprintf("queue depth %g", t), kind: queuePolicy, target: t, behavior: chartBehavior, sweep: true})
	}
	// The chart's trigger with Kubernetes' default scale-up (the larger of
	// +100% and +4 pods per 15 s): the metric apart from the rate limit.
	fast := chartBehavior
	fast.up = defaultBehavior.up
	ps = append(ps,
		scalePolicy{name: "queue depth 8, up +4 pods", kind: queuePolicy, target: 8, behavior: fast},
		o.chart.policy(),
		scalePolicy{name: fmt.Sprintf("CPU %g%% (seed)", o.CPUTarget*100), kind: cpuPolicy, target: o.CPUTarget,
			cpuRequest: o.CPURequest, proxyCPU: true, behavior: defaultBehavior},
		scalePolicy{name: "runtime CPU 80% (chart, KEDA off)", kind: cpuPolicy, target: 0.8, cpuRequest: 1, behavior: defaultBehavior},
	)
	if o.Candidates {
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

func runSweep(o Config, dist *serviceDist) autoscaleSweep {
	sw := autoscaleSweep{profile: o.rampProfile()}
	base := defaultSimConfig(dist)
	sw.capacity = base.capacity
	for _, load := range steadyLoads {
		cfg := base
		cfg.seed, cfg.profile, cfg.policy = o.Seed, []loadPoint{{0, load}, {3600, load}}, scalePolicy{name: "one pod", kind: fixedReplicas}
		r := simulate(cfg)
		sw.steady = append(sw.steady, steadyPoint{load: load, depth: r.depthArea / r.end, p50: pctSeconds(r.latencies, 50),
			p99: pctSeconds(r.latencies, 99), reject: float64(r.rejected) / float64(max(r.arrivals, 1))})
	}
	type job struct{ scen, delay, policy int }
	policies := o.policies()
	sw.scens = o.scenarios()
	var jobs []job
	for s := range sw.scens {
		for d := range o.Delays {
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
				cfg.profile, cfg.policy, cfg.startDelay, cfg.lb, cfg.cpuWindow = sc.profile, policies[j.policy], o.Delays[j.delay], o.LB, o.CPUWindow
				cfg.maxReplicas = o.MaxReplicas
				sw.runs[i] = runSeeds(cfg, o.Seed, o.Seeds, sc)
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
func autoscaleTables(o Config, dist *serviceDist, sw autoscaleSweep) string {
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
	total := o.RampUp + o.Hold + o.RampDown + o.Tail
	fmt.Fprintf(&b, "\nOne pod's capacity (full batches of 4): %.2f images/s. Ramp: %.2gx to %.2gx in %.0f s, %.0f s at %.2gx, back to %.2gx in %.0f s, %.0f s tail; %.0f s in all, seed %d, load balancing %s, metrics-server window %.0f s.\n\n",
		sw.capacity, o.Low, o.Peak, o.RampUp, o.Hold, o.Peak, o.Low, o.RampDown, o.Tail, total, o.Seed, o.LB, o.CPUWindow)
	fmt.Fprintf(&b, "Seeds %d to %d: latencies and 429s pooled over the %d runs of each row, replica-seconds and the first scale-up averaged; the per-seed p99s span the range shown.\n\n",
		o.Seed, o.Seed+uint64(o.Seeds)-1, o.Seeds)
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

func writeAutoscale(dir string, o Config, dist *serviceDist, sw autoscaleSweep) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# batchgate autoscaling simulation\n\n`%s`, %s.\n\n", o.Command,
		time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	b.WriteString(autoscaleTables(o, dist, sw))
	b.WriteString("\n![replicas, capacity and p99 over time](autoscale.png)\n\n![p99 vs replica-seconds](tradeoff.png)\n")
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := writeAutoscaleCSV(dir, sw, o.Seeds); err != nil {
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
