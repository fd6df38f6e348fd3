package engine

import (
	"fmt"
	"reflect"

	ort "github.com/yalue/onnxruntime_go"
)

// Probe runs a model whose outputs are any float32 tensors, for tools that
// look inside a model rather than serve it: calibration reads intermediate
// activations exposed as extra graph outputs. It runs on one thread,
// sequentially, with full graph optimization, like an Engine.
type Probe struct {
	session *ort.DynamicAdvancedSession
	outputs []string
}

// OpenProbe loads the model bytes with the ONNX Runtime library at
// library (which must be the one this process already uses, if any) and
// prepares to read the named float32 outputs for one float32 input.
func OpenProbe(library string, model []byte, input string, outputs []string) (*Probe, error) {
	if library == "" {
		library = "libonnxruntime.so.1"
	}
	if err := initEnvironment(library); err != nil {
		return nil, err
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	for _, set := range []func() error{
		func() error { return opts.SetIntraOpNumThreads(1) },
		func() error { return opts.SetInterOpNumThreads(1) },
		func() error { return opts.SetExecutionMode(ort.ExecutionModeSequential) },
		func() error { return opts.SetGraphOptimizationLevel(ort.GraphOptimizationLevelEnableAll) },
	} {
		if err := set(); err != nil {
			return nil, err
		}
	}
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(model, []string{input}, outputs, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot create ONNX Runtime session: %w", err)
	}
	return &Probe{session: s, outputs: outputs}, nil
}

// Run feeds input, of the given shape, and calls fn with each output in
// the order OpenProbe named them; data is valid only during the call.
func (p *Probe) Run(input []float32, shape []int64, fn func(output int, data []float32)) error {
	in, err := ort.NewTensor(ort.NewShape(shape...), input)
	if err != nil {
		return fmt.Errorf("cannot create input tensor: %w", err)
	}
	defer in.Destroy()
	outs := make([]ort.Value, len(p.outputs)) // nil: ONNX Runtime allocates them
	defer func() {
		for _, o := range outs {
			// A failed Run may leave typed nils.
			if o != nil && !reflect.ValueOf(o).IsNil() {
				o.Destroy()
			}
		}
	}()
	if err := p.session.Run([]ort.Value{in}, outs); err != nil {
		return fmt.Errorf("cannot run the model: %w", err)
	}
	for i, o := range outs {
		t, ok := o.(*ort.Tensor[float32])
		if !ok {
			return fmt.Errorf("output %q is a %T, want a float32 tensor", p.outputs[i], o)
		}
		fn(i, t.GetData())
	}
	return nil
}

// Close releases the session.
func (p *Probe) Close() error { return p.session.Destroy() }
