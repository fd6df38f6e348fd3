package autoscale

// The load-proportional policy (the chart's default since issue 24) and the
// scenarios beyond the ramp. The proxy exports, per pod,
// inference_runtime_demand_seconds_total (the measured runtime time per item
// of every request sent to the runtime, 429s included: rate() of it is the
// offered load in units of one pod's runtime, not capped at 1) and
// inference_expected_wait_seconds (queue depth x measured time per item).
// The chart's ScaledObject has up to three Prometheus triggers, whose
// maximum wins (the HPA takes the largest proposal of its metrics):
//
//	utilization: sum(rate(demand[window]))                  / targetUtilization
//	ahead:       predict_linear(that[history:], lead)       / targetUtilization
//	wait:        sum(inference_expected_wait_seconds)        / targetWaitSeconds
//
// The simulation reads the chart's values.yaml for the default, so that its
// "chart default" row is what the chart renders.

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// loadSignal configures a loadPolicy (see the package comment above).
type loadSignal struct {
	busy       bool    // rate of busy seconds (capped at 1 per pod) instead of demand
	window     float64 // rate() window, seconds
	lead       float64 // predict_linear lead, seconds (0: no such trigger)
	history    float64 // predict_linear range, seconds
	waitTarget float64 // expected wait per replica, seconds (0: no wait trigger)
}

func (l loadSignal) String() string {
	var b strings.Builder
	if l.busy {
		fmt.Fprintf(&b, "busy[%.0fs]", l.window)
	} else {
		fmt.Fprintf(&b, "demand[%.0fs]", l.window)
	}
	if l.lead > 0 {
		fmt.Fprintf(&b, " +%.0fs ahead (trend %.0fs)", l.lead, l.history)
	}
	if l.waitTarget > 0 {
		fmt.Fprintf(&b, ", wait %gs", l.waitTarget)
	}
	return b.String()
}

// podSample is one scrape of a pod's counters.
type podSample struct{ at, busy, demand float64 }

type timedFloat struct{ at, v float64 }

// loadState is what Prometheus holds between scrapes: the latest values of
// the trigger queries, and the history predict_linear reads.
type loadState struct {
	util, predicted, wait float64
	hist                  []timedFloat
}

// scrape records every live, ready pod's counters at t and evaluates the
// queries. A pod that went away keeps its samples in the rate window, as
// Prometheus keeps them.
func (s *loadState) scrape(t float64, pods []*simPod, l loadSignal) {
	s.util, s.wait = 0, 0
	for _, p := range pods {
		if p.goneAt < 0 && t >= p.readyAt {
			p.samples = append(p.samples, podSample{t, p.busy, p.demand})
			s.wait += float64(p.depth()) * p.itemTime
		}
		k := 0
		for k < len(p.samples) && p.samples[k].at <= t-l.window {
			k++
		}
		p.samples = p.samples[k:]
		if n := len(p.samples); n >= 2 {
			a, b := p.samples[0], p.samples[n-1]
			if l.busy {
				s.util += (b.busy - a.busy) / (b.at - a.at)
			} else {
				s.util += (b.demand - a.demand) / (b.at - a.at)
			}
		}
	}
	if l.lead <= 0 {
		return
	}
	s.hist = append(s.hist, timedFloat{t, s.util})
	k := 0
	for k < len(s.hist) && s.hist[k].at <= t-l.history {
		k++
	}
	s.hist = s.hist[k:]
	s.predicted = predictLinear(s.hist, t+l.lead)
}

// predictLinear is PromQL's predict_linear: the least-squares line through
// the points, at time at.
func predictLinear(pts []timedFloat, at float64) float64 {
	n := float64(len(pts))
	if n < 2 {
		if n == 1 {
			return pts[0].v
		}
		return 0
	}
	var sx, sy, sxx, sxy float64
	for _, p := range pts {
		sx += p.at
		sy += p.v
		sxx += p.at * p.at
		sxy += p.at * p.v
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return sy / n
	}
	slope := (n*sxy - sx*sy) / d
	return sy/n + slope*(at-sx/n)
}

// replicas is the HPA's proposal: the largest of the triggers'.
func (s *loadState) replicas(p scalePolicy, current int) int {
	d := externalReplicas(s.util, p.target, current)
	if p.load.lead > 0 {
		d = max(d, externalReplicas(max(s.predicted, 0), p.target, current))
	}
	if p.load.waitTarget > 0 {
		d = max(d, externalReplicas(s.wait, p.load.waitTarget, current))
	}
	return d
}

