package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 <= p <= 100) of sorted values
// with the nearest-rank method: the smallest value with at least p% of the
// values at or below it.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// latencySummary is what the report shows of a set of latencies.
type latencySummary struct {
	P50, P90, P99, Max time.Duration
}

func summarize(lat []time.Duration) latencySummary {
	s := slices.Clone(lat)
	slices.Sort(s)
	return latencySummary{P50: percentile(s, 50), P90: percentile(s, 90), P99: percentile(s, 99), Max: percentile(s, 100)}
}

// poissonSchedule returns the send times of a Poisson process of rate
// (events per second) over d: exponential inter-arrival times.
func poissonSchedule(rng *rand.Rand, rate float64, d time.Duration) []time.Duration {
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
func newZipf(rng *rand.Rand, s float64, n int) func() int {
	z := rand.NewZipf(rng, s, 1, uint64(n-1))
	return func() int { return int(z.Uint64()) }
}
