package sweep

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestSmoke runs a tiny sweep end to end (real runtime, proxy, HTTP) and
// checks that every report file is produced and well formed.
func TestSmoke(t *testing.T) {
	out := t.TempDir()
	t.Setenv("ORT_LIBRARY", testenv.ORTLibrary(t))
	o := Config{BatchSizes: []int{1, 2}, Windows: []time.Duration{0, 2 * time.Millisecond}, Loads: []float64{0.002},
		Duration: time.Second, Model: testenv.TinyModel(t), OutDir: out, Images: 6, Dedup: true}
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(out, "*"))
	if len(dirs) != 1 {
		t.Fatalf("results folders: %v", dirs)
	}
	dir := dirs[0]

	var rep report
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil || json.Unmarshal(b, &rep) != nil {
		t.Fatalf("results.json: %v", err)
	}
	// 2 batch sizes x 2 windows x (saturation + 1 load) + 2 dedup points.
	if len(rep.Points) != 10 || rep.Raw[1] <= 0 || rep.Raw[2] <= 0 {
		t.Fatalf("results.json: %d points, raw %v", len(rep.Points), rep.Raw)
	}
	for _, p := range rep.Points {
		if p.Statuses["200"] == 0 || p.Throughput <= 0 || p.P99ms < p.P50ms {
			t.Errorf("point %s %s: %+v", p.Setting, p.Mode, p)
		}
		if p.Mode == "closed" && (p.Ratio <= 0 || p.MeanBatch < 1) {
			t.Errorf("saturation point %s: ratio %v, mean batch %v", p.Setting, p.Ratio, p.MeanBatch)
		}
	}
	var hit float64
	for _, p := range rep.Points {
		if p.Mode == "dedup-cache" {
			hit = p.HitRatio
		}
	}
	if hit <= 0 {
		t.Errorf("dedup with cache: hit ratio %v", hit)
	}

	f, _ := os.Open(filepath.Join(dir, "results.csv"))
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(rows) != 11 || strings.Join(rows[0], ",") != strings.Join(csvHeader, ",") {
		t.Errorf("results.csv: %d rows, %v", len(rows), err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{"## Raw ONNX Runtime reference", "## Saturation", "## Open loop", "## Dedup", "| batch=2 window=2ms |"} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	for _, name := range []string{"throughput.png", "p99_latency.png", "batch_sizes.png"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if cfg, err := png.DecodeConfig(f); err != nil || cfg.Width < 300 {
			t.Errorf("%s: %v, %dx%d", name, err, cfg.Width, cfg.Height)
		}
		f.Close()
	}
}