// chartKEDA is the keda block of helm/batchgate/values.yaml.
type chartKEDA struct {
	Enabled                  bool     `yaml:"enabled"`
	TargetQueueDepth         *float64 `yaml:"targetQueueDepth"`
	TargetUtilization        float64  `yaml:"targetUtilization"`
	UtilizationWindowSeconds float64  `yaml:"utilizationWindowSeconds"`
	ScaleAheadSeconds        float64  `yaml:"scaleAheadSeconds"`
	TrendWindowSeconds       float64  `yaml:"trendWindowSeconds"`
	TargetWaitSeconds        float64  `yaml:"targetWaitSeconds"`
	MinReplicas              int      `yaml:"minReplicas"`
	MaxReplicas              int      `yaml:"maxReplicas"`
	PollingInterval          float64  `yaml:"pollingInterval"`
	ScaleUp                  struct {
		StabilizationWindowSeconds float64 `yaml:"stabilizationWindowSeconds"`
		Percent                    float64 `yaml:"percent"`
		Pods                       float64 `yaml:"pods"`
		PeriodSeconds              float64 `yaml:"periodSeconds"`
	} `yaml:"scaleUp"`
	ScaleDown struct {
		StabilizationWindowSeconds float64 `yaml:"stabilizationWindowSeconds"`
		Percent                    float64 `yaml:"percent"`
		Pods                       float64 `yaml:"pods"`
		PeriodSeconds              float64 `yaml:"periodSeconds"`
	} `yaml:"scaleDown"`
}

