package autoscale

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func testSimConfig(p scalePolicy, delay float64, profile []loadPoint) simConfig {
	cfg := defaultSimConfig(&measuredService)
	cfg.policy, cfg.startDelay, cfg.profile = p, delay, profile
	return cfg
}

var (
	testQueue8 = scalePolicy{name: "queue 8", kind: queuePolicy, target: 8, behavior: chartBehavior}
	testCPU50  = scalePolicy{name: "cpu 50", kind: cpuPolicy, target: 0.5, cpuRequest: 1, proxyCPU: true, behavior: defaultBehavior}
	testCPU80  = scalePolicy{name: "runtime cpu 80", kind: cpuPolicy, target: 0.8, cpuRequest: 1, behavior: defaultBehavior}
	testFixed  = scalePolicy{name: "fixed", kind: fixedReplicas}
	testRamp   = Config{RampUp: 300, Hold: 600, RampDown: 300, Tail: 600, Low: 0.2, Peak: 4}.rampProfile()
)

// Every arrival is served, rejected or still held at the end; replicas stay
// within bounds and ready pods never outnumber the replicas.
func TestAutoscaleConservation(t *testing.T) {
	for _, p := range []scalePolicy{testQueue8, testCPU50, testCPU80, testFixed} {
		for _, delay := range []float64{10, 60} {
			for _, lb := range []string{"rr", "random", "least"} {
				cfg := testSimConfig(p, delay, testRamp)
				cfg.lb = lb
				r := simulate(cfg)
				if got := r.served + r.rejected + r.leftover; got != r.arrivals || r.served == 0 {
					t.Errorf("%s, delay %v, %s: served %d + rejected %d + leftover %d = %d, want the %d arrivals", p.name, delay, lb,
						r.served, r.rejected, r.leftover, got, r.arrivals)
				}
				if len(r.latencies) != r.served {
					t.Errorf("%s, delay %v, %s: %d latencies for %d served", p.name, delay, lb, len(r.latencies), r.served)
				}
				win := 0
				for _, w := range r.windows {
					win += w.arrivals
				}
				if win != r.arrivals {
					t.Errorf("%s, delay %v, %s: windows hold %d arrivals, want %d", p.name, delay, lb, win, r.arrivals)
				}
				for _, s := range r.steps {
					if s.total < cfg.minReplicas || s.total > cfg.maxReplicas || s.ready > s.total || s.ready < 1 && s.at > 0 {
						t.Errorf("%s, delay %v, %s: at %.1f s %d ready of %d replicas, want 1 <= ready <= replicas in [%d, %d]",
							p.name, delay, lb, s.at, s.ready, s.total, cfg.minReplicas, cfg.maxReplicas)
						break
					}
				}
				// A pod costs at least the whole run for the first one.
				if r.replicaSeconds < r.end || r.replicaSeconds > float64(cfg.maxReplicas)*r.end {
					t.Errorf("%s, delay %v, %s: %.0f replica-seconds over %.0f s", p.name, delay, lb, r.replicaSeconds, r.end)
				}
			}
		}
	}
}

