// Package modelgen writes ONNX image classifiers with the same contract as the
// ONNX Model Zoo's resnet50-v1-12: input "data" float32 [N,3,224,224] (RGB,
// ImageNet-normalized), output float32 [N,1000] logits.
//
// ResNet50 builds the exact ResNet50 v1 architecture (the MXNet/Gluon
// variant the zoo model comes from: the stride sits on the first 1x1
// convolution of each bottleneck) with deterministic pseudo-random weights.
// It exists because the pretrained weights cannot be downloaded everywhere:
// its speed and memory match the real model, its predictions are
// meaningless. Tiny builds a model with the same contract that runs in
// microseconds, for fast tests.
//
// Both mark themselves in the model's metadata (MetaGenerated = "true"), so
// every component that loads them can say so. Their int8 twins (package
// quantize) also carry MetaVariant = "int8".
package modelgen

import (
	"fmt"
	"hash/fnv"
	"math"

	"github.com/batchgate/batchgate/runtime/engine/modelmeta"
)

// Metadata keys written into generated models: modelmeta's, which the
// engine reads.
const (
	MetaGenerated    = modelmeta.Generated
	MetaArchitecture = modelmeta.Architecture
	MetaNote         = modelmeta.Note
	MetaVariant      = modelmeta.Variant
)

// DefaultSeed is the seed of the models that `make` generates. The same
// seed always gives byte-identical files, so their sha256 is stable.
const DefaultSeed = 20260101

// The names of the graph's input and output, as in resnet50-v1-12.
const (
	InputName  = "data"
	OutputName = "resnetv17_dense0_fwd"
	Classes    = 1000
)

// ONNX enum values used below.
const (
	tensorFloat  = 1 // TensorProto.FLOAT
	attrFloat    = 1 // AttributeProto.FLOAT
	attrInt      = 2 // AttributeProto.INT
	attrInts     = 7 // AttributeProto.INTS
	irVersion    = 7 // ONNX 1.7, which opset 12 belongs to
	opsetVersion = 12
)

// Stats describes a generated model.
type Stats struct {
	// Params counts trainable parameters: weights, biases and
	// batch-normalization scale and shift (not running statistics).
	Params int64
	// MACs counts multiply-accumulates of one image through convolutions
	// and the fully connected layer.
	MACs int64
}

// graph accumulates nodes and initializers of one ONNX graph.
type graph struct {
	nodes pb
	inits pb
	seed  uint64
	stats Stats
	// h and w track the spatial size of the current activation, for MACs.
	h, w int64
}

type attr struct {
	name string
	i    int64
	f    float32
	ints []int64
	kind int
}

func intAttr(name string, v int64) attr     { return attr{name: name, i: v, kind: attrInt} }
func intsAttr(name string, v ...int64) attr { return attr{name: name, ints: v, kind: attrInts} }
func floatAttr(name string, v float32) attr { return attr{name: name, f: v, kind: attrFloat} }

func (g *graph) node(op, name string, inputs []string, output string, attrs ...attr) {
	g.nodes.msg(1, func(n *pb) {
		for _, in := range inputs {
			n.str(1, in)
		}
		n.str(2, output)
		n.str(3, name)
		n.str(4, op)
		for _, a := range attrs {
			n.msg(5, func(p *pb) {
				p.str(1, a.name)
				p.int(20, int64(a.kind))
				switch a.kind {
				case attrInt:
					p.int(3, a.i)
				case attrFloat:
					p.tag(2, 5) // fixed32
					bits := math.Float32bits(a.f)
					p.b = append(p.b, byte(bits), byte(bits>>8), byte(bits>>16), byte(bits>>24))
				case attrInts:
					p.packedInts(8, a.ints)
				}
			})
		}
	})
}

// initializer adds a float tensor named name with the given dims, filled by
// fill from a generator seeded by the name (so weights do not depend on the
// order in which layers are built).
func (g *graph) initializer(name string, dims []int64, trainable bool, fill func(r *rng) float32) {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	r := rng(h.Sum64() ^ g.seed)
	vs := make([]float32, n)
	for i := range vs {
		vs[i] = fill(&r)
	}
	if trainable {
		g.stats.Params += n
	}
	g.inits.msg(5, func(t *pb) {
		t.packedInts(1, dims)
		t.int(2, tensorFloat)
		t.str(8, name)
		t.bytes(9, float32Bytes(vs))
	})
}

