// Package quantize turns a float32 ONNX image classifier into its int8 twin
// in the QDQ format that ONNX Runtime fuses into int8 kernels at load
// (QLinearConv, QLinearAdd, QGemm, ...), the way ONNX Runtime's own
// quantize_static does:
//
//   - batch normalization is folded into the convolution before it;
//   - weights (Conv, Gemm) are stored as int8, symmetric, one scale per
//     output channel, behind a DequantizeLinear with axis 0; biases as
//     int32 with scale input_scale x weight_scale;
//   - every activation between operators is quantized per tensor to uint8
//     with a QuantizeLinear/DequantizeLinear pair, with the scale and zero
//     point of its calibrated range (Calibrate: the float model run through
//     ONNX Runtime on sample images);
//   - a Relu that follows a Conv or an Add is dropped: its output's range
//     starts at 0, so the uint8 QuantizeLinear (zero point 0) clamps exactly
//     as Relu would;
//   - MaxPool and Flatten keep their input's scale and zero point (ONNX
//     Runtime then runs them on uint8 directly);
//   - the graph's output stays float: the last Gemm has no QuantizeLinear.
//
// It knows the operators of ResNet-style classifiers (Conv,
// BatchNormalization, Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm)
// and refuses others. Twin does it all for batchgate's generated models.
package quantize

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/batchgate/batchgate/runtime/modelgen"
)

// Opset is the default-domain opset of the quantized model: per-channel
// DequantizeLinear (the axis attribute) needs 13.
const Opset = 13

// Options tune QDQ.
type Options struct {
	// ReduceRange stores weights in 7 bits ([-63, 63]) rather than 8
	// ([-127, 127]), as quantize_static(reduce_range=True) does. x86 CPUs
	// without VNNI (AVX2, AVX-512 before VNNI) multiply uint8 activations
	// by int8 weights in pairs summed into int16 (vpmaddubsw), which
	// saturates when both are large: with 8-bit weights the generated
	// ResNet50's answers drift several times further from the float
	// model's on such CPUs (docs/performance.md#int8). VNNI CPUs lose half
	// a bit of weight precision with it.
	ReduceRange bool
}

// Range is the calibrated range of one activation tensor.
type Range struct{ Min, Max float32 }

// op is one operator of the float graph after batch norms and Relus are
// folded in: what the quantized graph computes between two activations.
type op struct {
	node modelgen.Node  // the original node: op type, name, attributes
	bn   *modelgen.Node // the BatchNormalization folded into a Conv
	in   []string       // activation inputs
	out  string         // the activation it produces (after the folded BN and Relu)
	relu bool
}

// plan is a float graph read for quantization. Reading it checks the
// structure only; weights are read when QDQ needs them.
type plan struct {
	input, output string
	ops           []op
	// observe lists the tensors whose range calibration must measure, in
	// graph order, the input first.
	observe []string
	inits   map[string]*modelgen.Tensor
}

