package routing

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// windowSlots is how many slots a window is cut into: it slides by
// Window/windowSlots.
const windowSlots = 10

// latencyBounds are the upper bounds of the latency buckets behind the p99:
// 0.5 ms to about 65 s, 2^(1/4) apart (19% steps). p99 is the bound of the
// bucket holding the 99th percentile, so it errs high by at most 19%.
var latencyBounds = func() []time.Duration {
	var b []time.Duration
	for x := 0.5e-3; x < 70; x *= math.Pow(2, 0.25) {
		b = append(b, time.Duration(x*float64(time.Second)))
	}
	return b
}()

type slot struct {
	start    time.Time // zero: empty
	requests int
	errors   int
	latency  []uint32 // per latencyBounds bucket, plus one above the last
}

// Window is the rollback controller's view of one version: requests, errors
// and latencies over the last Rollback.Window, in windowSlots slots. Its
// mutex guards the slots and the verdict; Observe is called from request
// goroutines.
type Window struct {
	spec    Rollback
	now     func() time.Time
	mu      sync.Mutex
	slots   [windowSlots]slot
	tripped bool
}

// NewWindow returns a window judging by spec (defaults applied by Parse).
func NewWindow(spec Rollback) *Window {
	return &Window{spec: spec, now: time.Now}
}

// Breach says why a version was rolled back.
type Breach struct {
	Requests  int
	ErrorRate float64
	P99       time.Duration
	Reason    string
}

// Observe records one request that spent took in the version (failed: the
// version failed it) and judges the window. It returns the breach the first
// time the limits are crossed, and nil otherwise, including every time after
// (a rolled-back version stays so until the routing file changes, which
// makes a new Window).
func (w *Window) Observe(took time.Duration, failed bool) *Breach {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tripped {
		return nil
	}
	width := w.spec.Window / windowSlots
	if width <= 0 {
		width = 1
	}
	start := now.Truncate(width)
	s := &w.slots[int(start.UnixNano()/int64(width))%windowSlots]
	if !s.start.Equal(start) {
		lat := s.latency
		if lat == nil {
			lat = make([]uint32, len(latencyBounds)+1)
		}
		clear(lat)
		*s = slot{start: start, latency: lat}
	}
	s.requests++
	if failed {
		s.errors++
	} else {
		i := 0
		for i < len(latencyBounds) && took > latencyBounds[i] {
			i++
		}
		s.latency[i]++
	}
	b := w.judge(now)
	if b != nil {
		w.tripped = true
	}
	return b
}

// judge sums the slots still in the window and checks the limits.
func (w *Window) judge(now time.Time) *Breach {
	var req, errs int
	hist := make([]uint32, len(latencyBounds)+1)
	oldest := now.Add(-w.spec.Window)
	for i := range w.slots {
		s := &w.slots[i]
		if s.start.IsZero() || !s.start.After(oldest) {
			continue
		}
		req += s.requests
		errs += s.errors
		for j, n := range s.latency {
			hist[j] += n
		}
	}
	if req < w.spec.MinRequests || req == 0 {
		return nil
	}
	b := &Breach{Requests: req, ErrorRate: float64(errs) / float64(req)}
	if ok := req - errs; ok > 0 {
		rank := int(math.Ceil(0.99 * float64(ok)))
		var acc int
		for j, n := range hist {
			acc += int(n)
			if acc >= rank {
				if j < len(latencyBounds) {
					b.P99 = latencyBounds[j]
				} else {
					b.P99 = time.Duration(math.MaxInt64)
				}
				break
			}
		}
	}
	switch {
	case w.spec.MaxErrorRate > 0 && b.ErrorRate > w.spec.MaxErrorRate:
		b.Reason = fmt.Sprintf("error rate %.1f%% over %d requests in %v is above max_error_rate %.1f%%",
			100*b.ErrorRate, req, w.spec.Window, 100*w.spec.MaxErrorRate)
	case w.spec.MaxP99 > 0 && b.P99 > w.spec.MaxP99:
		b.Reason = fmt.Sprintf("p99 latency about %v over %d requests in %v is above max_p99 %v",
			b.P99.Round(time.Millisecond), req, w.spec.Window, w.spec.MaxP99)
	default:
		return nil
	}
	return b
}

// Tripped reports whether the window has rolled its version back.
func (w *Window) Tripped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tripped
}

// Untrip forgets a verdict the caller could not act on (rolling back would
// have left the model with no traffic): judging resumes with the next
// request.
func (w *Window) Untrip() {
	w.mu.Lock()
	w.tripped = false
	w.mu.Unlock()
}
