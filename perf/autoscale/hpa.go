package autoscale

// The Kubernetes HorizontalPodAutoscaler, as pkg/controller/podautoscaler
// (replica_calculator.go and horizontal.go) implements it: the replica
// formulas for an External AverageValue metric (what a KEDA trigger is) and
// for a CPU Resource metric, the 10% tolerance, and spec.behavior
// (stabilization windows and rate policies). Times are seconds.

import (
	"math"
)

// hpaTolerance is --horizontal-pod-autoscaler-tolerance's default.
const hpaTolerance = 0.1

// hpaCPUInitPeriod is --horizontal-pod-autoscaler-cpu-initialization-period's
// default: within it a pod's CPU sample counts only once a whole metric
// window lies after the pod became ready.
const hpaCPUInitPeriod = 300.0

// scalingPolicy is one entry of behavior.scaleUp/scaleDown.policies.
type scalingPolicy struct {
	pods    bool    // type Pods; else Percent
	value   float64 // pods or percent
	periodS float64
}

// scalingRules is behavior.scaleUp or behavior.scaleDown (selectPolicy Max).
type scalingRules struct {
	stabilizationS float64
	policies       []scalingPolicy
}

// hpaBehavior is spec.behavior.
type hpaBehavior struct{ up, down scalingRules }

// chartBehavior was helm/batchgate/templates/scaledobject.yaml's before issue 24 (keda.targetQueueDepth 8; the chart default is now read from values.yaml, load.go): scale up
// +100% per 15 s with no stabilization; scale down after a 300 s
// stabilization window, 1 pod per 60 s.
var chartBehavior = hpaBehavior{
	up:   scalingRules{0, []scalingPolicy{{pods: false, value: 100, periodS: 15}}},
	down: scalingRules{300, []scalingPolicy{{pods: true, value: 1, periodS: 60}}},
}

// defaultBehavior is what the API server fills in when spec.behavior is
// absent (the seed's HPA, and the chart's keda.enabled=false HPA): scale up
// by the larger of +100% and +4 pods per 15 s, scale down after 300 s by up
// to 100% per 15 s.
var defaultBehavior = hpaBehavior{
	up:   scalingRules{0, []scalingPolicy{{pods: false, value: 100, periodS: 15}, {pods: true, value: 4, periodS: 15}}},
	down: scalingRules{300, []scalingPolicy{{pods: false, value: 100, periodS: 15}}},
}

type timedValue struct {
	at    float64
	value int
}

// hpaController keeps what the controller keeps per HPA between syncs: the
// recommendations of the stabilization windows and the scale events of the
// rate policies.
type hpaController struct {
	behavior           hpaBehavior
	minRepl, maxRepl   int
	recommendations    []timedValue
	upEvents, downEvts []timedValue
}

func newHPAController(b hpaBehavior, minReplicas, maxReplicas int) *hpaController {
	return &hpaController{behavior: b, minRepl: minReplicas, maxRepl: maxReplicas}
}

// reconcile is one sync at now: current is spec.replicas, metricDesired the
// metric's proposal (ok false when the metric gave none: no change). It
// returns the replicas to set.
func (h *hpaController) reconcile(now float64, current, metricDesired int, ok bool) int {
	var desired int
	switch {
	case current > h.maxRepl:
		desired = h.maxRepl
	case current < h.minRepl:
		desired = h.minRepl
	case !ok:
		return current
	default:
		desired = h.normalize(now, current, metricDesired)
	}
	if desired > current {
		h.upEvents = storeEvent(h.upEvents, now, desired-current, longestPeriod(h.behavior.up))
	} else if desired < current {
		h.downEvts = storeEvent(h.downEvts, now, current-desired, longestPeriod(h.behavior.down))
	}
	return desired
}

// normalize is normalizeDesiredReplicasWithBehaviors: stabilize, then limit
// the rate of change.
func (h *hpaController) normalize(now float64, current, desired int) int {
	up, down := desired, desired
	upCut, downCut := now-h.behavior.up.stabilizationS, now-h.behavior.down.stabilizationS
	kept := h.recommendations[:0]
	for _, r := range h.recommendations {
		if r.at > upCut {
			up = min(up, r.value)
		}
		if r.at > downCut {
			down = max(down, r.value)
		}
		if r.at > upCut || r.at > downCut {
			kept = append(kept, r) // older ones can never matter again
		}
	}
	h.recommendations = append(kept, timedValue{now, desired})
	rec := min(max(current, up), down)

	if rec > current {
		limit := max(h.upLimit(now, current), current)
		return min(rec, h.maxRepl, limit)
	}
	if rec < current {
		limit := min(h.downLimit(now, current), current)
		return max(rec, h.minRepl, limit)
	}
	return rec
}

