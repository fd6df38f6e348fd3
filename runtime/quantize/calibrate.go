package quantize

import (
	"fmt"
	"math"
	"slices"

	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

// Calibrate runs the float model through ONNX Runtime (the library at
// library) on images, each one C*H*W input tensor, with the range of every
// activation that QDQ quantizes exposed as extra graph outputs, and returns
// the smallest and largest value each one took (min/max calibration).
func Calibrate(library string, model []byte, images [][]float32) (map[string]Range, error) {
	m, err := modelgen.Parse(model)
	if err != nil {
		return nil, err
	}
	p, err := newPlan(m)
	if err != nil {
		return nil, fmt.Errorf("cannot calibrate: %w", err)
	}
	return calibrate(library, m, p, images)
}

// calibrate is Calibrate on m, read as p; it leaves m as it was.
func calibrate(library string, model *modelgen.Model, p *plan, images [][]float32) (map[string]Range, error) {
	m := *model
	m.Graph.Nodes, m.Graph.Outputs = slices.Clone(m.Graph.Nodes), slices.Clone(m.Graph.Outputs)
	if len(images) == 0 {
		return nil, fmt.Errorf("calibration needs at least one image")
	}
	shape := []int64{1}
	for _, d := range m.Graph.Inputs[0].Shape[1:] {
		if d.Value <= 0 {
			return nil, fmt.Errorf("cannot calibrate: input %q needs fixed dimensions after the batch, got %+v", p.input, m.Graph.Inputs[0].Shape)
		}
		shape = append(shape, d.Value)
	}
	size := int(shape[1] * shape[2] * shape[3])
	// Each observed tensor gets a ReduceMin and a ReduceMax over all its
	// dimensions, whose scalars are extra graph outputs: ONNX Runtime
	// computes the ranges, and only two floats per tensor come back.
	var outputs []string
	inner := p.observe[1:] // observe[0] is the input, which Go measures
	for _, t := range inner {
		for _, red := range []string{"ReduceMin", "ReduceMax"} {
			out := t + "_" + red
			m.Graph.Nodes = append(m.Graph.Nodes, modelgen.Node{Inputs: []string{t}, Outputs: []string{out},
				Name: out, OpType: red}) // keepdims: one value, of shape [1,1,...]
			m.Graph.Outputs = append(m.Graph.Outputs, modelgen.ValueInfo{Name: out, ElemType: modelgen.TypeFloat})
			outputs = append(outputs, out)
		}
	}
	probe, err := engine.OpenProbe(library, m.Marshal(), p.input, outputs)
	if err != nil {
		return nil, fmt.Errorf("cannot calibrate: %w", err)
	}
	defer probe.Close()

	ranges := map[string]Range{}
	update := func(name string, data []float32) {
		r, ok := ranges[name]
		if !ok {
			r = Range{Min: float32(math.Inf(1)), Max: float32(math.Inf(-1))}
		}
		for _, v := range data {
			r.Min, r.Max = min(r.Min, v), max(r.Max, v)
		}
		ranges[name] = r
	}
	for i, img := range images {
		if len(img) != size {
			return nil, fmt.Errorf("calibration image %d has %d values, want %d", i, len(img), size)
		}
		update(p.input, img)
		err := probe.Run(img, shape, func(k int, data []float32) {
			update(inner[k/2], data) // inner[k/2]'s ReduceMin or ReduceMax

		})
		if err != nil {
			return nil, fmt.Errorf("calibration image %d: %w", i, err)
		}
	}
	for name, r := range ranges {
		if math.IsNaN(float64(r.Min)) || math.IsNaN(float64(r.Max)) || math.IsInf(float64(r.Min), 0) || math.IsInf(float64(r.Max), 0) {
			return nil, fmt.Errorf("calibration: activation %q took non-finite values", name)
		}
	}
	return ranges, nil
}
