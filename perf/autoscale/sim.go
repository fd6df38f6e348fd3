package autoscale

// A discrete-event simulation of batchgate pods behind a Service, scaled by
// an HPA. Each pod: a FIFO of waiting requests (at most queueCap; beyond it
// requests get 429) in front of one server (the one-thread runtime) that,
// whenever it is idle, takes up to maxBatch waiting requests as one batch
// and holds them for a service time drawn from the measured distribution
// of that batch size. Latency is arrival to the end of the request's batch.
// Times are seconds.

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// loadPoint is a corner of a piecewise-linear load profile: at time at the
// arrival rate is load times one pod's capacity.
type loadPoint struct{ at, load float64 }

// loadAt interpolates the profile; it is 0 outside it.
func loadAt(profile []loadPoint, t float64) float64 {
	for i := 1; i < len(profile); i++ {
		a, b := profile[i-1], profile[i]
		if t >= a.at && t < b.at {
			return a.load + (b.load-a.load)*(t-a.at)/(b.at-a.at)
		}
	}
	return 0
}

// policyKind is how replicas are decided.
type policyKind int

const (
	fixedReplicas policyKind = iota // no autoscaler: minReplicas pods
	queuePolicy                     // KEDA Prometheus trigger on sum(inference_queue_depth)
	cpuPolicy                       // HPA on CPU utilization
	loadPolicy                      // KEDA Prometheus triggers on runtime load and expected wait (load.go)
)

// scalePolicy is one autoscaling configuration.
type scalePolicy struct {
	name       string
	kind       policyKind
	target     float64 // queue depth per replica, or CPU utilization (0.5 = 50%)
	cpuRequest float64 // cores a pod requests (CPU policy's denominator)
	proxyCPU   bool    // CPU policy: the proxy's CPU counts (a pod Resource metric); else the runtime container's alone
	behavior   hpaBehavior
	sweep      bool       // one of the swept queue targets (plots)
	load       loadSignal // loadPolicy: the signal; target is the utilization per replica
	chart      bool       // the chart's default (read from values.yaml)
}

// proxyCPUShare is the proxy's CPU per request as a share of the runtime's
// per image: 16-19 ms against 54-57 ms on the reference VM
// (docs/performance.md, "Latest figures"), so it scales with the CPU.
const proxyCPUShare = 0.31

// simWindow is the reporting window of the time series, seconds.
const simWindow = 30.0

// simConfig is one simulation run.
type simConfig struct {
	seed        uint64
	profile     []loadPoint
	capacity    float64 // one pod's saturation throughput, images/s: the unit of load
	dist        *serviceDist
	policy      scalePolicy
	startDelay  float64 // pod creation to ready (image pull, model load, warm-up)
	minReplicas int
	maxReplicas int
	queueCap    int
	maxBatch    int
	lb          string  // "rr" (round-robin), "random" or "least" (shortest queue)
	syncPeriod  float64 // HPA sync (and KEDA polling) period
	syncPhase   float64 // first sync; Prometheus scrapes at multiples of scrapePeriod
	scrape      float64 // Prometheus scrape interval of inference_queue_depth
	cpuWindow   float64 // metrics-server resolution: CPU is averaged over this window
	proxyCPU    float64 // proxy CPU seconds per request (decode + resize), 429s included
	proxyLimit  float64 // proxy container CPU limit, cores
	window      float64 // reporting window for the time series
}

// defaultSimConfig fills the fixed parts from the chart and the defaults.
func defaultSimConfig(d *serviceDist) simConfig {
	return simConfig{
		seed: 1, dist: d, capacity: d.capacity(4), minReplicas: 1, maxReplicas: 5, queueCap: 64, maxBatch: 4,
		lb: "rr", syncPeriod: 15, syncPhase: 7.5, scrape: 15, cpuWindow: 15, proxyCPU: proxyCPUShare * d.mean(1), proxyLimit: 1,
		window: simWindow, startDelay: 30,
	}
}

type simPod struct {
	created, readyAt float64
	removed          bool
	readySeen        bool    // its ready event was handled
	goneAt           float64 // -1 while it exists
	waiting          []float64
	head             int
	batch            []float64 // arrival times of the batch in service
	busyUntil        float64
	serviceStart     float64
	busy             float64 // completed service seconds
	proxyCPU         float64 // cumulative proxy CPU seconds
	lastBusy         float64 // at the previous CPU sample
	lastProxy        float64
	cpuRuntime       float64 // cores, over the last complete window
	cpuProxy         float64
	cpuSampleAt      float64
	area             float64 // integral of depth over time
	areaAt           float64
	itemTime         float64 // the batcher's moving average of busy time per item (0 until a batch ran)
	demand           float64 // cumulative itemTime of the requests routed to it, 429s included
	samples          []podSample
}

