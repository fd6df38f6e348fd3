package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/modelgen"
	"github.com/batchgate/batchgate/runtime/quantize"
)

// benchReport is what one model's benchmark measured (bench -json).
type benchReport struct {
	Model     string `json:"model"`
	SHA256    string `json:"sha256"`
	Variant   string `json:"variant"`
	Generated bool   `json:"generated"`
	// SourceSHA256 is, for an int8 twin, its float model's sha256.
	SourceSHA256 string         `json:"source_sha256,omitempty"`
	ORTVersion   string         `json:"ort_version"`
	Threads      int            `json:"threads"`
	LoadMs       float64        `json:"load_ms"`
	FromCache    bool           `json:"from_cache"`
	RSSLoadedMB  int            `json:"rss_loaded_mb"`
	PeakRSSMB    int            `json:"peak_rss_mb"`
	Kernels      map[string]int `json:"kernels,omitempty"`
	Batches      []benchRow     `json:"batches"`
}

type benchRow struct {
	BatchSize    int     `json:"batch_size"`
	Runs         int     `json:"runs"`
	FirstMs      float64 `json:"first_run_ms"`
	MedianMs     float64 `json:"median_batch_ms"`
	ImagesPerSec float64 `json:"images_per_s"`
}

func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var ef engineFlags
	ef.register(fs)
	sizes := fs.String("batch-sizes", "1,2,4,8,16,32", "comma-separated batch sizes (1,4,8 with -variants)")
	minTime := fs.Duration("min-time", 3*time.Second, "least time measured per batch size")
	minRuns := fs.Int("min-runs", 3, "least runs per batch size")
	asJSON := fs.Bool("json", false, "print one JSON object instead of the table")
	variants := fs.String("variants", "", `compare model variants, e.g. "fp32,int8": each one's model from -dir (as fetch-model gets it: pinned, or generated offline) is measured in a process of its own (load time, RSS), then images/s side by side, and the int8 model's agreement with the fp32 one; -model is ignored`)
	dir := fs.String("dir", ".deps/models", "models folder, with -variants")
	agreeDir := fs.String("agreement-images", "proxy/testdata", "with -variants: images (JPEG, PNG, GIF, WebP) added to the agreement set; a missing folder adds none")
	rounds := fs.Int("rounds", 1, "with -variants: measure the variants in turn this many times, keeping each batch size's best round (for shared machines)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *variants != "" && !flagSet(fs, "batch-sizes") {
		*sizes = "1,4,8"
	}
	var bs []int
	for s := range strings.SplitSeq(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad batch size %q", s)
		}
		bs = append(bs, n)
	}
	if *variants != "" {
		return benchVariants(fs, ef, strings.Split(*variants, ","), *dir, *agreeDir, *rounds)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	eng, err := ef.open(log)
	if err != nil {
		return err
	}
	defer eng.Close()
	mi := eng.Info()
	rep := benchReport{
		Model: filepath.Base(ef.model), SHA256: mi.SHA256, Variant: mi.Variant, Generated: mi.Metadata[modelgen.MetaGenerated] == "true",
		SourceSHA256: mi.Metadata[quantize.MetaSource], ORTVersion: mi.ORTVersion, Threads: ef.threads,
		LoadMs: ms(mi.LoadTime), FromCache: mi.FromCache, RSSLoadedMB: rssMB(), Kernels: mi.OptimizedOps,
	}
	if !*asJSON {
		fmt.Printf("# raw ONNX Runtime %s, %d thread(s), model %s (sha256 %.12s, variant %s, generated=%v, load %d ms, from cache %v, RSS %d MB)\n",
			mi.ORTVersion, ef.threads, rep.Model, mi.SHA256, mi.Variant, rep.Generated, mi.LoadTime.Milliseconds(), mi.FromCache, rep.RSSLoadedMB)
		if rep.Kernels != nil {
			fmt.Printf("# kernels after optimization: %s\n", kernels(rep.Kernels))
		}
		fmt.Println("batch_size\truns\tfirst_run_ms\tmedian_batch_ms\tmedian_ms_per_image\timages_per_s")
	}
	for _, n := range bs {
		r, err := BenchBatch(eng, n, *minTime, *minRuns)
		if err != nil {
			return err
		}
		row := benchRow{BatchSize: n, Runs: r.Runs, FirstMs: ms(r.First), MedianMs: ms(r.Median), ImagesPerSec: r.ImagesPerSec}
		rep.Batches = append(rep.Batches, row)
		if !*asJSON {
			fmt.Printf("%d\t%d\t%.1f\t%.1f\t%.2f\t%.2f\n", n, r.Runs, row.FirstMs, row.MedianMs, row.MedianMs/float64(n), r.ImagesPerSec)
		}
	}
	rep.PeakRSSMB = peakRSSMB()
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(rep)
	}
	return nil
}