// newPlan reads m's graph.
func newPlan(m *modelgen.Model) (*plan, error) {
	g := &m.Graph
	if len(g.Inputs) != 1 || len(g.Outputs) != 1 {
		return nil, fmt.Errorf("want one input and one output, got %d and %d", len(g.Inputs), len(g.Outputs))
	}
	p := &plan{input: g.Inputs[0].Name, output: g.Outputs[0].Name, inits: map[string]*modelgen.Tensor{}}
	for i := range g.Initializers {
		p.inits[g.Initializers[i].Name] = &g.Initializers[i]
	}
	consumers := map[string][]int{}
	for i, n := range g.Nodes {
		for _, in := range n.Inputs {
			consumers[in] = append(consumers[in], i)
		}
	}
	used := make([]bool, len(g.Nodes))
	// known holds the activations quantized so far: the input, and the
	// outputs of the ops before (nodes are in topological order).
	known := map[string]bool{p.input: true}
	// follow returns the node that alone consumes t, if it is an opType.
	follow := func(t, opType string) (int, bool) {
		c := consumers[t]
		if len(c) != 1 || t == p.output || g.Nodes[c[0]].OpType != opType {
			return 0, false
		}
		return c[0], true
	}
	for i, n := range g.Nodes {
		if used[i] {
			continue
		}
		used[i] = true
		if len(n.Inputs) == 0 || len(n.Outputs) != 1 {
			return nil, fmt.Errorf("node %q (%s): %d inputs and %d outputs", n.Name, n.OpType, len(n.Inputs), len(n.Outputs))
		}
		o := op{node: n, in: n.Inputs[:1], out: n.Outputs[0]}
		var err error
		switch n.OpType {
		case "Conv":
			err = p.checkConv(n)
			if j, ok := follow(o.out, "BatchNormalization"); ok && err == nil {
				used[j] = true
				o.bn, o.out = &g.Nodes[j], g.Nodes[j].Outputs[0]
				err = p.checkBN(*o.bn, p.inits[n.Inputs[1]].Dims[0])
			}
		case "Gemm":
			err = p.checkGemm(n)
		case "Add":
			o.in = n.Inputs
			if len(o.in) != 2 {
				err = fmt.Errorf("Add with %d inputs", len(o.in))
			} else {
				err = p.activation(o.in[1])
			}
		case "MaxPool", "GlobalAveragePool", "Flatten":
		default:
			err = fmt.Errorf("operator %s is not supported (only Conv, BatchNormalization, Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm)", n.OpType)
		}
		for _, in := range o.in {
			if err == nil && !known[in] {
				err = fmt.Errorf("input %q is not the graph's input nor the output of an operator quantized before", in)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("node %q (%s): %w", n.Name, n.OpType, err)
		}
		switch n.OpType {
		case "Conv", "Add", "Gemm":
			if j, ok := follow(o.out, "Relu"); ok {
				used[j] = true
				o.relu, o.out = true, g.Nodes[j].Outputs[0]
			}
		}
		known[o.out] = true
		p.ops = append(p.ops, o)
	}
	p.observe = []string{p.input}
	for _, o := range p.ops {
		if o.out == p.output {
			continue
		}
		if len(consumers[o.out]) == 0 {
			return nil, fmt.Errorf("node %q: output %q is used by nothing", o.node.Name, o.out)
		}
		switch o.node.OpType {
		case "MaxPool", "Flatten": // keep their input's quantization
		default:
			p.observe = append(p.observe, o.out)
		}
	}
	if last := p.ops[len(p.ops)-1]; last.out != p.output {
		return nil, fmt.Errorf("the graph output %q is not produced by its last node", p.output)
	}
	return p, nil
}

// constant returns the float initializer name, checking its rank.
func (p *plan) constant(name string, rank int) (*modelgen.Tensor, error) {
	t, ok := p.inits[name]
	switch {
	case !ok:
		return nil, fmt.Errorf("%q is not an initializer", name)
	case t.DataType != modelgen.TypeFloat:
		return nil, fmt.Errorf("%q has element type %d, want float", name, t.DataType)
	case len(t.Dims) != rank:
		return nil, fmt.Errorf("%q has dims %v, want %d of them", name, t.Dims, rank)
	}
	return t, nil
}

func (p *plan) activation(name string) error {
	if _, ok := p.inits[name]; ok {
		return fmt.Errorf("input %q is a constant; only activations are supported here", name)
	}
	return nil
}

// checkConv checks a Conv: constant [O,I,kH,kW] weights, group 1, an
// optional constant bias of O values.
func (p *plan) checkConv(n modelgen.Node) error {
	if len(n.Inputs) < 2 {
		return fmt.Errorf("Conv without weights")
	}
	w, err := p.constant(n.Inputs[1], 4)
	if err != nil {
		return err
	}
	if a, ok := n.Attr("group"); ok && a.I != 1 {
		return fmt.Errorf("group %d: only group 1 is supported", a.I)
	}
	if len(n.Inputs) > 2 && n.Inputs[2] != "" {
		if b, err := p.constant(n.Inputs[2], 1); err != nil {
			return err
		} else if b.Dims[0] != w.Dims[0] {
			return fmt.Errorf("bias of %d values for %d channels", b.Dims[0], w.Dims[0])
		}
	}
	return nil
}

// checkBN checks a BatchNormalization of outC channels with constant
// parameters.
func (p *plan) checkBN(bn modelgen.Node, outC int64) error {
	if len(bn.Inputs) != 5 || len(bn.Outputs) != 1 {
		return fmt.Errorf("BatchNormalization %q: want 5 inputs and 1 output", bn.Name)
	}
	for _, name := range bn.Inputs[1:] {
		t, err := p.constant(name, 1)
		if err != nil {
			return fmt.Errorf("BatchNormalization %q: %w", bn.Name, err)
		}
		if t.Dims[0] != outC {
			return fmt.Errorf("BatchNormalization %q: %d values for %d channels", bn.Name, t.Dims[0], outC)
		}
	}
	return nil
}

// gemmAttr returns a Gemm attribute as a float, or def.
func gemmAttr(n modelgen.Node, name string, def float32) float32 {
	a, ok := n.Attr(name)
	switch {
	case !ok:
		return def
	case a.Kind == modelgen.AttrInt:
		return float32(a.I)
	}
	return a.F
}

// checkGemm checks a Gemm: alpha 1, beta 1, transA 0, constant 2-D weights
// and an optional constant bias of one value per output.
func (p *plan) checkGemm(n modelgen.Node) error {
	if gemmAttr(n, "alpha", 1) != 1 || gemmAttr(n, "beta", 1) != 1 || gemmAttr(n, "transA", 0) != 0 {
		return fmt.Errorf("only Gemm with alpha 1, beta 1 and transA 0 is supported")
	}
	if len(n.Inputs) < 2 {
		return fmt.Errorf("Gemm without weights")
	}
	w, err := p.constant(n.Inputs[1], 2)
	if err != nil {
		return err
	}
	outs := w.Dims[1]
	if gemmAttr(n, "transB", 0) != 0 {
		outs = w.Dims[0]
	}
	if len(n.Inputs) > 2 && n.Inputs[2] != "" {
		if b, err := p.constant(n.Inputs[2], 1); err != nil {
			return err
		} else if b.Dims[0] != outs {
			return fmt.Errorf("bias of %d values for %d outputs (broadcast biases are not supported)", b.Dims[0], outs)
		}
	}
	return nil
}

// weights returns a Conv's or Gemm's float weights, batch norm folded and a
// Gemm's as [N,K], their dims, and the bias (nil when there is none).
func (p *plan) weights(o op) (w []float32, dims []int64, b []float32, err error) {
	n := o.node
	t := p.inits[n.Inputs[1]]
	if w, err = t.Floats(); err != nil {
		return nil, nil, nil, err
	}
	dims = t.Dims
	if len(n.Inputs) > 2 && n.Inputs[2] != "" {
		if b, err = p.inits[n.Inputs[2]].Floats(); err != nil {
			return nil, nil, nil, err
		}
	}
	if n.OpType == "Gemm" && gemmAttr(n, "transB", 0) == 0 { // [K,N]: transpose to [N,K]
		k, nn := dims[0], dims[1]
		tr := make([]float32, len(w))
		for i := range k {
			for j := range nn {
				tr[j*k+i] = w[i*nn+j]
			}
		}
		w, dims = tr, []int64{nn, k}
	}
	if o.bn != nil {
		b, err = p.foldBN(*o.bn, w, dims[0], b)
	}
	return w, dims, b, err
}

// foldBN folds an inference batch normalization into the weights w (in
// place) and bias b of the Conv before it: w' = w*gamma/sqrt(var+eps),
// b' = beta + (b-mean)*gamma/sqrt(var+eps). It returns b'.
func (p *plan) foldBN(bn modelgen.Node, w []float32, outC int64, b []float32) ([]float32, error) {
	var v [4][]float32
	for k := range v {
		var err error
		if v[k], err = p.inits[bn.Inputs[k+1]].Floats(); err != nil {
			return nil, fmt.Errorf("BatchNormalization %q: %w", bn.Name, err)
		}
	}
	eps := float32(1e-5)
	if a, ok := bn.Attr("epsilon"); ok {
		eps = a.F
	}
	gamma, beta, mean, variance := v[0], v[1], v[2], v[3]
	if b == nil {
		b = make([]float32, outC)
	}
	per := len(w) / int(outC)
	for c := range int(outC) {
		f := gamma[c] / float32(math.Sqrt(float64(variance[c]+eps)))
		ch := w[c*per : (c+1)*per]
		for i := range ch {
			ch[i] *= f
		}
		b[c] = beta[c] + (b[c]-mean[c])*f
	}
	return b, nil
}

// qparams are a uint8 tensor's scale and zero point.
type qparams struct {
	scale float32
	zero  uint8
}

// activationParams returns the uint8 quantization of range r. The range is
// widened to hold 0 and its ends rounded outwards to 5 significant bits:
// ONNX Runtime's float kernels differ in the last bits between CPUs, and the
// rounding makes the same calibration give the same bytes on all of them
// (unless a value lies within about 1e-6 of a rounding step).
func activationParams(r Range) qparams {
	lo := -coarsen(-min(r.Min, 0))
	hi := coarsen(max(r.Max, 0))
	if hi-lo == 0 {
		return qparams{scale: 1}
	}
	scale := (hi - lo) / 255
	zero := math.Round(float64(-lo / scale))
	return qparams{scale: scale, zero: uint8(min(max(zero, 0), 255))}
}

// coarsen rounds v >= 0 up to the next float32 with 5 significant bits.
func coarsen(v float32) float32 {
	const drop = 23 - 4 // mantissa bits dropped: 1 implicit + 4 kept
	bits := math.Float32bits(v)
	if rem := bits & (1<<drop - 1); rem != 0 {
		bits += 1<<drop - rem
	}
	return math.Float32frombits(bits)
}

// QDQ returns the int8 QDQ twin of the float model, with activations
// quantized from ranges (Calibrate's result). The twin keeps the model's
// input and output, its metadata, and adds meta after them.
func QDQ(model []byte, ranges map[string]Range, opts Options, meta ...modelgen.KV) ([]byte, error) {
	m, err := modelgen.Parse(model)
	if err != nil {
		return nil, err
	}
	p, err := newPlan(m)
	if err != nil {
		return nil, fmt.Errorf("cannot quantize: %w", err)
	}
	return qdq(m, p, ranges, opts, meta)
}

// qdq rewrites m, read as p, into its QDQ twin and returns its bytes.
func qdq(m *modelgen.Model, p *plan, ranges map[string]Range, opts Options, meta []modelgen.KV) ([]byte, error) {
	for _, t := range p.observe {
		if _, ok := ranges[t]; !ok {
			return nil, fmt.Errorf("cannot quantize: no calibrated range for %q", t)
		}
	}
	q := &builder{qp: map[string]qparams{}, wmax: 127}
	if opts.ReduceRange {
		q.wmax = 63
	}
	q.quantize(p.input, activationParams(ranges[p.input]))
	for _, o := range p.ops {
		ins := make([]string, len(o.in))
		for i, in := range o.in {
			ins[i] = in + "_dequantized"
		}
		n := modelgen.Node{Inputs: ins, Outputs: []string{o.out}, Name: o.node.Name, OpType: o.node.OpType, Attrs: o.node.Attrs}
		switch o.node.OpType {
		case "Conv", "Gemm":
			w, dims, b, err := p.weights(o)
			if err != nil {
				return nil, fmt.Errorf("cannot quantize node %q: %w", o.node.Name, err)
			}
			wq, wscales := q.weights(o.node.Name, w, dims)
			n.Inputs = append(n.Inputs, wq)
			if b != nil {
				n.Inputs = append(n.Inputs, q.bias(o.node.Name, b, q.qp[o.in[0]].scale, wscales))
			}
			if o.node.OpType == "Gemm" {
				n.Attrs = []modelgen.Attr{modelgen.FloatAttr("alpha", 1), modelgen.FloatAttr("beta", 1),
					modelgen.IntAttr("transA", 0), modelgen.IntAttr("transB", 1)}
			}
		}
		q.nodes = append(q.nodes, n)
		switch {
		case o.out == p.output:
			if o.relu {
				return nil, fmt.Errorf("cannot quantize: the graph output %q comes out of a Relu", o.out)
			}
		case o.node.OpType == "MaxPool" || o.node.OpType == "Flatten":
			q.quantize(o.out, q.qp[o.in[0]])
		default:
			q.quantize(o.out, activationParams(ranges[o.out]))
		}
	}

	m.ProducerName, m.ProducerVersion = "batchgate-quantize", "1"
	m.DocString += " Quantized to int8 (QDQ: per-channel symmetric int8 weights, per-tensor uint8 activations) by batchgate."
	if m.IRVersion < 7 {
		m.IRVersion = 7 // ONNX 1.8, which opset 13 belongs to
	}
	found := false
	for i := range m.Opsets {
		if m.Opsets[i].Domain == "" || m.Opsets[i].Domain == "ai.onnx" {
			m.Opsets[i].Version, found = max(m.Opsets[i].Version, Opset), true
		}
	}
	if !found {
		m.Opsets = append(m.Opsets, modelgen.Opset{Version: Opset})
	}
	m.Graph.Name += "-int8"
	m.Graph.Nodes, m.Graph.Initializers = q.nodes, q.inits
	for _, kv := range meta {
		i := slices.IndexFunc(m.Metadata, func(e modelgen.KV) bool { return e.Key == kv.Key })
		if i >= 0 {
			m.Metadata[i].Value = kv.Value
		} else {
			m.Metadata = append(m.Metadata, kv)
		}
	}
	return m.Marshal(), nil
}

// builder accumulates the quantized graph.
type builder struct {
	nodes []modelgen.Node
	inits []modelgen.Tensor
	qp    map[string]qparams
	// wmax is the largest weight magnitude: 127, or 63 with ReduceRange.
	wmax float32
}

func (q *builder) init(name string, typ int64, dims []int64, raw []byte) string {
	q.inits = append(q.inits, modelgen.Tensor{Name: name, DataType: typ, Dims: dims, Raw: raw})
	return name
}

// quantize adds t's QuantizeLinear and DequantizeLinear: t_quantized
// (uint8) and t_dequantized (float), which consumers read.
func (q *builder) quantize(t string, p qparams) {
	q.qp[t] = p
	scale := q.init(t+"_scale", modelgen.TypeFloat, nil, f32bytes([]float32{p.scale}))
	zero := q.init(t+"_zero_point", modelgen.TypeUint8, nil, []byte{p.zero})
	q.nodes = append(q.nodes,
		modelgen.Node{Inputs: []string{t, scale, zero}, Outputs: []string{t + "_quantized"}, Name: t + "_QuantizeLinear", OpType: "QuantizeLinear"},
		modelgen.Node{Inputs: []string{t + "_quantized", scale, zero}, Outputs: []string{t + "_dequantized"}, Name: t + "_DequantizeLinear", OpType: "DequantizeLinear"})
}

// weights adds a layer's int8 weights, per output channel (dims[0]), with
// their DequantizeLinear, and returns its output and the scales.
func (q *builder) weights(layer string, w []float32, dims []int64) (string, []float32) {
	outC := int(dims[0])
	per := len(w) / outC
	qs := make([]byte, len(w))
	scales := make([]float32, outC)
	for c := range outC {
		ch := w[c*per : (c+1)*per]
		var amax float32
		for _, v := range ch {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		s := amax / q.wmax
		if s == 0 {
			s = 1
		}
		scales[c] = s
		for i, v := range ch {
			qs[c*per+i] = byte(int8(min(max(math.Round(float64(v/s)), -float64(q.wmax)), float64(q.wmax))))
		}
	}
	return q.dequantize(layer+"_weight", modelgen.TypeInt8, dims, qs, scales, make([]byte, outC)), scales
}

// bias adds a layer's int32 bias with scale inScale x the weights' scale ws,
// with its DequantizeLinear, and returns its output.
func (q *builder) bias(layer string, b []float32, inScale float32, ws []float32) string {
	scales := make([]float32, len(b))
	raw := make([]byte, 4*len(b))
	for c, v := range b {
		scales[c] = inScale * ws[c]
		// Clamped: a bias beyond 2^31 steps is far outside any activation.
		iv := min(max(math.Round(float64(v/scales[c])), math.MinInt32), math.MaxInt32)
		binary.LittleEndian.PutUint32(raw[4*c:], uint32(int32(iv)))
	}
	return q.dequantize(layer+"_bias", modelgen.TypeInt32, []int64{int64(len(b))}, raw, scales, make([]byte, 4*len(b)))
}

// dequantize adds a per-channel (axis 0) constant: its values, scales and
// zero points, and the DequantizeLinear that reads them.
func (q *builder) dequantize(name string, typ int64, dims []int64, raw []byte, scales []float32, zeros []byte) string {
	n := int64(len(scales))
	v := q.init(name+"_quantized", typ, dims, raw)
	s := q.init(name+"_scale", modelgen.TypeFloat, []int64{n}, f32bytes(scales))
	z := q.init(name+"_zero_point", typ, []int64{n}, zeros)
	q.nodes = append(q.nodes, modelgen.Node{Inputs: []string{v, s, z}, Outputs: []string{name + "_dequantized"},
		Name: name + "_DequantizeLinear", OpType: "DequantizeLinear", Attrs: []modelgen.Attr{modelgen.IntAttr("axis", 0)}})
	return name + "_dequantized"
}

func f32bytes(vs []float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}
