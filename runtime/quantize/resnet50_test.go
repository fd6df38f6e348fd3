package quantize

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestTwinResNet50 makes the int8 twin of the generated ResNet50 as
// `runtime fetch-model -variant int8` does offline: ONNX Runtime must fuse
// every layer into an int8 kernel, and the twin's answers must stay close
// to the float model's on a varied image set. With pseudo-random weights
// this measures quantization error, not accuracy.
func TestTwinResNet50(t *testing.T) {
	lib := testenv.ORTLibrary(t)
	fp32, err := os.ReadFile(testenv.ResNet50Model(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	q, err := Twin(lib, fp32)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("int8 twin: %d bytes in %v", len(q), time.Since(start).Round(time.Millisecond))
	checkResNet50Graph(t, fp32, q)
	info := openInfo(t, q)
	t.Logf("kernels after optimization: %v", info.OptimizedOps)
	for op, n := range map[string]int{"QLinearConv": 53, "QLinearAdd": 16, "QGemm": 1, "QLinearGlobalAveragePool": 1} {
		if info.OptimizedOps[op] != n {
			t.Errorf("optimized graph has %d %s, want %d", info.OptimizedOps[op], op, n)
		}
	}
	for _, op := range []string{"Conv", "Gemm", "Add", "DequantizeLinear"} {
		if info.OptimizedOps[op] != 0 {
			t.Errorf("optimized graph still has %d float %s", info.OptimizedOps[op], op)
		}
	}
	images, what, err := EvaluationSet(filepath.Join(testenv.Root(t), "proxy", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	c, err := Compare(lib, fp32, q, images)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("on %s: %+v (%v)", what, c, time.Since(start).Round(time.Millisecond))
	// Measured on AVX2: mean KL 0.0016, max 0.0033; the fp32 top-1 in
	// the int8 top-5 for every image. Broken folding, scales or biases
	// give KL of 0.1 and more.
	if c.MeanKL > 0.005 || c.MaxKL > 0.02 || c.Top1InTop5 < 0.9 {
		t.Errorf("int8 twin vs fp32: %+v; want mean KL <= 0.005, max <= 0.02, fp32 top-1 in int8 top-5 for >= 90%%", c)
	}
}
