package sweep

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// runVariants runs the sweep once per model variant (-variants fp32,int8),
// each model as `runtime fetch-model -variant` gets it (pinned, or
// generated offline), each into its own results folder under
// <out>/variants-<stamp>/<variant>/, then writes variants.md there: per
// variant and setting, the stack / raw ratio at saturation and the CPU each
// image costs in the proxy and in the runtime (with int8, preprocessing is a
// larger share of the work).
func runVariants(ctx context.Context, o Config) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	parent := filepath.Join(o.OutDir, "variants-"+time.Now().UTC().Format("20060102-150405"))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	rt := filepath.Join(parent, "runtime")
	if out, err := exec.Command("go", "build", "-o", rt, filepath.Join(root, "runtime")).CombinedOutput(); err != nil {
		return fmt.Errorf("cannot build the runtime: %v\n%s", err, out)
	}
	defer os.Remove(rt)
	ortLib := harness.ORTLibrary(root)
	reps := map[string]*report{}
	for _, v := range o.Variants {
		out, err := exec.Command(rt, "fetch-model", "-variant", v, "-dir", filepath.Join(root, ".deps/models"), "-ort-library", ortLib).Output()
		if err != nil {
			return fmt.Errorf("variant %s: cannot get the model: %w", v, err)
		}
		vo := o
		vo.Variants, vo.Model, vo.OutDir = nil, strings.TrimSpace(string(out)), filepath.Join(parent, v)
		fmt.Fprintf(os.Stderr, "perf: variant %s: %s\n", v, vo.Model)
		if err := Run(ctx, vo); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		found, _ := filepath.Glob(filepath.Join(vo.OutDir, "*", "results.json"))
		if len(found) != 1 {
			return fmt.Errorf("variant %s: want one results.json under %s, found %v", v, vo.OutDir, found)
		}
		b, err := os.ReadFile(found[0])
		if err != nil {
			return err
		}
		var rep report
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		reps[v] = &rep
	}
	md := variantsMarkdown(o.Variants, reps)
	if err := os.WriteFile(filepath.Join(parent, "variants.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "perf: variants compared in %s\n%s", filepath.Join(parent, "variants.md"), md)
	return nil
}

// variantsMarkdown compares the variants' saturation points.
func variantsMarkdown(variants []string, reps map[string]*report) string {
	var b strings.Builder
	b.WriteString("# batchgate perf: model variants\n\n")
	if r := reps[variants[0]]; r != nil {
		fmt.Fprintf(&b, "%s on %s.\n\n", r.Started.Format("2006-01-02 15:04 UTC"), r.Machine)
	}
	b.WriteString("Saturation (closed loop), each variant's stack against its own raw ONNX Runtime reference; CPU per image of the proxy (decode, resize, HTTP) and of the runtime.\n\n")
	b.WriteString("| variant | model | setting | stack images/s | raw images/s | stack / raw | proxy CPU ms/img | runtime CPU ms/img | proxy share of CPU |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, v := range variants {
		r := reps[v]
		for _, p := range r.Points {
			if p.Mode != "closed" {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.2f | %.2f | %.3f | %.1f | %.1f | %.0f%% |\n", v, r.Model, p.Setting,
				p.Throughput, p.RawRPS, p.Ratio, p.ProxyCPUms, p.RtCPUms, 100*p.ProxyCPUms/max(p.ProxyCPUms+p.RtCPUms, 1e-9))
		}
	}
	if len(variants) > 1 {
		base := reps[variants[0]]
		fmt.Fprintf(&b, "\nRaw ONNX Runtime images/s against %s:\n\n| batch |", variants[0])
		for _, v := range variants {
			fmt.Fprintf(&b, " %s |", v)
		}
		b.WriteString(" ratio |\n|---|" + strings.Repeat("---|", len(variants)+1) + "\n")
		for _, bs := range slices.Sorted(maps.Keys(base.Raw)) {
			fmt.Fprintf(&b, "| %d |", bs)
			for _, v := range variants {
				fmt.Fprintf(&b, " %.2f |", reps[v].Raw[bs])
			}
			fmt.Fprintf(&b, " %.2f |\n", reps[variants[len(variants)-1]].Raw[bs]/max(base.Raw[bs], 1e-9))
		}
	}
	return b.String()
}
