package autoscale

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/batchgate/batchgate/perf/harness"
)

// serviceQuantiles are the probabilities of a serviceDist's table.
var serviceQuantiles = []float64{0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1}

// serviceDist is a batch's service time per batch size as a table of
// quantiles (ms at serviceQuantiles), sampled by inverting the
// piecewise-linear CDF through them.
type serviceDist struct {
	source string
	ms     map[int][]float64 // batch size -> quantiles
	runs   map[int]int       // batch size -> timed runs behind them
}

// measuredService is the embedded distribution: 100 timed batches of each
// size 1-4 of the generated ResNet50 through the engine (ONNX Runtime
// 1.30.0, one intra-op thread, optimized-graph cache), interleaved
// 1,2,3,4,1,2,..., on a 2-vCPU "AMD EPYC" VM (no AVX-512), 2026-11-27:
//
//	go run -tags autoscale_measure ./perf -autoscale-sim -measure measured.tsv -runs 100
//
// The table holds the CPU time of the thread that ran each batch (the
// process as a whole used 102.7 s of CPU against 102.5 s for that thread:
// ONNX Runtime ran on it alone). CPU time, not wall time, because the VM
// was shared: its load average was 9-13 on 2 vCPUs during the run and wall
// times were 1.9-2x the CPU times (batch 1: median 193 ms wall, 103 ms
// CPU), time spent waiting for a CPU that a pod with a whole CPU (the
// chart's request = limit = 1 for the runtime) does not wait. Other
// tenants still slow a thread down through the shared core and caches
// (that VM's quiet-time batch 1 is not known here), and the project's
// Intel reference VM runs batch 1 in 53.2 ms (docs/performance.md):
// -service-scale rescales. `-service-times FILE` reads a -measure file
// (its cpu_ms) or `runtime bench -min-runs 1 -min-time 0` output instead.
var measuredService = serviceDist{
	source: "embedded: thread CPU time per batch, 2-vCPU AMD EPYC VM, 2026-11-27",
	ms: map[int][]float64{
		1: {88.2, 89.0, 92.6, 95.2, 97.8, 102.5, 106.5, 112.3, 115.2, 118.8, 119.0},
		2: {178.6, 180.1, 187.2, 188.7, 197.8, 204.7, 212.8, 221.3, 224.2, 236.7, 239.8},
		3: {274.9, 275.8, 282.3, 285.6, 294.4, 308.4, 320.2, 334.5, 343.8, 347.9, 349.5},
		4: {363.5, 364.5, 375.9, 380.8, 393.7, 407.7, 419.7, 435.4, 448.3, 480.4, 496.4},
	},
	runs: map[int]int{1: 100, 2: 100, 3: 100, 4: 100},
}

// loadServiceTimes reads either `perf -autoscale-sim -measure` output
// (batch_size, wall_ms, cpu_ms per run: the CPU time is used, what a pod
// with a whole CPU to itself would take) or `runtime bench` output, whose
// lines of six tab-separated fields contribute first_run_ms and
// median_batch_ms (single runs when bench ran with -min-runs 1 -min-time 0).
func loadServiceTimes(path string) (*serviceDist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	samples := map[int][]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		var times []string
		switch len(fields) {
		case 3:
			times = fields[2:3] // cpu_ms
		case 6:
			times = fields[2:4] // first_run_ms, median_batch_ms
		default:
			continue
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil {
			continue // the header
		}
		for _, s := range times {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("%s: bad time %q", path, s)
			}
			samples[n] = append(samples[n], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("%s: no `runtime bench` lines", path)
	}
	d := &serviceDist{source: path, ms: map[int][]float64{}, runs: map[int]int{}}
	for n, s := range samples {
		d.ms[n] = harness.QuantilesOf(s, serviceQuantiles)
		d.runs[n] = len(s)
	}
	return d, nil
}

// scaled returns d with every time multiplied by f: a faster or slower CPU
// than the one measured.
func (d *serviceDist) scaled(f float64) *serviceDist {
	out := &serviceDist{source: fmt.Sprintf("%s, times x%.3g", d.source, f), ms: map[int][]float64{}, runs: d.runs}
	for n, q := range d.ms {
		out.ms[n] = slices.Clone(q)
		for i := range out.ms[n] {
			out.ms[n][i] *= f
		}
	}
	return out
}

// table returns the quantiles for batch size n: measured, or scaled in
// proportion from the nearest measured size.
func (d *serviceDist) table(n int) []float64 {
	if q, ok := d.ms[n]; ok {
		return q
	}
	best := 0
	for k := range d.ms {
		if best == 0 || abs(k-n) < abs(best-n) || abs(k-n) == abs(best-n) && k < best {
			best = k
		}
	}
	out := slices.Clone(d.ms[best])
	for i := range out {
		out[i] *= float64(n) / float64(best)
	}
	return out
}

func abs(x int) int { return max(x, -x) }

// sample draws one batch's service time in seconds.
func (d *serviceDist) sample(rng *rand.Rand, n int) float64 {
	q := d.table(n)
	u := rng.Float64()
	for i := 1; i < len(serviceQuantiles); i++ {
		if u < serviceQuantiles[i] || i == len(serviceQuantiles)-1 {
			a, b := serviceQuantiles[i-1], serviceQuantiles[i]
			return (q[i-1] + (q[i]-q[i-1])*(u-a)/(b-a)) / 1000
		}
	}
	panic("unreachable")
}

// mean is the mean service time of a batch of n in seconds.
func (d *serviceDist) mean(n int) float64 {
	q := d.table(n)
	m := 0.0
	for i := 1; i < len(serviceQuantiles); i++ {
		m += (serviceQuantiles[i] - serviceQuantiles[i-1]) * (q[i] + q[i-1]) / 2
	}
	return m / 1000
}

// capacity is a saturated pod's throughput, images/s: full batches of n.
func (d *serviceDist) capacity(n int) float64 { return float64(n) / d.mean(n) }