func (p *simPod) depth() int { return len(p.waiting) - p.head + len(p.batch) }

func (p *simPod) ready(t float64) bool {
	return !p.removed && t >= p.readyAt
}

func (p *simPod) account(t float64) {
	p.area += float64(p.depth()) * (t - p.areaAt)
	p.areaAt = t
}

// stepPoint is the replica count from at on.
type stepPoint struct {
	at           float64
	ready, total int
}

// windowStats is one reporting window (by arrival time).
type windowStats struct {
	arrivals, rejected int
	lat                []time.Duration
}

// simResult is what a run measured.
type simResult struct {
	arrivals, served, rejected, leftover int
	latencies                            []time.Duration // served requests
	replicaSeconds                       float64
	firstScaleUp                         float64 // -1: never
	maxReplicas                          int
	steps                                []stepPoint
	windows                              []windowStats
	depthArea                            float64 // sum over pods of the depth integral
	end                                  float64
	busySeconds                          float64
}

// simulate runs cfg to the end of its profile. Arrivals stop there; what is
// still queued or in service then is counted as leftover.
func simulate(cfg simConfig) simResult {
	end := cfg.profile[len(cfg.profile)-1].at
	arrivals := poissonArrivals(rand.New(rand.NewPCG(cfg.seed, 1)), cfg.profile, cfg.capacity)
	s := &sim{cfg: cfg, svc: rand.New(rand.NewPCG(cfg.seed, 2)), lbRand: rand.New(rand.NewPCG(cfg.seed, 3)),
		res:        simResult{firstScaleUp: -1, end: end, arrivals: len(arrivals)},
		nextScrape: 0, nextSync: cfg.syncPhase, nextCPU: cfg.cpuWindow}
	s.res.windows = make([]windowStats, int(math.Ceil(end/cfg.window)))
	for range cfg.minReplicas {
		s.newPod(0, 0) // the run starts from min replicas, ready
	}
	s.current = cfg.minReplicas
	s.res.maxReplicas = s.current
	if cfg.policy.kind != fixedReplicas {
		s.hpa = newHPAController(cfg.policy.behavior, cfg.minReplicas, cfg.maxReplicas)
	}
	s.record(0)
	ai := 0
	for {
		// The earliest event; ties go in this order: completion, ready,
		// arrival, scrape, CPU sample, sync.
		t, kind, who := math.Inf(1), 0, -1
		for i, p := range s.pods {
			if p.goneAt < 0 && len(p.batch) > 0 && p.busyUntil < t {
				t, kind, who = p.busyUntil, 1, i
			}
		}
		for i, p := range s.pods {
			if !p.removed && !p.readySeen && p.readyAt < t {
				t, kind, who = p.readyAt, 2, i
			}
		}
		if ai < len(arrivals) && arrivals[ai] < t {
			t, kind = arrivals[ai], 3
		}
		if s.nextScrape < t {
			t, kind = s.nextScrape, 4
		}
		if s.nextCPU < t {
			t, kind = s.nextCPU, 5
		}
		if s.nextSync < t {
			t, kind = s.nextSync, 6
		}
		if t >= end {
			break
		}
		switch kind {
		case 1:
			s.complete(s.pods[who], t)
		case 2: // a pod becomes ready
			s.pods[who].readySeen = true
			s.record(t)
		case 3:
			ai++
			s.arrive(t)
		case 4:
			s.scrape(t)
		case 5:
			s.sampleCPU(t)
		case 6:
			s.sync(t)
		}
	}
	return s.finish(end)
}

// sim is one simulation's state.
type sim struct {
	cfg          simConfig
	svc, lbRand  *rand.Rand // service times; load balancing
	res          simResult
	pods         []*simPod
	current      int // replicas, as the HPA set them
	hpa          *hpaController
	lastQueueSum float64 // at the last scrape
	sig          loadState
	rr           int
	readyList    []*simPod

	nextScrape, nextSync, nextCPU float64
	scrapeN, syncN, cpuN          int
}