func constant(v float32) func(*rng) float32 { return func(*rng) float32 { return v } }

// uniform returns a He-uniform initializer for a layer with fanIn inputs, so
// activations keep their scale through the network.
func uniform(fanIn int64) func(*rng) float32 {
	a := float32(math.Sqrt(6 / float64(fanIn)))
	return func(r *rng) float32 { return a * (2*r.float32() - 1) }
}

// conv adds a bias-free convolution and returns its output name.
func (g *graph) conv(name, in string, inC, outC, k, stride, pad int64) string {
	g.initializer(name+"_weight", []int64{outC, inC, k, k}, true, uniform(inC*k*k))
	g.h = (g.h+2*pad-k)/stride + 1
	g.w = (g.w+2*pad-k)/stride + 1
	g.stats.MACs += outC * inC * k * k * g.h * g.w
	out := name + "_fwd"
	g.node("Conv", name, []string{in, name + "_weight"}, out,
		intsAttr("kernel_shape", k, k), intsAttr("strides", stride, stride),
		intsAttr("pads", pad, pad, pad, pad), intsAttr("dilations", 1, 1), intAttr("group", 1))
	return out
}

// bn adds an inference-mode batch normalization with scale gamma.
func (g *graph) bn(name, in string, c int64, gamma float32) string {
	g.initializer(name+"_gamma", []int64{c}, true, constant(gamma))
	g.initializer(name+"_beta", []int64{c}, true, func(r *rng) float32 { return 0.02 * (2*r.float32() - 1) })
	g.initializer(name+"_running_mean", []int64{c}, false, constant(0))
	g.initializer(name+"_running_var", []int64{c}, false, constant(1))
	out := name + "_fwd"
	g.node("BatchNormalization", name,
		[]string{in, name + "_gamma", name + "_beta", name + "_running_mean", name + "_running_var"}, out,
		floatAttr("epsilon", 1e-5), floatAttr("momentum", 0.9))
	return out
}

func (g *graph) relu(name, in string) string {
	out := name + "_fwd"
	g.node("Relu", name, []string{in}, out)
	return out
}

// bottleneck adds one ResNet v1 bottleneck block and returns its output.
func (g *graph) bottleneck(name, in string, inC, outC, stride int64, downsample bool) string {
	mid := outC / 4
	h, w := g.h, g.w
	x := g.relu(name+"_relu0", g.bn(name+"_bn0", g.conv(name+"_conv0", in, inC, mid, 1, stride, 0), mid, 1))
	x = g.relu(name+"_relu1", g.bn(name+"_bn1", g.conv(name+"_conv1", x, mid, mid, 3, 1, 1), mid, 1))
	// The last batch norm starts small, as in "zero-init residual" training,
	// so that random weights do not blow activations up across 16 blocks.
	x = g.bn(name+"_bn2", g.conv(name+"_conv2", x, mid, outC, 1, 1, 0), outC, 0.2)
	shortcut := in
	if downsample {
		oh, ow := g.h, g.w
		g.h, g.w = h, w
		shortcut = g.bn(name+"_bn3", g.conv(name+"_conv3", in, inC, outC, 1, stride, 0), outC, 1)
		g.h, g.w = oh, ow
	}
	sum := name + "_plus"
	g.node("Add", name+"_add", []string{x, shortcut}, sum)
	return g.relu(name+"_relu2", sum)
}

// head adds global average pooling and the fully connected classifier.
func (g *graph) head(in string, c int64) {
	g.node("GlobalAveragePool", "pool1", []string{in}, "pool1_fwd")
	g.node("Flatten", "flatten0", []string{"pool1_fwd"}, "flatten0_fwd", intAttr("axis", 1))
	g.initializer("dense0_weight", []int64{Classes, c}, true, uniform(c))
	g.initializer("dense0_bias", []int64{Classes}, true, func(r *rng) float32 { return 0.01 * (2*r.float32() - 1) })
	g.stats.MACs += Classes * c
	g.node("Gemm", "dense0", []string{"flatten0_fwd", "dense0_weight", "dense0_bias"}, OutputName,
		floatAttr("alpha", 1), floatAttr("beta", 1), intAttr("transA", 0), intAttr("transB", 1))
}

