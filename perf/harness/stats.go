package harness

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// QuantilesOf interpolates linearly between order statistics.
func QuantilesOf(samples []float64, ps []float64) []float64 {
	s := slices.Clone(samples)
	slices.Sort(s)
	out := make([]float64, len(ps))
	for i, p := range ps {
		x := p * float64(len(s)-1)
		lo := int(x)
		hi := min(lo+1, len(s)-1)
		out[i] = s[lo] + (s[hi]-s[lo])*(x-float64(lo))
	}
	return out
}

// Percentile returns the p-th percentile (0 <= p <= 100) of sorted values
// with the nearest-rank method: the smallest value with at least p% of the
// values at or below it.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// LatencySummary is what the report shows of a set of latencies.
type LatencySummary struct {
	P50, P90, P99, Max time.Duration
}

// Summarize is the percentiles and maximum of lat.
func Summarize(lat []time.Duration) LatencySummary {
	s := slices.Clone(lat)
	slices.Sort(s)
	return LatencySummary{P50: Percentile(s, 50), P90: Percentile(s, 90), P99: Percentile(s, 99), Max: Percentile(s, 100)}
}

// PoissonSchedule returns the send times of a Poisson process of rate
// (events per second) over d: exponential inter-arrival times.
func PoissonSchedule(rng *rand.Rand, rate float64, d time.Duration) []time.Duration {
	var out []time.Duration
	t := 0.0
	for {
		t += rng.ExpFloat64() / rate
		at := time.Duration(t * float64(time.Second))
		if at >= d {
			return out
		}
		out = append(out, at)
	}
}

// zipf draws indices in [0, n) with P(k) proportional to 1/(k+1)^s.
func NewZipf(rng *rand.Rand, s float64, n int) func() int {
	z := rand.NewZipf(rng, s, 1, uint64(n-1))
	return func() int { return int(z.Uint64()) }
}