func (s *sim) newPod(t, delay float64) {
	s.pods = append(s.pods, &simPod{created: t, readyAt: t + delay, readySeen: delay == 0, goneAt: -1, areaAt: t})
}

// record adds a step when the ready or total replicas changed.
func (s *sim) record(t float64) {
	r := 0
	for _, p := range s.pods {
		if p.ready(t) {
			r++
		}
	}
	if n := len(s.res.steps); n > 0 && s.res.steps[n-1].ready == r && s.res.steps[n-1].total == s.current {
		return
	}
	s.res.steps = append(s.res.steps, stepPoint{t, r, s.current})
}

// startBatch takes up to maxBatch waiting requests into service.
func (s *sim) startBatch(p *simPod, t float64) {
	n := min(s.cfg.maxBatch, len(p.waiting)-p.head)
	p.batch = append(p.batch[:0], p.waiting[p.head:p.head+n]...)
	p.head += n
	if p.head > 1024 && p.head*2 > len(p.waiting) {
		p.waiting = append(p.waiting[:0], p.waiting[p.head:]...)
		p.head = 0
	}
	p.serviceStart = t
	p.busyUntil = t + s.cfg.dist.sample(s.svc, n)
}

// complete ends p's batch at t.
func (s *sim) complete(p *simPod, t float64) {
	p.account(t)
	for _, a := range p.batch {
		d := time.Duration((t - a) * float64(time.Second))
		s.res.latencies = append(s.res.latencies, d)
		w := &s.res.windows[int(a/s.cfg.window)]
		w.lat = append(w.lat, d)
	}
	s.res.served += len(p.batch)
	p.busy += t - p.serviceStart
	per := (t - p.serviceStart) / float64(len(p.batch))
	if p.itemTime != 0 {
		per = 0.8*p.itemTime + 0.2*per
	}
	p.itemTime = per
	p.batch = p.batch[:0]
	if len(p.waiting) > p.head {
		s.startBatch(p, t)
	} else if p.removed {
		p.goneAt = t
	}
}

// arrive routes a request arriving at t to a ready pod, or rejects it.
func (s *sim) arrive(t float64) {
	w := &s.res.windows[int(t/s.cfg.window)]
	w.arrivals++
	p := s.route(t)
	if p != nil {
		p.demand += p.itemTime
	}
	if p == nil || len(p.waiting)-p.head >= s.cfg.queueCap {
		s.res.rejected++
		w.rejected++
		if p != nil {
			p.proxyCPU += s.cfg.proxyCPU // decoded before the queue refused it
		}
		return
	}
	p.proxyCPU += s.cfg.proxyCPU
	p.account(t)
	p.waiting = append(p.waiting, t)
	if len(p.batch) == 0 {
		s.startBatch(p, t)
	}
}

// route picks the ready pod for an arrival at t (nil: none is ready).
func (s *sim) route(t float64) *simPod {
	s.readyList = s.readyList[:0]
	for _, p := range s.pods {
		if p.ready(t) {
			s.readyList = append(s.readyList, p)
		}
	}
	switch {
	case len(s.readyList) == 0:
		return nil
	case s.cfg.lb == "random":
		return s.readyList[s.lbRand.IntN(len(s.readyList))]
	case s.cfg.lb == "least":
		p := s.readyList[0]
		for _, q := range s.readyList[1:] {
			if q.depth() < p.depth() {
				p = q
			}
		}
		return p
	}
	s.rr++
	return s.readyList[s.rr%len(s.readyList)]
}

// scrape is Prometheus scraping every pod's gauge.
func (s *sim) scrape(t float64) {
	s.scrapeN++
	s.nextScrape = float64(s.scrapeN) * s.cfg.scrape
	s.lastQueueSum = 0
	for _, p := range s.pods {
		if p.goneAt < 0 && t >= p.readyAt {
			s.lastQueueSum += float64(p.depth())
		}
	}
	if s.cfg.policy.kind == loadPolicy {
		s.sig.scrape(t, s.pods, s.cfg.policy.load)
	}
}

// sampleCPU is metrics-server: CPU over the last window.
func (s *sim) sampleCPU(t float64) {
	cfg := s.cfg
	s.cpuN++
	s.nextCPU = float64(s.cpuN+1) * cfg.cpuWindow
	for _, p := range s.pods {
		busy := p.busy
		if len(p.batch) > 0 {
			busy += t - p.serviceStart
		}
		proxy := min(p.proxyCPU-p.lastProxy, cfg.proxyLimit*cfg.cpuWindow)
		p.cpuRuntime, p.cpuProxy = (busy-p.lastBusy)/cfg.cpuWindow, proxy/cfg.cpuWindow
		p.cpuSampleAt = t
		p.lastBusy, p.lastProxy = busy, p.proxyCPU
	}
}