// ResNet50 returns the ONNX bytes of a ResNet50 v1 with deterministic weights
// derived from seed, and its parameter and MAC counts.
func ResNet50(seed uint64) ([]byte, Stats) {
	g := &graph{seed: seed, h: 224, w: 224}
	x := g.relu("relu0", g.bn("bn0", g.conv("conv0", InputName, 3, 64, 7, 2, 3), 64, 1))
	g.node("MaxPool", "pool0", []string{x}, "pool0_fwd",
		intsAttr("kernel_shape", 3, 3), intsAttr("strides", 2, 2), intsAttr("pads", 1, 1, 1, 1))
	g.h, g.w = 56, 56
	x = "pool0_fwd"
	inC := int64(64)
	for s, stage := range []struct{ blocks, channels, stride int64 }{
		{3, 256, 1}, {4, 512, 2}, {6, 1024, 2}, {3, 2048, 2},
	} {
		for b := int64(0); b < stage.blocks; b++ {
			stride := int64(1)
			if b == 0 {
				stride = stage.stride
			}
			x = g.bottleneck(fmt.Sprintf("stage%d_unit%d", s+1, b+1), x, inC, stage.channels, stride, b == 0)
			inC = stage.channels
		}
	}
	g.head(x, inC)
	return g.model("resnet50-v1-generated", "resnet50-v1"), g.stats
}

// Tiny returns the ONNX bytes of a small model with ResNet50's input and
// output contract: one strided convolution, pooling and a classifier.
func Tiny(seed uint64) ([]byte, Stats) {
	g := &graph{seed: seed, h: 224, w: 224}
	x := g.relu("relu0", g.conv("conv0", InputName, 3, 8, 8, 8, 0))
	g.head(x, 8)
	return g.model("tiny-generated", "tiny"), g.stats
}

// model wraps the graph into a ModelProto.
func (g *graph) model(name, arch string) []byte {
	var m pb
	m.int(1, irVersion)
	m.str(2, "batchgate-modelgen")
	m.str(3, "1")
	m.msg(8, func(p *pb) { p.str(1, ""); p.int(2, opsetVersion) })
	m.str(6, "Generated by batchgate with deterministic pseudo-random weights: predictions are meaningless.")
	m.msg(7, func(p *pb) {
		p.b = append(p.b, g.nodes.b...)
		p.str(2, name)
		p.b = append(p.b, g.inits.b...)
		p.msg(11, func(v *pb) { valueInfo(v, InputName, "N", 3, 224, 224) })
		p.msg(12, func(v *pb) { valueInfo(v, OutputName, "N", Classes) })
	})
	for _, kv := range [][2]string{
		{MetaGenerated, "true"},
		{MetaArchitecture, arch},
		{MetaNote, "deterministic pseudo-random weights: predictions are meaningless"},
	} {
		m.msg(14, func(p *pb) { p.str(1, kv[0]); p.str(2, kv[1]) })
	}
	return m.b
}

// valueInfo writes a float tensor ValueInfoProto whose first dimension is
// the symbolic batch dimension.
func valueInfo(v *pb, name, batch string, dims ...int64) {
	v.str(1, name)
	v.msg(2, func(tp *pb) {
		tp.msg(1, func(t *pb) {
			t.int(1, tensorFloat)
			t.msg(2, func(s *pb) {
				s.msg(1, func(d *pb) { d.str(2, batch) })
				for _, dim := range dims {
					s.msg(1, func(d *pb) { d.int(1, dim) })
				}
			})
		})
	})
}

// rng is splitmix64: tiny, fast and fully deterministic across platforms.
type rng uint64

func (r *rng) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	z := uint64(*r)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// float32 returns a uniform value in [0, 1).
func (r *rng) float32() float32 { return float32(r.next()>>40) / (1 << 24) }
