package quantize

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

func TestCoarsen(t *testing.T) {
	for _, tc := range []struct{ in, want float32 }{
		{0, 0},
		{1, 1},
		{1.01, 1.0625}, // 5 significant bits: steps of 1/16 between 1 and 2
		{1.0625, 1.0625},
		{3, 3},
		{3.01, 3.125},
		{0.3, 0.3125},
		{1e-7, 1.0058284e-07},
	} {
		if got := coarsen(tc.in); got != tc.want {
			t.Errorf("coarsen(%g) = %g, want %g", tc.in, got, tc.want)
		}
	}
	// Never smaller, never more than 1/16 larger.
	for v := float32(1e-3); v < 1e3; v *= 1.013 {
		if c := coarsen(v); c < v || c > v*(1+1.0/16) {
			t.Fatalf("coarsen(%g) = %g", v, c)
		}
	}
}

func TestActivationParams(t *testing.T) {
	for _, tc := range []struct {
		name  string
		r     Range
		scale float32
		zero  uint8
	}{
		{"after Relu: zero point 0, so Q clamps like Relu", Range{0, 5.1}, 5.25 / 255, 0},
		{"mixed signs", Range{-1, 3}, 4.0 / 255, 64},
		{"positive only: the range holds 0", Range{2, 4}, 4.0 / 255, 0},
		{"negative only", Range{-4, -2}, 4.0 / 255, 255},
		{"image input", Range{-2.1179, 2.64}, (2.125 + 2.75) / 255, 111},
		{"constant zero", Range{0, 0}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := activationParams(tc.r)
			if math.Abs(float64(got.scale-tc.scale)) > 1e-7 || got.zero != tc.zero {
				t.Errorf("activationParams(%v) = scale %g zero %d, want %g and %d", tc.r, got.scale, got.zero, tc.scale, tc.zero)
			}
		})
	}
}

// checkResNet50Graph checks the QDQ pattern of the generated ResNet50's
// twin: weights are int8 behind a per-channel DequantizeLinear, batch norms
// are folded (the dequantized weights are the float weights times
// gamma/sqrt(var+eps)), Relus are gone, and the output stays float.
func checkResNet50Graph(t *testing.T, fp32, twin []byte) {
	t.Helper()
	m, err := modelgen.Parse(twin)
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	producer := map[string]modelgen.Node{}
	for _, n := range m.Graph.Nodes {
		ops[n.OpType]++
		for _, o := range n.Outputs {
			producer[o] = n
		}
	}
	want := map[string]int{"Conv": 53, "Add": 16, "MaxPool": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
		// One pair per activation: the input, 53 convolutions, 16 adds,
		// the pools and Flatten (the output has none).
		"QuantizeLinear": 73,
		// Those, plus weights of 54 layers and biases of 54 (53 folded
		// batch norms and the classifier).
		"DequantizeLinear": 73 + 54 + 54}
	for op, n := range want {
		if ops[op] != n {
			t.Errorf("%d %s nodes, want %d", ops[op], op, n)
		}
	}
	for _, op := range []string{"Relu", "BatchNormalization"} {
		if ops[op] != 0 {
			t.Errorf("%d %s nodes left", ops[op], op)
		}
	}
	if m.Opsets[0].Version != Opset || m.Graph.Outputs[0].ElemType != modelgen.TypeFloat ||
		producer[modelgen.OutputName].OpType != "Gemm" {
		t.Errorf("opset %d, output type %d produced by %s; want %d, float, Gemm",
			m.Opsets[0].Version, m.Graph.Outputs[0].ElemType, producer[modelgen.OutputName].OpType, Opset)
	}
	meta := map[string]string{}
	for _, kv := range m.Metadata {
		meta[kv.Key] = kv.Value
	}
	if meta[modelgen.MetaVariant] != "int8" || meta[modelgen.MetaGenerated] != "true" {
		t.Errorf("metadata %v: want the float model's, and the variant", meta)
	}

	inits := map[string]modelgen.Tensor{}
	for _, t := range m.Graph.Initializers {
		inits[t.Name] = t
	}
	for _, n := range m.Graph.Nodes {
		if n.OpType != "Conv" && n.OpType != "Gemm" {
			continue
		}
		w := producer[n.Inputs[1]]
		if a, _ := w.Attr("axis"); w.OpType != "DequantizeLinear" || inits[w.Inputs[0]].DataType != modelgen.TypeInt8 || a.Kind != modelgen.AttrInt {
			t.Fatalf("%s %s: weights from %s %v, want a per-channel DequantizeLinear of int8", n.OpType, n.Name, w.OpType, w.Inputs)
		}
		for _, v := range inits[w.Inputs[0]].Raw {
			if int8(v) < -63 || int8(v) > 63 {
				t.Fatalf("%s: weight %d outside the reduced range [-63, 63]", n.Name, int8(v))
			}
		}
		if x := producer[n.Inputs[0]]; x.OpType != "DequantizeLinear" {
			t.Fatalf("%s: input from %s, want DequantizeLinear", n.Name, x.OpType)
		}
	}

	// conv0 folded with bn0 (gamma 1, running var 1, mean 0): the
	// dequantized weights are the float ones / sqrt(1+1e-5), within half a
	// quantization step.
	src, _ := modelgen.Parse(fp32)
	var w0 []float32
	for _, t := range src.Graph.Initializers {
		if t.Name == "conv0_weight" {
			w0, _ = t.Floats()
		}
	}
	q := inits["conv0_weight_quantized"].Raw
	scales, err := (&modelgen.Tensor{DataType: modelgen.TypeFloat, Dims: []int64{64}, Raw: inits["conv0_weight_scale"].Raw}).Floats()
	if err != nil || len(q) != len(w0) {
		t.Fatalf("conv0 weights: %d quantized for %d float, scales %v", len(q), len(w0), err)
	}
	per := len(w0) / 64
	for i, v := range w0 {
		s := scales[i/per]
		want := v / float32(math.Sqrt(1+1e-5))
		if got := float32(int8(q[i])) * s; math.Abs(float64(got-want)) > float64(s)/2+1e-7 {
			t.Fatalf("conv0 weight %d: dequantized %g, want %g (scale %g)", i, got, want, s)
		}
	}
	bias := inits["conv0_bias_scale"].Raw
	inScale := math.Float32frombits(binary.LittleEndian.Uint32(inits["data_scale"].Raw))
	if got := math.Float32frombits(binary.LittleEndian.Uint32(bias)); got != inScale*scales[0] {
		t.Errorf("conv0 bias scale %g, want input scale x weight scale = %g", got, inScale*scales[0])
	}
}