// sync is the HPA's sync: the policy's desired replicas, through the
// HPA's behavior, then pods added (starting) or removed.
func (s *sim) sync(t float64) {
	cfg := s.cfg
	s.syncN++
	s.nextSync = cfg.syncPhase + float64(s.syncN)*cfg.syncPeriod
	if s.hpa == nil {
		return
	}
	var desired int
	ok := true
	switch cfg.policy.kind {
	case queuePolicy:
		desired = externalReplicas(s.lastQueueSum, cfg.policy.target, s.current)
	case loadPolicy:
		desired = s.sig.replicas(cfg.policy, s.current)
	case cpuPolicy:
		desired, ok = cpuReplicas(s.podCPUs(t), cfg.policy.target, s.current)
	}
	next := s.hpa.reconcile(t, s.current, desired, ok)
	if next > s.current {
		if s.res.firstScaleUp < 0 {
			s.res.firstScaleUp = t
		}
		for range next - s.current {
			s.newPod(t, cfg.startDelay)
		}
	}
	for k := s.current - next; k > 0; k-- {
		removeOne(s.pods, t)
	}
	s.current = next
	s.res.maxReplicas = max(s.res.maxReplicas, s.current)
	s.record(t)
}

// podCPUs is what the CPU policy's HPA sees of each pod at t.
func (s *sim) podCPUs(t float64) []podCPU {
	cfg := s.cfg
	var in []podCPU
	for _, p := range s.pods {
		if p.goneAt >= 0 {
			continue
		}
		pc := podCPU{usage: p.cpuRuntime, request: cfg.policy.cpuRequest, ignored: p.removed}
		if cfg.policy.proxyCPU {
			pc.usage += p.cpuProxy
		}
		// Not ready, or within the initialization period with
		// a sample whose window began before readiness.
		pc.unready = t < p.readyAt || p.cpuSampleAt == 0 ||
			(t < p.created+hpaCPUInitPeriod && p.cpuSampleAt < p.readyAt+cfg.cpuWindow)
		in = append(in, pc)
	}
	return in
}

// finish totals the pods at end.
func (s *sim) finish(end float64) simResult {
	res := s.res
	for _, p := range s.pods {
		p.account(end)
		res.depthArea += p.area
		res.leftover += p.depth()
		res.busySeconds += p.busy
		if len(p.batch) > 0 {
			res.busySeconds += end - p.serviceStart
		}
		gone := end
		if p.goneAt >= 0 {
			gone = p.goneAt
		}
		res.replicaSeconds += gone - p.created
	}
	return res
}

// removeOne scales one pod away the way a ReplicaSet picks: a pod not yet
// ready first, then the newest. It stops getting traffic at once and
// drains what it holds.
func removeOne(pods []*simPod, t float64) {
	var pick *simPod
	for _, p := range pods {
		if p.removed {
			continue
		}
		if pick == nil {
			pick = p
			continue
		}
		pu, qu := t < p.readyAt, t < pick.readyAt
		if pu && !qu || pu == qu && p.created >= pick.created {
			pick = p
		}
	}
	if pick == nil {
		return
	}
	pick.removed = true
	if pick.depth() == 0 {
		pick.goneAt = t
	}
}

// poissonArrivals draws a non-homogeneous Poisson process of rate
// load(t)*capacity by thinning.
func poissonArrivals(rng *rand.Rand, profile []loadPoint, capacity float64) []float64 {
	peak := 0.0
	for _, p := range profile {
		peak = max(peak, p.load)
	}
	end := profile[len(profile)-1].at
	lmax := peak * capacity
	var out []float64
	for t := rng.ExpFloat64() / lmax; t < end; t += rng.ExpFloat64() / lmax {
		if rng.Float64()*peak < loadAt(profile, t) {
			out = append(out, t)
		}
	}
	return out
}

// pctSeconds returns the nearest-rank p-th percentile of d in seconds (sorts d).
func pctSeconds(d []time.Duration, p float64) float64 {
	slices.Sort(d)
	return harness.Percentile(d, p).Seconds()
}