// Little's law on one pod at a steady 70% load: the time-average number in
// the pod (waiting + in service) equals the admitted arrival rate times the
// mean time in the pod.
func TestAutoscaleLittlesLaw(t *testing.T) {
	for _, load := range []float64{0.3, 0.7, 0.9} {
		cfg := testSimConfig(testFixed, 0, []loadPoint{{0, load}, {20000, load}})
		r := simulate(cfg)
		var sum float64
		for _, d := range r.latencies {
			sum += d.Seconds()
		}
		w := sum / float64(r.served)
		lambda := float64(r.served+r.leftover) / r.end
		l := r.depthArea / r.end
		if math.Abs(l-lambda*w)/l > 0.02 {
			t.Errorf("load %.1f: L = %.3f, lambda*W = %.3f * %.3f = %.3f: more than 2%% apart", load, l, lambda, w, lambda*w)
		}
		// The server is busy load * capacity * (cost of an image), the cost
		// between the cheapest and the dearest batch size's per image.
		lo, hi := math.Inf(1), 0.0
		for n := 1; n <= cfg.maxBatch; n++ {
			c := measuredService.mean(n) / float64(n)
			lo, hi = min(lo, c), max(hi, c)
		}
		rate := float64(r.arrivals-r.rejected) / r.end
		if util := r.busySeconds / r.end; util < rate*lo*0.98 || util > rate*hi*1.02 {
			t.Errorf("load %.1f: server busy %.3f of the time, want between %.3f and %.3f", load, util, rate*lo, rate*hi)
		}
		if load <= 0.7 && r.rejected != 0 {
			t.Errorf("load %.1f: %d rejected", load, r.rejected)
		}
	}
}

func TestAutoscaleExternalFormula(t *testing.T) {
	for _, tc := range []struct {
		usage, target float64
		current, want int
	}{
		{68, 8, 1, 9},   // one full pod: ceil(68/8)
		{8.5, 8, 1, 1},  // within the 10% tolerance
		{8.9, 8, 1, 2},  // just beyond it
		{12, 8, 5, 2},   // 5 pods at 2.4 each: scale down
		{0, 8, 3, 0},    // nothing queued (the behavior keeps minReplicas)
		{39, 8, 5, 5},   // 39/40 is within tolerance
		{100, 2, 5, 50}, // the formula knows no maximum
	} {
		if got := externalReplicas(tc.usage, tc.target, tc.current); got != tc.want {
			t.Errorf("externalReplicas(%v, target %v, %d replicas) = %d, want %d", tc.usage, tc.target, tc.current, got, tc.want)
		}
	}
}

