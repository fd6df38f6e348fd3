// Package cost is `go run ./perf -cost`: what an image costs on the chart's
// default pod, in core-seconds per 1000 images (issue 30).
//
//   - reserved: what the scheduler bills, the pod's CPU requests (read
//     from the chart's values.yaml) for as long as it takes to serve 1000
//     images at that pod's throughput;
//   - used: what the two processes spent (their own CPU accounting,
//     /proc/<pid>/stat), per 1000 images answered.
//
// Each model variant (fp32, int8) is measured at two points: saturation
// (closed-loop clients, every image distinct) and the autoscaling target
// (an open-loop Poisson load at keda.targetUtilization of that saturated
// throughput, where the chart's autoscaler keeps each pod), with the p99
// there. The processes run as the chart's default pod runs them: the
// chart's batch sizes, the proxy's other settings at their defaults, the
// proxy on GOMAXPROCS=1 (automaxprocs reads its 1-CPU limit), the runtime
// on its one thread.
//
// The anchor is the seed-like server batchgate replaces: FastAPI +
// PyTorch (torchvision's ResNet50, PIL preprocessing, one thread,
// seed_server.py beside this file), measured at saturation on the same
// images when Debian's python3-torch, python3-torchvision, python3-fastapi,
// python3-uvicorn and python3-multipart are installed; it reserves the one
// core it runs on (the seed's CPU request in `perf -autoscale-sim`).
package cost

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/perf/harness"
)

// Config is one `go run ./perf -cost` run.
type Config struct {
	Variants []string      // model variants: "fp32", "int8"
	Tiny     bool          // the tiny test models instead of ResNet50 (TestShort)
	Duration time.Duration // each measurement, after a warm-up
	Clients  int           // closed-loop clients at saturation
	Values   string        // the chart's values.yaml; "": the checkout's
	Anchor   bool          // also the FastAPI + PyTorch anchor, when installed
}

// DefaultConfig is `go run ./perf -cost` without flags.
func DefaultConfig() Config {
	return Config{Variants: []string{"fp32", "int8"}, Duration: 30 * time.Second, Clients: 4, Anchor: true}
}

// Chart is what the measurement reads from the chart's values.yaml.
type Chart struct {
	ProxyCPU, RuntimeCPU float64 // requests, cores
	MaxBatch             int     // proxy.maxBatchSize (the runtime's is at least it)
	Target               float64 // keda.targetUtilization
}

// Reserved is the pod's CPU request, cores.
func (c Chart) Reserved() float64 { return c.ProxyCPU + c.RuntimeCPU }