// benchVariants measures each variant's model in a child process (so that
// load time and memory are its own) and compares them. With rounds > 1 the
// variants take turns, round after round, and each batch size keeps its
// best round: on a shared machine, the least disturbed one.
func benchVariants(fs *flag.FlagSet, ef engineFlags, variants []string, dir, agreeDir string, rounds int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	paths := make([]string, len(variants))
	byVariant := map[string]string{}
	for i, v := range variants {
		variants[i] = strings.TrimSpace(v)
		mv, ok := modelVariants[variants[i]]
		if !ok {
			return fmt.Errorf("-variants: %q is not %s", v, variantNames)
		}
		if paths[i], err = ensureModel(mv, dir, ef.library, true, log); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		byVariant[variants[i]] = paths[i]
	}
	reps := make([]benchReport, len(variants))
	for round := range max(rounds, 1) {
		for i, v := range variants {
			// The child gets every flag given here, but its own model.
			args := []string{"bench", "-json", "-model", paths[i]}
			fs.Visit(func(f *flag.Flag) {
				switch f.Name {
				case "variants", "dir", "agreement-images", "model", "json", "rounds":
				default:
					args = append(args, "-"+f.Name+"="+f.Value.String())
				}
			})
			if !flagSet(fs, "batch-sizes") {
				args = append(args, "-batch-sizes=1,4,8")
			}
			fmt.Fprintf(os.Stderr, "bench: round %d, %s: %s\n", round+1, v, paths[i])
			var out bytes.Buffer
			cmd := exec.Command(self, args...)
			cmd.Stdout, cmd.Stderr = &out, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("variant %s: bench of %s failed: %w", v, paths[i], err)
			}
			var rep benchReport
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				return fmt.Errorf("variant %s: cannot read the bench's report: %w", v, err)
			}
			if round > 0 { // keep each batch size's best round
				for j, row := range reps[i].Batches {
					if row.ImagesPerSec > rep.Batches[j].ImagesPerSec {
						rep.Batches[j] = row
					}
				}
			}
			reps[i] = rep
		}
	}
	base := reps[0]
	fmt.Printf("# raw ONNX Runtime %s, %d thread(s), CPU: %s; best of %d round(s), variants in turn\n",
		base.ORTVersion, base.Threads, cpuModel(), max(rounds, 1))
	fmt.Println("variant\tmodel\tsha256\tgenerated\tload_ms\tfrom_cache\trss_loaded_mb\tpeak_rss_mb")
	for i, r := range reps {
		fmt.Printf("%s\t%s\t%.12s\t%v\t%.0f\t%v\t%d\t%d\n", variants[i], r.Model, r.SHA256, r.Generated, r.LoadMs, r.FromCache, r.RSSLoadedMB, r.PeakRSSMB)
	}
	for i, r := range reps {
		if r.Kernels != nil {
			fmt.Printf("# %s kernels after optimization: %s\n", variants[i], kernels(r.Kernels))
		}
	}
	fmt.Print("batch_size")
	for i, v := range variants {
		fmt.Printf("\t%s_images_per_s", v)
		if i > 0 {
			fmt.Printf("\t%s/%s", v, variants[0])
		}
	}
	fmt.Println()
	for j, row := range base.Batches {
		fmt.Printf("%d", row.BatchSize)
		for i, r := range reps {
			fmt.Printf("\t%.2f", r.Batches[j].ImagesPerSec)
			if i > 0 {
				fmt.Printf("\t%.2f", r.Batches[j].ImagesPerSec/row.ImagesPerSec)
			}
		}
		fmt.Println()
	}

	fp32, int8 := byVariant[engine.VariantFP32], byVariant[engine.VariantInt8]
	if fp32 == "" || int8 == "" {
		return nil
	}
	images, names, err := quantize.EvaluationSet(agreeDir)
	if err != nil {
		return err
	}
	a, err := os.ReadFile(fp32)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(int8)
	if err != nil {
		return err
	}
	c, err := quantize.Compare(ef.library, a, b, images)
	if err != nil {
		return fmt.Errorf("agreement: %w", err)
	}
	twin := ""
	for i, r := range reps {
		if variants[i] == engine.VariantInt8 && r.SourceSHA256 != "" && r.SourceSHA256 == reps[slices.Index(variants, engine.VariantFP32)].SHA256 {
			twin = ", its int8 twin"
		}
	}
	fmt.Printf("# agreement of %s with %s%s on %d images (%s)\n", filepath.Base(int8), filepath.Base(fp32), twin, c.Images, names)
	if reps[0].Generated {
		fmt.Println("# generated pseudo-random weights: this measures quantization error, not accuracy")
	}
	fmt.Println("images\ttop1_agreement\tfp32_top1_in_int8_top5\tmean_kl_nats\tmax_kl_nats")
	fmt.Printf("%d\t%.3f\t%.3f\t%.5f\t%.5f\n", c.Images, c.Top1Agreement, c.Top1InTop5, c.MeanKL, c.MaxKL)
	return nil
}

// kernels lists operator counts, most frequent first.
func kernels(ops map[string]int) string {
	names := slices.Sorted(maps.Keys(ops))
	slices.SortStableFunc(names, func(a, b string) int { return ops[b] - ops[a] })
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s x%d", n, ops[n])
	}
	return strings.Join(parts, ", ")
}

// cpuModel returns the CPU's model name and its int8-relevant features.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	var model string
	var feats []string
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		case "flags":
			if feats == nil {
				feats = []string{}
				for f := range strings.FieldsSeq(v) {
					if f == "avx2" || f == "avx512f" || f == "avx512_vnni" || f == "avx_vnni" || f == "amx_int8" {
						feats = append(feats, f)
					}
				}
			}
		}
	}
	if !slices.ContainsFunc(feats, func(f string) bool { return strings.Contains(f, "vnni") || f == "amx_int8" }) {
		feats = append(feats, "no VNNI")
	}
	return model + " (" + strings.Join(feats, ", ") + ")"
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