func TestAutoscaleCPUFormula(t *testing.T) {
	ready := func(u float64) podCPU { return podCPU{usage: u, request: 1} }
	unready := podCPU{request: 1, unready: true}
	deleting := podCPU{usage: 1, request: 1, ignored: true}
	for _, tc := range []struct {
		name    string
		pods    []podCPU
		current int
		want    int
		ok      bool
	}{
		{"one saturated pod", []podCPU{ready(1.3)}, 1, 3, true},                           // ceil(1.3/0.5)
		{"within tolerance", []podCPU{ready(0.52), ready(0.5)}, 2, 2, true},               // ratio 1.02
		{"scale down", []podCPU{ready(0.1), ready(0.1), ready(0.1)}, 3, 1, true},          // ceil(0.2*3)
		{"unready counted as 0 on the way up", []podCPU{ready(1.3), unready}, 2, 3, true}, // ceil(1.3/2/0.5*2)
		{"unready damps it to no change", []podCPU{ready(0.6), unready}, 2, 2, true},      // 0.6/2/0.5 < 1
		{"unready ignored on the way down", []podCPU{ready(0.1), unready}, 2, 1, true},    // ceil(0.2*1)
		{"no ready pod: no decision", []podCPU{unready}, 1, 1, false},
		{"deleting pods ignored", []podCPU{ready(1), deleting}, 2, 2, true}, // ceil(2*1)
	} {
		got, ok := cpuReplicas(tc.pods, 0.5, tc.current)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: cpuReplicas = %d, %v, want %d, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// The behavior on hand-made sequences of the metric's proposal, one sync
// every 15 s from t = 0.
func TestAutoscaleHPABehavior(t *testing.T) {
	high, low := func(float64) int { return 9 }, func(float64) int { return 1 }
	dropAt := func(at float64, before, after int) func(float64) int {
		return func(t float64) int {
			if t < at {
				return before
			}
			return after
		}
	}
	for _, tc := range []struct {
		name     string
		behavior hpaBehavior
		max      int
		start    int
		desired  func(t float64) int
		want     map[float64]int // replicas after the sync at t
	}{
		{"chart: scale-up doubles per 15 s", chartBehavior, 5, 1, high,
			map[float64]int{0: 2, 15: 4, 30: 5, 45: 5}},
		{"chart: doubling to 10", chartBehavior, 10, 1, func(float64) int { return 10 },
			map[float64]int{0: 2, 15: 4, 30: 8, 45: 10}},
		{"default: +4 pods beats +100% from 1", defaultBehavior, 10, 1, func(float64) int { return 20 },
			map[float64]int{0: 5, 15: 10, 30: 10}},
		{"chart: scale-down waits 300 s, then 1 pod per 60 s", chartBehavior, 5, 5, dropAt(75, 5, 1),
			map[float64]int{60: 5, 75: 5, 345: 5, 360: 4, 375: 4, 405: 4, 420: 3, 480: 2, 540: 1, 600: 1}},
		{"default: scale-down waits 300 s, then all at once", defaultBehavior, 5, 5, dropAt(75, 5, 1),
			map[float64]int{345: 5, 360: 1, 375: 1}},
		{"chart: a spike within the window restarts the wait", chartBehavior, 5, 5, func(t float64) int {
			if t <= 60 || t == 195 {
				return 5
			}
			return 1
		}, map[float64]int{345: 5, 360: 5, 480: 5, 495: 4, 540: 4, 555: 3, 615: 2, 675: 1}},
		{"no history: down at once, 1 pod per 60 s", chartBehavior, 5, 5, low,
			map[float64]int{0: 4, 45: 4, 60: 3, 120: 2, 180: 1}},
		{"min replicas are kept", chartBehavior, 5, 2, func(float64) int { return 0 },
			map[float64]int{0: 1, 300: 1, 1000: 1}},
		{"within the bounds at once", chartBehavior, 5, 7, low,
			map[float64]int{0: 5}},
	} {
		h := newHPAController(tc.behavior, 1, tc.max)
		replicas := tc.start
		last := 0.0
		for at := range tc.want {
			last = max(last, at)
		}
		for k := 0; float64(k)*15 <= last; k++ {
			now := float64(k) * 15
			replicas = h.reconcile(now, replicas, tc.desired(now), true)
			if want, ok := tc.want[now]; ok && replicas != want {
				t.Errorf("%s: after the sync at %v s: %d replicas, want %d", tc.name, now, replicas, want)
			}
		}
	}
}

// At 4x one pod's load, with room for 10 pods, the queue policy settles at
// 4 or more replicas.
func TestAutoscaleQueuePolicyAt4x(t *testing.T) {
	for _, delay := range []float64{10, 60} {
		cfg := testSimConfig(testQueue8, delay, []loadPoint{{0, 4}, {1200, 4}})
		cfg.maxReplicas = 10
		r := simulate(cfg)
		last := r.steps[len(r.steps)-1]
		if last.total < 4 || r.maxReplicas < 4 {
			t.Errorf("start delay %v: ended with %d replicas (max %d), want >= 4", delay, last.total, r.maxReplicas)
		}
	}
}

func TestAutoscaleDeterministic(t *testing.T) {
	cfg := testSimConfig(testQueue8, 30, testRamp)
	a, b := simulate(cfg), simulate(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two runs with seed %d differ", cfg.seed)
	}
	cfg.seed = 2
	if c := simulate(cfg); c.arrivals == a.arrivals && reflect.DeepEqual(c.latencies, a.latencies) {
		t.Errorf("seeds 1 and 2 gave the same run")
	}
}

func TestAutoscaleServiceDist(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for n := 1; n <= 4; n++ {
		var sum float64
		const draws = 200000
		q := measuredService.table(n)
		for range draws {
			s := measuredService.sample(rng, n)
			if s*1000 < q[0] || s*1000 > q[len(q)-1] {
				t.Fatalf("batch %d: drew %.1f ms outside [%.1f, %.1f]", n, s*1000, q[0], q[len(q)-1])
			}
			sum += s
		}
		if got, want := sum/draws, measuredService.mean(n); math.Abs(got-want)/want > 0.01 {
			t.Errorf("batch %d: mean of draws %.4f s, want %.4f s", n, got, want)
		}
	}
	path := filepath.Join(t.TempDir(), "bench.tsv")
	os.WriteFile(path, []byte("# raw ONNX Runtime\nbatch_size\truns\tfirst_run_ms\tmedian_batch_ms\tmedian_ms_per_image\timages_per_s\n"+
		"1\t1\t10.0\t20.0\t20.00\t50.00\n1\t1\t30.0\t40.0\t40.00\t25.00\n1\t1\t50.0\t60.0\t60.00\t16.67\n"), 0o644)
	d, err := loadServiceTimes(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.table(1); got[0] != 10 || got[5] != 35 || got[10] != 60 || d.runs[1] != 6 {
		t.Errorf("quantiles of 10..60 ms: %v from %d runs, want p0 10, p50 35, p100 60 from 6", got, d.runs[1])
	}
	if got := d.table(2)[10]; got != 120 {
		t.Errorf("batch 2 scaled from batch 1: p100 %v, want 120", got)
	}
	// -measure output: the CPU column.
	os.WriteFile(path, []byte("# perf -autoscale-sim -measure\nbatch_size\twall_ms\tcpu_ms\n4\t900\t200\n4\t950\t220\n"), 0o644)
	if d, err = loadServiceTimes(path); err != nil {
		t.Fatal(err)
	}
	if got := d.table(4); got[0] != 200 || got[10] != 220 || d.runs[4] != 2 {
		t.Errorf("cpu_ms 200 and 220: quantiles %v from %d runs", got, d.runs[4])
	}
}

// The "chart default" row is what values.yaml sets: the load triggers
// with their targets and behavior, or the queue trigger if
// targetQueueDepth is set.
func TestAutoscaleChartDefault(t *testing.T) {
	k, err := readChartKEDA("../../helm/batchgate/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := k.policy()
	if p.kind != loadPolicy || !p.chart || p.target != k.TargetUtilization || p.load.waitTarget != k.TargetWaitSeconds ||
		p.load.window != k.UtilizationWindowSeconds || p.load.lead != k.ScaleAheadSeconds || p.behavior.down.stabilizationS != k.ScaleDown.StabilizationWindowSeconds {
		t.Errorf("chart default %+v does not follow values.yaml's keda %+v", p, k)
	}
	q := 8.0
	k.TargetQueueDepth = &q
	if p := k.policy(); p.kind != queuePolicy || p.target != 8 {
		t.Errorf("with targetQueueDepth 8: %+v, want the queue trigger at 8", p)
	}
}

// The chart's default, on the ramp and the step at each start delay,
// never removes a replica at the plateau and ends the plateau at the
// maximum.
func TestAutoscaleChartDefaultPlateau(t *testing.T) {
	k, err := readChartKEDA("../../helm/batchgate/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o := Config{RampUp: 300, Hold: 600, RampDown: 300, Tail: 600, Low: 0.2, Peak: 4, Scenarios: []string{"ramp", "step"}}
	for _, sc := range o.scenarios() {
		for _, delay := range []float64{10, 60} {
			cfg := testSimConfig(k.policy(), delay, sc.profile)
			r := simulate(cfg)
			if d := dropsDuring(r.steps, sc.flatFrom, sc.flatTo); d != 0 {
				t.Errorf("%s, start delay %v: %d replicas removed at the plateau", sc.name, delay, d)
			}
			if s := stepAt(r.steps, sc.flatTo); s.total != cfg.maxReplicas {
				t.Errorf("%s, start delay %v: %d replicas at the end of the plateau, want %d", sc.name, delay, s.total, cfg.maxReplicas)
			}
		}
	}
}