// ReadChart reads the default pod's requests, batch size and autoscaling
// target from a values.yaml.
func ReadChart(path string) (Chart, error) {
	var v struct {
		Proxy struct {
			Resources    struct{ Requests struct{ CPU string } }
			MaxBatchSize int `yaml:"maxBatchSize"`
		}
		Runtime struct {
			Resources struct{ Requests struct{ CPU string } }
		}
		KEDA struct {
			TargetUtilization float64 `yaml:"targetUtilization"`
		} `yaml:"keda"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Chart{}, err
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return Chart{}, fmt.Errorf("%s: %w", path, err)
	}
	var c Chart
	var err1, err2 error
	c.ProxyCPU, err1 = cores(v.Proxy.Resources.Requests.CPU)
	c.RuntimeCPU, err2 = cores(v.Runtime.Resources.Requests.CPU)
	c.MaxBatch, c.Target = v.Proxy.MaxBatchSize, v.KEDA.TargetUtilization
	if err := errors.Join(err1, err2); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if c.MaxBatch < 1 || c.Target <= 0 || c.Target > 1 {
		return c, fmt.Errorf("%s: want proxy.maxBatchSize >= 1 and keda.targetUtilization in (0, 1], got %d and %g", path, c.MaxBatch, c.Target)
	}
	return c, nil
}

// cores parses a Kubernetes CPU quantity: "250m", "1", "1.5".
func cores(q string) (float64, error) {
	scale := 1.0
	if v, ok := strings.CutSuffix(q, "m"); ok {
		q, scale = v, 1e-3
	}
	v, err := strconv.ParseFloat(q, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("CPU request %q: want cores such as 250m or 1", q)
	}
	return v * scale, nil
}

// Point is one measurement.
type Point struct {
	Server   string  // "batchgate fp32", "FastAPI + PyTorch (seed-like)"
	Load     string  // "saturation", "target 0.7"
	PerSec   float64 // images answered per second
	Images   int     // images answered (200)
	Failed   int     // other answers
	P99ms    float64
	ProxyCPU float64 // core-seconds per 1000 images; the anchor's whole process here
	RtCPU    float64 // core-seconds per 1000 images; 0 for the anchor
	Reserved float64 // cores the pod requests
}

// Used is the core-seconds both processes spent per 1000 images.
func (p Point) Used() float64 { return p.ProxyCPU + p.RtCPU }

// ReservedPer1000 is what the scheduler bills per 1000 images: the pod's
// request for as long as 1000 images take at the pod's throughput, which at
// the autoscaling target is the target's share of its saturated one.
func (p Point) ReservedPer1000() float64 {
	if p.PerSec <= 0 {
		return math.Inf(1)
	}
	return 1000 * p.Reserved / p.PerSec
}

// Run measures every variant and the anchor and prints the report.
func Run(ctx context.Context, c Config) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "batchgate-cost-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := harness.BuildBinaries(root, dir)
	if err != nil {
		return err
	}
	pts, chart, err := Measure(ctx, root, bins, c, func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	if err != nil {
		return err
	}
	fmt.Print(Report(c, chart, pts))
	return nil
}

// Measure runs the measurements of c on the binaries of the checkout at
// root.
func Measure(ctx context.Context, root string, bins harness.Binaries, c Config, logf func(string, ...any)) ([]Point, Chart, error) {
	values := c.Values
	if values == "" {
		values = filepath.Join(root, "helm/batchgate/values.yaml")
	}
	chart, err := ReadChart(values)
	if err != nil {
		return nil, chart, err
	}
	pool, _, err := harness.SizedPool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), 500, 375, 32, 1)
	if err != nil {
		return nil, chart, err
	}
	var pts []Point
	for _, variant := range c.Variants {
		model, err := bins.FetchModel(ctx, root, variant, c.Tiny)
		if err != nil {
			return nil, chart, err
		}
		logf("cost: batchgate %s (%s)", variant, filepath.Base(model))
		more, err := measureBatchgate(ctx, root, bins, model, variant, chart, pool, c)
		if err != nil {
			return nil, chart, fmt.Errorf("batchgate %s: %w", variant, err)
		}
		pts = append(pts, more...)
	}
	if c.Anchor {
		p, err := measureAnchor(ctx, root, pool, c, logf)
		switch {
		case errors.Is(err, errNoAnchor):
			logf("cost: %v", err)
		case err != nil:
			return nil, chart, fmt.Errorf("anchor: %w", err)
		default:
			pts = append(pts, p)
		}
	}
	return pts, chart, nil
}

// measureBatchgate starts the default pod's processes on model and
// measures saturation, then the autoscaling target.
func measureBatchgate(ctx context.Context, root string, bins harness.Binaries, model, variant string, chart Chart, pool []harness.Upload, c Config) ([]Point, error) {
	s, err := harness.StartStack(bins, harness.StackConfig{Model: model, ORTLibrary: harness.ORTLibrary(root),
		ORTCache: filepath.Join(root, ".deps/ort-cache"), MaxBatch: chart.MaxBatch, ProxyDefaults: true,
		ProxyEnv: []string{"GOMAXPROCS=1", "DRAIN_DELAY=0s"}})
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	pids := []int{s.Proxy().Pid(), s.Runtime().Pid()}
	client := harness.NewClient(s.URL + "/predict")
	server := "batchgate " + variant
	sat := saturate(ctx, client, pool, pids, c)
	sat.Server, sat.Reserved = server, chart.Reserved()
	if sat.Images == 0 {
		return nil, fmt.Errorf("no image answered at saturation (%d failed)", sat.Failed)
	}
	at := paced(ctx, client, pool, pids, chart.Target*sat.PerSec, c)
	at.Server, at.Load, at.Reserved = server, fmt.Sprintf("target %g", chart.Target), chart.Reserved()
	return []Point{sat, at}, nil
}

// cpuOf sums the CPU seconds of pids so far.
func cpuOf(pids []int) []float64 {
	out := make([]float64, len(pids))
	for i, p := range pids {
		out[i] = harness.CPUSeconds(p)
	}
	return out
}

// pick chooses a pool image at random.
func pick(pool []harness.Upload) func(*rand.Rand) harness.Upload {
	return func(rng *rand.Rand) harness.Upload { return pool[rng.IntN(len(pool))] }
}

// saturate runs c.Clients closed-loop clients: a warm-up, then c.Duration
// measured, with the CPU pids spent meanwhile. pids[0] is the proxy (or
// the anchor's one process), pids[1] the runtime.
func saturate(ctx context.Context, client *harness.Client, pool []harness.Upload, pids []int, c Config) Point {
	harness.ClosedLoop(ctx, client, c.Clients, 0, harness.Warmup(c.Duration), pick(pool), true, func() {})
	before, t0 := cpuOf(pids), time.Now()
	res, _, _ := harness.ClosedLoop(ctx, client, c.Clients, 0, c.Duration, pick(pool), true, func() {})
	return point("saturation", res, time.Since(t0), pids, before)
}

// paced sends a Poisson load of rate images/s for c.Duration.
func paced(ctx context.Context, client *harness.Client, pool []harness.Upload, pids []int, rate float64, c Config) Point {
	schedule := harness.PoissonSchedule(rand.New(rand.NewPCG(30, 1)), rate, c.Duration)
	before, t0 := cpuOf(pids), time.Now()
	res := harness.OpenLoop(ctx, client, schedule, func(i int) harness.Upload { return pool[i%len(pool)] }, true, 256, func() {})
	return point("", res, time.Since(t0), pids, before)
}

// point tallies results measured over took, with the CPU pids spent since
// before.
func point(load string, res []harness.Result, took time.Duration, pids []int, before []float64) Point {
	after := cpuOf(pids)
	p := Point{Load: load}
	var lat []time.Duration
	for _, r := range res {
		if r.Status == http.StatusOK {
			p.Images++
			lat = append(lat, r.Latency)
		} else {
			p.Failed++
		}
	}
	if p.Images == 0 {
		return p
	}
	p.PerSec = float64(p.Images) / took.Seconds()
	p.P99ms = harness.Millis(harness.Summarize(lat).P99)
	per1000 := func(i int) float64 { return 1000 * (after[i] - before[i]) / float64(p.Images) }
	p.ProxyCPU = per1000(0)
	if len(pids) > 1 {
		p.RtCPU = per1000(1)
	}
	return p
}

// errNoAnchor: the anchor's Python packages are not installed.
var errNoAnchor = errors.New("the FastAPI + PyTorch anchor is skipped: its Debian packages are missing " +
	"(apt-get install python3-torch python3-torchvision python3-fastapi python3-uvicorn python3-multipart)")

// anchorPackages are what seed_server.py imports, from Debian.
var anchorPackages = []string{"python3-torch", "python3-torchvision", "python3-fastapi", "python3-uvicorn", "python3-multipart"}

// measureAnchor starts seed_server.py on one thread and measures it at
// saturation.
func measureAnchor(ctx context.Context, root string, pool []harness.Upload, c Config, logf func(string, ...any)) (Point, error) {
	for _, p := range anchorPackages {
		if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output(); err != nil || string(out) != "install ok installed" {
			return Point{}, errNoAnchor
		}
	}
	port, err := harness.FreePort()
	if err != nil {
		return Point{}, err
	}
	logf("cost: FastAPI + PyTorch anchor on port %d", port)
	p, err := harness.StartProc("/usr/bin/python3", []string{filepath.Join(root, "perf/cost/seed_server.py"), strconv.Itoa(port)},
		[]string{"OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"}, os.Stderr)
	if err != nil {
		return Point{}, err
	}
	defer p.Stop(10 * time.Second)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	err = harness.WaitReady(ctx, url, "the anchor", 3*time.Minute, func() error {
		if p.Exited() {
			return fmt.Errorf("the anchor exited (%s; its log is above)", p.ExitText())
		}
		return nil
	})
	if err != nil {
		return Point{}, err
	}
	// One thread: two clients keep it busy without queueing much.
	ac := c
	ac.Clients = 2
	pt := saturate(ctx, harness.NewClient(url+"/predict"), pool, []int{p.Pid()}, ac)
	pt.Server, pt.Reserved = "FastAPI + PyTorch (seed-like)", 1
	if pt.Images == 0 {
		return pt, fmt.Errorf("the anchor answered no image (%d failed)", pt.Failed)
	}
	return pt, nil
}

// Report is the markdown table of the points, with issue 30's goals.
func Report(c Config, chart Chart, pts []Point) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nCost per image on %s: unique 500x375 JPEGs, %v per measurement; the chart's default pod requests %.2f cores (proxy %.2f, runtime %.2f).\n\n",
		harness.Machine(), c.Duration, chart.Reserved(), chart.ProxyCPU, chart.RuntimeCPU)
	b.WriteString("| server | load | images/s | p99 ms | failed | proxy used | runtime used | used | reserved | used / reserved |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range pts {
		rt := fmt.Sprintf("%.1f", p.RtCPU)
		if p.RtCPU == 0 {
			rt = "-"
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.0f | %d | %.1f | %s | %.1f | %.1f (%.2f cores) | %.0f%% |\n", p.Server, p.Load, p.PerSec, p.P99ms, p.Failed,
			p.ProxyCPU, rt, p.Used(), p.ReservedPer1000(), p.Reserved, 100*p.Used()/p.ReservedPer1000())
	}
	b.WriteString("\nCore-seconds per 1000 images. Used: both processes' own CPU time. Reserved: the pod's requests for as long as 1000 images take at its throughput.\n")
	const before = 2.0 // cores the default pod reserved before issue 30
	fmt.Fprintf(&b, "- reserved against the 2-core pod before, at the same throughput: %.3fx (goal at most 0.65x)\n", chart.Reserved()/before)
	fmt.Fprintf(&b, "- the default pod reserves %.2f cores (goal at most 1.3)\n", chart.Reserved())
	for _, p := range pts {
		if strings.HasPrefix(p.Server, "FastAPI") {
			for _, q := range pts {
				if q.Load == "saturation" && q != p {
					fmt.Fprintf(&b, "- %s at saturation reserves %.2fx and uses %.2fx the anchor's core-seconds per image\n",
						q.Server, q.ReservedPer1000()/p.ReservedPer1000(), q.Used()/p.Used())
				}
			}
		}
	}
	return b.String()
}
