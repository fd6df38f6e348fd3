package sweep

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/batchgate/batchgate/perf/plot"
)

// writeReport writes report.md, results.csv, results.json and the plots
// into dir, and prints where they are.
func writeReport(dir string, rep *report) error {
	j, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), j, 0o644); err != nil {
		return err
	}
	if err := writeCSV(filepath.Join(dir, "results.csv"), rep.Points); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(markdown(rep)), 0o644); err != nil {
		return err
	}
	if rep.Target == "" {
		if err := plots(dir, rep); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "\nperf: results in %s (report.md, results.csv, results.json, *.png)\n", dir)
	return nil
}

var csvHeader = []string{"setting", "batch_size", "window", "mode", "load", "offered_rps", "requests", "throughput_rps",
	"p50_ms", "p90_ms", "p99_ms", "max_ms", "ok", "errors", "mean_batch_size", "mean_queue_wait_ms", "mean_batch_exec_ms",
	"proxy_cpu_ms_per_image", "runtime_cpu_ms_per_image", "raw_images_per_s", "stack_over_raw", "cache_hit_ratio"}

func writeCSV(path string, pts []point) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	w.Write(csvHeader)
	for _, p := range pts {
		g := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
		w.Write([]string{p.Setting, strconv.Itoa(p.BatchSize), p.Window, p.Mode, g(p.Load), g(p.OfferedRPS),
			strconv.Itoa(p.Requests), g(p.Throughput), g(p.P50ms), g(p.P90ms), g(p.P99ms), g(p.MaxMs),
			strconv.Itoa(p.Statuses["200"]), strconv.Itoa(p.Requests - p.Statuses["200"]), g(p.MeanBatch),
			g(p.QueueWaitMs), g(p.ExecMs), g(p.ProxyCPUms), g(p.RtCPUms), g(p.RawRPS), g(p.Ratio), g(p.HitRatio)})
	}
	w.Flush()
	return w.Error()
}

// errorsText lists non-200 statuses, "-" when there were none.
func errorsText(st map[string]int) string {
	var parts []string
	for k, v := range st {
		if k != "200" {
			name := k
			if k == "0" {
				name = "transport"
			}
			parts = append(parts, fmt.Sprintf("%s:%d", name, v))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# batchgate perf report\n\n%s on %s", rep.Started.Format("2006-01-02 15:04 UTC"), rep.Machine)
	if rep.Target != "" {
		fmt.Fprintf(&b, ", target %s", rep.Target)
	} else {
		fmt.Fprintf(&b, ", model %s", rep.Model)
	}
	fmt.Fprintf(&b, ", test images about %d KB (multipart uploads).\n\n", rep.AvgImageKB)
	if len(rep.Raw) > 0 {
		b.WriteString("## Raw ONNX Runtime reference (no HTTP, no proxy)\n\n| batch | images/s |\n|---|---|\n")
		var keys []int
		for k := range rep.Raw {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "| %d | %.2f |\n", k, rep.Raw[k])
		}
		b.WriteString("\n")
	}
	b.WriteString("## Saturation (closed loop)\n\n| setting | throughput/s | raw/s | stack / raw | mean batch | p50 ms | p99 ms | errors | proxy CPU ms/img | runtime CPU ms/img |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range rep.Points {
		if p.Mode == "closed" {
			fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.3f | %.2f | %.0f | %.0f | %s | %.1f | %.1f |\n", p.Setting, p.Throughput, p.RawRPS,
				p.Ratio, p.MeanBatch, p.P50ms, p.P99ms, errorsText(p.Statuses), p.ProxyCPUms, p.RtCPUms)
		}
	}
	b.WriteString("\n## Open loop (Poisson arrivals; latency from the scheduled send time)\n\n| setting | load | offered/s | achieved/s | p50 ms | p90 ms | p99 ms | max ms | errors | mean batch | queue wait ms | batch exec ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range rep.Points {
		if p.Mode == "open" {
			fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %s | %.2f | %.1f | %.1f |\n", p.Setting, p.Load, p.OfferedRPS,
				p.Throughput, p.P50ms, p.P90ms, p.P99ms, p.MaxMs, errorsText(p.Statuses), p.MeanBatch, p.QueueWaitMs, p.ExecMs)
		}
	}
	var dedup []point
	for _, p := range rep.Points {
		if strings.HasPrefix(p.Mode, "dedup") {
			dedup = append(dedup, p)
		}
	}
	if len(dedup) > 0 {
		b.WriteString("\n## Dedup (Zipf s=1.1 requests over a pool of images, closed loop)\n\n| setting | cache | throughput/s | hit ratio | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n")
		for _, p := range dedup {
			fmt.Fprintf(&b, "| %s | %s | %.2f | %.3f | %.0f | %.0f |\n", p.Setting, map[bool]string{true: "on", false: "off"}[p.Mode == "dedup-cache"],
				p.Throughput, p.HitRatio, p.P50ms, p.P99ms)
		}
	}
	b.WriteString(sizesMarkdown(rep))
	return b.String()
}