// upLimit is calculateScaleUpLimitWithScalingRules (selectPolicy Max).
func (h *hpaController) upLimit(now float64, current int) int {
	best := math.MinInt
	for _, p := range h.behavior.up.policies {
		start := current - changeIn(h.upEvents, now, p.periodS) + changeIn(h.downEvts, now, p.periodS)
		var proposed int
		if p.pods {
			proposed = start + int(p.value)
		} else {
			proposed = int(math.Ceil(float64(start) * (1 + p.value/100)))
		}
		best = max(best, proposed)
	}
	return best
}

// downLimit is calculateScaleDownLimitWithBehaviors (selectPolicy Max).
func (h *hpaController) downLimit(now float64, current int) int {
	best := math.MaxInt
	for _, p := range h.behavior.down.policies {
		start := current - changeIn(h.upEvents, now, p.periodS) + changeIn(h.downEvts, now, p.periodS)
		var proposed int
		if p.pods {
			proposed = start - int(p.value)
		} else {
			proposed = int(float64(start) * (1 - p.value/100))
		}
		best = min(best, proposed)
	}
	return best
}

// changeIn sums the events strictly after now-period.
func changeIn(events []timedValue, now, period float64) int {
	n := 0
	for _, e := range events {
		if e.at > now-period {
			n += e.value
		}
	}
	return n
}

func longestPeriod(r scalingRules) float64 {
	l := 0.0
	for _, p := range r.policies {
		l = max(l, p.periodS)
	}
	return l
}

// storeEvent records a scale event, dropping those older than the longest
// policy period (the controller overwrites them in place: same effect).
func storeEvent(events []timedValue, now float64, change int, longest float64) []timedValue {
	kept := events[:0]
	for _, e := range events {
		if e.at > now-longest {
			kept = append(kept, e)
		}
	}
	return append(kept, timedValue{now, change})
}

// externalReplicas is GetExternalPerPodMetricReplicas: an External metric
// with an AverageValue target (a KEDA trigger's threshold), usage summed
// over all pods, statusReplicas the pods that exist.
func externalReplicas(usage, target float64, statusReplicas int) int {
	ratio := usage / (target * float64(statusReplicas))
	if math.Abs(1-ratio) <= hpaTolerance {
		return statusReplicas
	}
	return int(math.Ceil(usage / target))
}

// podCPU is one pod as GetResourceReplicas sees it.
type podCPU struct {
	usage, request float64 // cores
	unready        bool    // not ready, or its sample is from its initialization
	ignored        bool    // being deleted
}

// cpuReplicas is GetResourceReplicas for a CPU Utilization target (a
// fraction, 0.5 for 50%): unready pods are left out, or counted as using
// nothing when they would damp a scale-up. ok is false when no pod has a
// usable sample (the controller then leaves the replicas alone).
func cpuReplicas(pods []podCPU, target float64, current int) (int, bool) {
	var use, req float64
	ready, unready := 0, 0
	var unreadyReq float64
	for _, p := range pods {
		switch {
		case p.ignored:
		case p.unready:
			unready++
			unreadyReq += p.request
		default:
			ready++
			use += p.usage
			req += p.request
		}
	}
	if ready == 0 {
		return current, false
	}
	ratio := use / req / target
	if unready == 0 || ratio <= 1 {
		if math.Abs(1-ratio) <= hpaTolerance {
			return current, true
		}
		return int(math.Ceil(ratio * float64(ready))), true
	}
	// Scaling up with unready pods: they count as using 0.
	newRatio := use / (req + unreadyReq) / target
	if math.Abs(1-newRatio) <= hpaTolerance || newRatio < 1 {
		return current, true
	}
	n := int(math.Ceil(newRatio * float64(ready+unready)))
	if n < current {
		return current, true
	}
	return n, true
}