// readChartKEDA reads the keda block of a values.yaml.
func readChartKEDA(path string) (chartKEDA, error) {
	var v struct {
		KEDA chartKEDA `yaml:"keda"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return chartKEDA{}, err
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return chartKEDA{}, fmt.Errorf("%s: %w", path, err)
	}
	k := v.KEDA
	if !k.Enabled || k.MaxReplicas < 1 || k.ScaleUp.PeriodSeconds <= 0 || k.ScaleDown.PeriodSeconds <= 0 {
		return k, fmt.Errorf("%s: keda is off, or keda.maxReplicas or a scaling period is missing", path)
	}
	if k.TargetQueueDepth == nil && (k.TargetUtilization <= 0 || k.UtilizationWindowSeconds <= 0) {
		return k, fmt.Errorf("%s: want keda.targetQueueDepth, or keda.targetUtilization and keda.utilizationWindowSeconds", path)
	}
	return k, nil
}

// behavior is the ScaledObject's horizontalPodAutoscalerConfig.behavior as
// the chart renders it.
func (k chartKEDA) behavior() hpaBehavior {
	var b hpaBehavior
	b.up.stabilizationS, b.down.stabilizationS = k.ScaleUp.StabilizationWindowSeconds, k.ScaleDown.StabilizationWindowSeconds
	if k.ScaleUp.Percent > 0 {
		b.up.policies = append(b.up.policies, scalingPolicy{value: k.ScaleUp.Percent, periodS: k.ScaleUp.PeriodSeconds})
	}
	if k.ScaleUp.Pods > 0 {
		b.up.policies = append(b.up.policies, scalingPolicy{pods: true, value: k.ScaleUp.Pods, periodS: k.ScaleUp.PeriodSeconds})
	}
	if k.ScaleDown.Pods > 0 {
		b.down.policies = append(b.down.policies, scalingPolicy{pods: true, value: k.ScaleDown.Pods, periodS: k.ScaleDown.PeriodSeconds})
	}
	if k.ScaleDown.Percent > 0 {
		b.down.policies = append(b.down.policies, scalingPolicy{value: k.ScaleDown.Percent, periodS: k.ScaleDown.PeriodSeconds})
	}
	return b
}

// policy is the chart's default as a scalePolicy: the queue-depth trigger
// when targetQueueDepth is set (it wins, as in the chart), else the load
// triggers.
func (k chartKEDA) policy() scalePolicy {
	if k.TargetQueueDepth != nil {
		return scalePolicy{name: fmt.Sprintf("chart default (queue depth %g)", *k.TargetQueueDepth), kind: queuePolicy,
			target: *k.TargetQueueDepth, behavior: k.behavior(), chart: true}
	}
	l := loadSignal{window: k.UtilizationWindowSeconds, lead: k.ScaleAheadSeconds, history: k.TrendWindowSeconds, waitTarget: k.TargetWaitSeconds}
	return scalePolicy{name: fmt.Sprintf("chart default (utilization %g, %s, %s)", k.TargetUtilization, l, behaviorName(k.behavior())),
		kind: loadPolicy, target: k.TargetUtilization, load: l, behavior: k.behavior(), chart: true}
}

// behaviorName is a short label of a behavior: up policies / down window
// and policies.
func behaviorName(b hpaBehavior) string {
	pol := func(ps []scalingPolicy, sign string) string {
		var s []string
		for _, p := range ps {
			if p.pods {
				s = append(s, fmt.Sprintf("%s%g pods/%gs", sign, p.value, p.periodS))
			} else {
				s = append(s, fmt.Sprintf("%s%g%%/%gs", sign, p.value, p.periodS))
			}
		}
		return strings.Join(s, " or ")
	}
	return fmt.Sprintf("up %s, down after %gs %s", pol(b.up.policies, "+"), b.down.stabilizationS, pol(b.down.policies, "-"))
}

// scenario is a load profile with the interval over which arrivals are
// flat (or, for the sawtooth, flat on average): no replica should be
// removed then.
type loadScenario struct {
	name             string
	profile          []loadPoint
	flatFrom, flatTo float64
}

// scenarios are the ramp of the options and the step and sawtooth of
// issue 24, in the order of names.
func (o Config) scenarios() []loadScenario {
	var out []loadScenario
	for _, n := range o.Scenarios {
		switch n {
		case "ramp":
			out = append(out, loadScenario{n, o.rampProfile(), o.RampUp, o.RampUp + o.Hold})
		case "step":
			// o.low for 2 min, to o.peak within 10 s, held, back within
			// 10 s, then the tail.
			t1 := 120.0
			t2 := t1 + 10
			t3 := t2 + o.Hold
			t4 := t3 + 10
			out = append(out, loadScenario{n, []loadPoint{{0, o.Low}, {t1, o.Low}, {t2, o.Peak}, {t3, o.Peak}, {t4, o.Low}, {t4 + o.Tail, o.Low}}, t2, t3})
		case "sawtooth":
			// o.low for 1 min, up to 1.5x in 1 min, then 6 teeth of 2 min
			// (1.5x to 3x in 110 s, back in 10 s), down to o.low in 1 min,
			// then the tail.
			pts := []loadPoint{{0, o.Low}, {60, o.Low}}
			t := 120.0
			for range 6 {
				pts = append(pts, loadPoint{t, 1.5}, loadPoint{t + 110, 3})
				t += 120
			}
			pts = append(pts, loadPoint{t, 1.5}, loadPoint{t + 60, o.Low}, loadPoint{t + 60 + o.Tail, o.Low})
			out = append(out, loadScenario{n, pts, 120, t})
		}
	}
	return out
}

// dropsDuring counts the replicas removed (spec.replicas lowered) within
// [from, to].
func dropsDuring(steps []stepPoint, from, to float64) int {
	n := 0
	for i := 1; i < len(steps); i++ {
		if d := steps[i-1].total - steps[i].total; d > 0 && steps[i].at >= from && steps[i].at <= to {
			n += d
		}
	}
	return n
}

// loadCandidates are the load-proportional policies tried besides the
// chart's default: the frontier in the report. The scale-up is
// Kubernetes' default (+100% or +4 pods per 15 s); the scale-down is the
// chart's old one (300 s, then 1 pod per 60 s), or a window of 90 s or
// 125 s (just over the sawtooth's period), then to the recommendation at
// once.
func loadCandidates() []scalePolicy {
	downs := []scalingRules{
		{300, []scalingPolicy{{pods: true, value: 1, periodS: 60}}},
		{90, []scalingPolicy{{value: 100, periodS: 15}}},
		{125, []scalingPolicy{{value: 100, periodS: 15}}},
	}
	var ps []scalePolicy
	for _, target := range []float64{0.6, 0.7, 0.8} {
		for _, l := range []loadSignal{
			{window: 30},
			{window: 30, waitTarget: 1},
			{busy: true, window: 30, waitTarget: 1},
			{window: 30, lead: 60, history: 120, waitTarget: 1},
			{window: 60, lead: 60, history: 120, waitTarget: 1},
		} {
			for _, d := range downs {
				b := hpaBehavior{up: defaultBehavior.up, down: d}
				ps = append(ps, scalePolicy{name: fmt.Sprintf("utilization %g, %s, %s", target, l, behaviorName(b)), kind: loadPolicy,
					target: target, load: l, behavior: b})
			}
		}
	}
	return ps
}

// seedName is the name of the seed's CPU policy at the default target.
const seedName = "CPU 50% (seed)"

// goalsMet checks issue 24's goal for r against the seed's run of the same
// scenario and start delay: p99 at or below, at most 0.85x the
// replica-seconds, no replica removed at the plateau, and no 429 at start
// delays up to 30 s. It returns the goals missed.
func goalsMet(r, seed autoscaleRun) []string {
	var miss []string
	if r.p99 > seed.p99 {
		miss = append(miss, "p99")
	}
	if r.replicaSeconds > 0.85*seed.replicaSeconds {
		miss = append(miss, "cost")
	}
	if r.drops > 0 {
		miss = append(miss, "plateau")
	}
	if r.delay <= 30 && r.rejected > 0 {
		miss = append(miss, "429")
	}
	return miss
}

// seedRun finds the seed's run for r's scenario and delay.
func seedRun(sw autoscaleSweep, r autoscaleRun) (autoscaleRun, bool) {
	for _, s := range sw.runs {
		if s.scenario == r.scenario && s.delay == r.delay && s.policy.name == seedName {
			return s, true
		}
	}
	return autoscaleRun{}, false
}

func scenarioText(sw autoscaleSweep) string {
	var b strings.Builder
	b.WriteString("Scenarios (load in units of one pod's capacity; replicas must not drop within the flat interval):\n\n| scenario | corners (s: load) | flat interval, s |\n|---|---|---|\n")
	for _, sc := range sw.scens {
		var c []string
		for _, p := range sc.profile {
			c = append(c, fmt.Sprintf("%.0f: %.2g", p.at, p.load))
		}
		if len(c) > 8 {
			c = append(c[:5], append([]string{"..."}, c[len(c)-3:]...)...)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f-%.0f |\n", sc.name, strings.Join(c, ", "), sc.flatFrom, sc.flatTo)
	}
	return b.String() + "\n"
}

// goalTable compares the chart's default with the seed's CPU trigger in
// every scenario and start delay, then ranks the load-proportional
// candidates (the frontier): goals met over all cells, then total
// replica-seconds.
func goalTable(sw autoscaleSweep) string {
	var b strings.Builder
	b.WriteString("Issue 24's goal, chart default against the seed's CPU 50%: p99 at or below, at most 0.85x the replica-seconds, no replica removed at the plateau, no 429 at 10 and 30 s.\n\n")
	b.WriteString("| scenario | start delay | chart p99 ms | seed p99 ms | chart replica-s | seed replica-s | ratio | chart 429 share | drops at plateau | goal |\n|---|---|---|---|---|---|---|---|---|---|\n")
	type score struct {
		name   string
		met    int
		cells  int
		rs     float64
		p99Sum float64
		misses map[string]int
	}
	scores := map[string]*score{}
	var order []string
	for _, r := range sw.runs {
		if r.policy.kind != loadPolicy && !r.policy.chart {
			continue
		}
		seed, ok := seedRun(sw, r)
		if !ok {
			continue
		}
		miss := goalsMet(r, seed)
		sc := scores[r.policy.name]
		if sc == nil {
			sc = &score{name: r.policy.name, misses: map[string]int{}}
			scores[r.policy.name] = sc
			order = append(order, r.policy.name)
		}
		sc.cells++
		sc.rs += r.replicaSeconds / seed.replicaSeconds
		sc.p99Sum += r.p99 / seed.p99
		if len(miss) == 0 {
			sc.met++
		}
		for _, m := range miss {
			sc.misses[m]++
		}
		if !r.policy.chart {
			continue
		}
		goal := "met"
		if len(miss) > 0 {
			goal = "missed: " + strings.Join(miss, ", ")
		}
		fmt.Fprintf(&b, "| %s | %.0f s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f%% | %d | %s |\n", r.scenario, r.delay, r.p99*1000, seed.p99*1000,
			r.replicaSeconds, seed.replicaSeconds, r.replicaSeconds/seed.replicaSeconds, 100*r.rejectShare(), r.drops, goal)
	}
	b.WriteString("\nThe load-proportional policies tried (the frontier), best first: cells (scenario x start delay) where every goal is met, then the mean ratios to the seed.\n\n| policy | cells met | mean p99 / seed | mean replica-s / seed | cells missing p99 | cost | plateau | 429 |\n|---|---|---|---|---|---|---|---|\n")
	slices.SortStableFunc(order, func(a, c string) int {
		x, y := scores[a], scores[c]
		if x.met != y.met {
			return y.met - x.met
		}
		return cmp.Compare(x.rs, y.rs)
	})
	for _, n := range order {
		sc := scores[n]
		fmt.Fprintf(&b, "| %s | %d/%d | %.2f | %.2f | %d | %d | %d | %d |\n", n, sc.met, sc.cells, sc.p99Sum/float64(sc.cells), sc.rs/float64(sc.cells),
			sc.misses["p99"], sc.misses["cost"], sc.misses["plateau"], sc.misses["429"])
	}
	return b.String()
}