// plots draws throughput vs batch size, p99 vs offered load, and the
// batch-size distribution at the highest load.
func plots(dir string, rep *report) error {
	windows, sizes := []string{}, []int{}
	for _, p := range rep.Points {
		if p.Mode == "closed" {
			if !slices.Contains(windows, p.Window) {
				windows = append(windows, p.Window)
			}
			if !slices.Contains(sizes, p.BatchSize) {
				sizes = append(sizes, p.BatchSize)
			}
		}
	}
	slices.Sort(sizes)
	if err := throughputPlot(filepath.Join(dir, "throughput.png"), rep, windows, sizes); err != nil {
		return err
	}
	if err := latencyPlot(filepath.Join(dir, "p99_latency.png"), rep, windows[0], sizes); err != nil {
		return err
	}
	return batchSizesPlot(filepath.Join(dir, "batch_sizes.png"), rep, windows[0], sizes)
}

// throughputPlot draws throughput versus batch size, one line per window,
// plus raw.
func throughputPlot(path string, rep *report, windows []string, sizes []int) error {
	tp := plot.New("Saturation throughput vs batch size", "MAX_BATCH_SIZE", "images/s")
	var lines []any
	for _, w := range windows {
		var xy plotter.XYs
		for _, p := range rep.Points {
			if p.Mode == "closed" && p.Window == w {
				xy = append(xy, plotter.XY{X: float64(p.BatchSize), Y: p.Throughput})
			}
		}
		lines = append(lines, "stack, window "+w, xy)
	}
	var raw plotter.XYs
	for _, s := range sizes {
		raw = append(raw, plotter.XY{X: float64(s), Y: rep.Raw[s]})
	}
	lines = append(lines, "raw ONNX Runtime", raw)
	if err := plotutil.AddLinePoints(tp, lines...); err != nil {
		return err
	}
	tp.Y.Min = 0
	return plot.Save(tp, path, 7, 4)
}

// latencyPlot draws p99 versus offered load, one line per batch size, for
// one window.
func latencyPlot(path string, rep *report, window string, sizes []int) error {
	lp := plot.New("p99 latency vs offered load (window "+window+")", "offered load (fraction of raw capacity)", "p99 ms")
	var lines []any
	for _, s := range sizes {
		var xy plotter.XYs
		for _, p := range rep.Points {
			if p.Mode == "open" && p.BatchSize == s && p.Window == window && p.P99ms > 0 {
				xy = append(xy, plotter.XY{X: p.Load, Y: p.P99ms})
			}
		}
		lines = append(lines, fmt.Sprintf("batch %d", s), xy)
	}
	if err := plotutil.AddLinePoints(lp, lines...); err != nil {
		return err
	}
	lp.Y.Min = 0
	return plot.Save(lp, path, 7, 4)
}

// batchSizesPlot draws the batch-size distribution at the highest offered
// load, per batch size, for one window.
func batchSizesPlot(path string, rep *report, window string, sizes []int) error {
	bp := plot.New("Batch sizes at the highest offered load (window "+window+")", "batch size (bucket upper bound)", "share of batches")
	buckets := []string{"1", "2", "4", "8", "16", "32"}
	width := vg.Points(60 / float64(max(len(sizes), 1)))
	for i, s := range sizes {
		var best *point
		for k := range rep.Points {
			p := &rep.Points[k]
			if p.Mode == "open" && p.BatchSize == s && p.Window == window && (best == nil || p.Load > best.Load) {
				best = p
			}
		}
		if best == nil || best.BatchHist == nil {
			continue
		}
		var total float64
		for _, v := range best.BatchHist {
			total += v
		}
		vals := make(plotter.Values, len(buckets))
		for j, le := range buckets {
			vals[j] = best.BatchHist[le] / max(total, 1)
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Color = color.Transparent
		bars.Offset = width * vg.Length(float64(i)-float64(len(sizes)-1)/2)
		bp.Add(bars)
		bp.Legend.Add(fmt.Sprintf("MAX_BATCH_SIZE %d", s), bars)
	}
	bp.NominalX(buckets...)
	bp.Legend.Top = true
	return plot.Save(bp, path, 7, 4)
}
