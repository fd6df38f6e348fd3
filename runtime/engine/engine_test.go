package engine

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

func open(t *testing.T, model, cacheDir string) *Engine {
	t.Helper()
	e, err := Open(Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: model, CacheDir: cacheDir})
	if err != nil {
		t.Fatalf("Open(%s): %v", model, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// images returns n deterministic pseudo-images.
func images(n, size int) []float32 {
	x := make([]float32, n*size)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.001)) * 2
	}
	return x
}

func TestInfo(t *testing.T) {
	e := open(t, testenv.TinyModel(t), "")
	got := e.Info()
	if got.InputName != modelgen.InputName || got.OutputName != modelgen.OutputName ||
		got.Channels != 3 || got.Height != 224 || got.Width != 224 || got.Classes != 1000 {
		t.Errorf("Info = %+v, want input %q [N,3,224,224], output %q [N,1000]", got, modelgen.InputName, modelgen.OutputName)
	}
	if got.Metadata[modelgen.MetaGenerated] != "true" {
		t.Errorf("Metadata[%q] = %q, want true", modelgen.MetaGenerated, got.Metadata[modelgen.MetaGenerated])
	}
	if len(got.SHA256) != 64 || got.ORTVersion != "1.30.0" {
		t.Errorf("SHA256 = %q, ORTVersion = %q; want 64 hex digits and 1.30.0", got.SHA256, got.ORTVersion)
	}
}

// TestBatchEqualsSingles checks, on both models, that a batch of N gives the
// scores of N single runs, and that runs are deterministic.
func TestBatchEqualsSingles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model func(testing.TB) string
		n     int
	}{{"tiny", testenv.TinyModel, 8}, {"resnet50", testenv.ResNet50Model, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			e := open(t, tc.model(t), "")
			size, classes := e.Info().ImageSize(), e.Info().Classes
			in := images(tc.n, size)
			batch, err := e.Run(in, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(batch) != tc.n*classes {
				t.Fatalf("Run returned %d scores, want %d", len(batch), tc.n*classes)
			}
			again, _ := e.Run(in, tc.n)
			for i := range tc.n {
				single, err := e.Run(in[i*size:(i+1)*size], 1)
				if err != nil {
					t.Fatal(err)
				}
				for j, want := range single {
					got := batch[i*classes+j]
					if diff := math.Abs(float64(got - want)); diff > 1e-4*(1+math.Abs(float64(want))) || math.IsNaN(float64(got)) {
						t.Fatalf("image %d class %d: batch score %g, single score %g", i, j, got, want)
					}
					if again[i*classes+j] != got {
						t.Fatalf("image %d class %d: second run gave %g, first %g", i, j, again[i*classes+j], got)
					}
				}
			}
		})
	}
}

func TestOptimizedGraphCache(t *testing.T) {
	model := testenv.TinyModel(t)
	dir := t.TempDir()
	in := images(2, 3*224*224)

	first := open(t, model, dir)
	if first.Info().FromCache {
		t.Fatal("first Open used a cache that cannot exist yet")
	}
	want, _ := first.Run(in, 2)
	graphs, _ := filepath.Glob(filepath.Join(dir, "*.onnx"))
	if len(graphs) != 1 {
		t.Fatalf("cache holds %v, want one optimized graph", graphs)
	}

	second := open(t, model, dir)
	if !second.Info().FromCache {
		t.Fatal("second Open did not use the cache")
	}
	got, _ := second.Run(in, 2)
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-5 {
			t.Fatalf("score %d from cached graph = %g, want %g", i, got[i], want[i])
		}
	}

	// Corrupt the cached graph: Open must notice, rebuild and still work.
	if err := os.WriteFile(graphs[0], []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	third := open(t, model, dir)
	if third.Info().FromCache {
		t.Error("Open used a corrupt cache entry")
	}
	if _, err := third.Run(in, 2); err != nil {
		t.Error(err)
	}
	fourth := open(t, model, dir)
	if !fourth.Info().FromCache {
		t.Error("the rebuilt cache entry was not used")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notONNX := filepath.Join(dir, "bad.onnx")
	os.WriteFile(notONNX, []byte("this is not a model"), 0o644)
	for _, path := range []string{filepath.Join(dir, "missing.onnx"), notONNX} {
		if _, err := Open(Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: path}); err == nil {
			t.Errorf("Open(%s) succeeded, want an error", path)
		}
	}
}