// TestQDQRefuses: what QDQ cannot quantize is an error naming the node,
// never a wrong model.
func TestQDQRefuses(t *testing.T) {
	tiny, _ := modelgen.Tiny(modelgen.DefaultSeed)
	for _, tc := range []struct {
		name   string
		mutate func(m *modelgen.Model)
		want   string
	}{
		{"unsupported operator", func(m *modelgen.Model) { m.Graph.Nodes[1].OpType = "Sigmoid" }, "Sigmoid is not supported"},
		{"grouped convolution", func(m *modelgen.Model) {
			n := &m.Graph.Nodes[0]
			for i := range n.Attrs {
				if n.Attrs[i].Name == "group" {
					n.Attrs[i].I = 2
				}
			}
		}, "group 2"},
		{"scaled Gemm", func(m *modelgen.Model) {
			n := &m.Graph.Nodes[len(m.Graph.Nodes)-1]
			n.Attrs[0].F = 2 // alpha
		}, "alpha 1"},
		{"weights that are not constants", func(m *modelgen.Model) {
			m.Graph.Nodes[0].Inputs[1] = modelgen.InputName
		}, "not an initializer"},
		{"input from nowhere", func(m *modelgen.Model) {
			m.Graph.Nodes[len(m.Graph.Nodes)-2].Inputs[0] = "a_constant_folded_away" // Flatten's
		}, "not the graph's input"},
		{"two outputs", func(m *modelgen.Model) {
			m.Graph.Outputs = append(m.Graph.Outputs, m.Graph.Outputs[0])
		}, "one input and one output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := modelgen.Parse(tiny)
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(m)
			_, err = QDQ(m.Marshal(), map[string]Range{}, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("QDQ = %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := QDQ(tiny, map[string]Range{}, Options{}); err == nil || !strings.Contains(err.Error(), "no calibrated range") {
		t.Errorf("QDQ without ranges = %v", err)
	}
}

// TestTwinTiny calibrates the tiny model through ONNX Runtime: the twin is
// deterministic, loads as int8, runs on fused int8 kernels and agrees with
// its float model.
func TestTwinTiny(t *testing.T) {
	lib := testenv.ORTLibrary(t)
	fp32, _ := modelgen.Tiny(modelgen.DefaultSeed)
	a, err := Twin(lib, fp32)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Twin(lib, fp32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two twins of the same model differ")
	}
	info := openInfo(t, a)
	if info.Variant != "int8" || info.Metadata[MetaSource] == "" || info.Metadata[modelgen.MetaGenerated] != "true" {
		t.Errorf("variant %q, metadata %v", info.Variant, info.Metadata)
	}
	for _, op := range []string{"QLinearConv", "QGemm", "QLinearGlobalAveragePool"} {
		if info.OptimizedOps[op] != 1 {
			t.Errorf("optimized graph %v: want one %s", info.OptimizedOps, op)
		}
	}
	if info.OptimizedOps["Conv"]+info.OptimizedOps["Gemm"]+info.OptimizedOps["DequantizeLinear"] != 0 {
		t.Errorf("optimized graph %v still runs float Conv, Gemm or DequantizeLinear", info.OptimizedOps)
	}
	images, _, err := EvaluationSet(filepath.Join(testenv.Root(t), "proxy", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Compare(lib, fp32, a, images)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tiny: %+v", c)
	if c.MeanKL > 0.05 || c.Top1InTop5 < 0.9 {
		t.Errorf("int8 tiny twin vs fp32: %+v; want mean KL <= 0.05 and the fp32 top-1 in the int8 top-5 for 90%%", c)
	}
}

// openInfo loads model with the optimized-graph cache on, so that Info
// says which kernels ONNX Runtime runs.
func openInfo(t *testing.T, model []byte) engine.Info {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(engine.Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: path, CacheDir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.Info()
}
