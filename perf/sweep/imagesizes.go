package sweep

// The image-size axis: one stack, fed in turn photos of 500x375, 768x576 and
// 12 MP (4032x3024, a phone photo), at saturation and at one client. The
// goals (issue "native-speed preprocessing"): 12 MP reaches at least 0.9x the
// throughput of 500x375, and one client's p50 on 500x375 is at most raw
// inference + 5 ms.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// imageSize is one value of the axis.
type imageSize struct {
	Name string
	W, H int
}

// imageSizes is the axis's values by flag name.
var imageSizes = map[string]imageSize{
	"small":  {"500x375", 500, 375},
	"medium": {"768x576", 768, 576},
	"12mp":   {"4032x3024 (12 MP)", 4032, 3024},
}

// KnownImageSize says whether name is a value of the image-size axis.
func KnownImageSize(name string) bool {
	_, ok := imageSizes[name]
	return ok
}

// measureImageSizes measures cfg's stack on each size: saturation with
// closed-loop clients, then one client alone (p50 next to raw inference).
func measureImageSizes(ctx context.Context, bins harness.Binaries, cfg harness.StackConfig, o Config, rawBatch1 float64, bar *harness.Progress) ([]point, error) {
	root, _ := harness.RepoRoot()
	s, err := harness.StartStack(bins, cfg)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	c := harness.NewClient(s.URL + "/predict")
	var pts []point
	for _, name := range o.ImageSizes {
		sz := imageSizes[name]
		bar.Phase("image size " + sz.Name + ": making photos")
		pool, avg, err := harness.SizedPool(filepath.Join(root, "proxy/testdata/grace_hopper.jpg"), sz.W, sz.H, 6, uint64(sz.W))
		if err != nil {
			return nil, err
		}
		base := point{Setting: fmt.Sprintf("image=%s (%d KB) batch=%d window=%v", sz.Name, avg/1024, cfg.MaxBatch, cfg.Window),
			BatchSize: cfg.MaxBatch, Window: cfg.Window.String(), RawRPS: rawBatch1}
		for _, clients := range []int{2*cfg.MaxBatch + 4, 1} {
			// Saturation over at least 15 s: at about 10 images/s in
			// batches of 8, a short window miscounts by a batch.
			d := max(2*o.Duration, 15*time.Second)
			if clients == 1 {
				d = 2 * o.Duration
			}
			bar.Phase(fmt.Sprintf("image size %s, %d client(s)", sz.Name, clients))
			var res []harness.Result
			p, err := measure(s, base, func(n *int, elapsed *time.Duration) []harness.Result {
				var total int
				var took time.Duration
				res, total, took = harness.ClosedLoop(ctx, c, clients, harness.Warmup(d), d,
					func(r *rand.Rand) harness.Upload { return pool[r.IntN(len(pool))] }, true, bar.Tick)
				*n, *elapsed = total, took
				return res
			})
			if err != nil {
				return nil, err
			}
			p.Mode = "size-closed"
			if clients == 1 {
				p.Mode = "size-1client"
				p.OverheadP50ms, p.InferP50ms = overhead(res)
			}
			pts = append(pts, p)
			bar.Step()
		}
	}
	return pts, nil
}

// overhead returns the medians of latency minus the reported inference
// time, and of the inference time, over the successful answers.
func overhead(res []harness.Result) (over, infer float64) {
	var o, in []float64
	for _, r := range res {
		if r.Status == 200 && r.InferMs > 0 {
			o = append(o, float64(r.Latency.Microseconds())/1000-r.InferMs)
			in = append(in, r.InferMs)
		}
	}
	if len(o) == 0 {
		return 0, 0
	}
	slices.Sort(o)
	slices.Sort(in)
	return o[len(o)/2], in[len(in)/2]
}

// sizesMarkdown is the report's image-size section, with the goals.
func sizesMarkdown(rep *report) string {
	var sat, one []point
	for _, p := range rep.Points {
		switch p.Mode {
		case "size-closed":
			sat = append(sat, p)
		case "size-1client":
			one = append(one, p)
		}
	}
	if len(sat) == 0 {
		return ""
	}
	var b strings.Builder
	raw1 := rep.Raw[1]
	b.WriteString("\n## Image sizes (unique JPEG photos; saturation, then one client)\n\n")
	b.WriteString("| setting | throughput/s | / first size | proxy CPU ms/img | runtime CPU ms/img | errors | one client: p50 ms | inference p50 ms | p50 of latency - inference ms | p50 - raw ms |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i, p := range sat {
		p50, inf, over, raw := "-", "-", "-", "-"
		if i < len(one) {
			p50, inf, over = fmt.Sprintf("%.1f", one[i].P50ms), fmt.Sprintf("%.1f", one[i].InferP50ms), fmt.Sprintf("%.1f", one[i].OverheadP50ms)
			if raw1 > 0 {
				raw = fmt.Sprintf("%.1f", one[i].P50ms-1000/raw1)
			}
		}
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.1f | %.1f | %s | %s | %s | %s | %s |\n", p.Setting, p.Throughput, p.Throughput/sat[0].Throughput,
			p.ProxyCPUms, p.RtCPUms, errorsText(p.Statuses), p50, inf, over, raw)
	}
	rawText := "not measured: the batch sizes swept did not include 1"
	if raw1 > 0 {
		rawText = fmt.Sprintf("%.1f ms, measured minutes earlier", 1000/raw1)
	}
	fmt.Fprintf(&b, "\nInference is what each answer's timings.inference_ms reports (the model's execution of its batch); "+
		"raw is the raw benchmark at batch 1 (%s). Goals: the largest size at least 0.9x "+
		"the first's throughput; at one client, the proxy adds at most 5 ms to raw inference on the first size.\n", rawText)
	return b.String()
}
