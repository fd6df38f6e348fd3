package quantize

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"

	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

// Metadata keys of int8 twins, besides modelgen.MetaVariant.
const (
	// MetaSource is the sha256 of the float model the twin was made from.
	MetaSource = "batchgate.source_sha256"
	// MetaQuantization says how the twin was quantized and calibrated.
	MetaQuantization = "batchgate.quantization"
)

// Twin returns the int8 QDQ twin of a float model: Calibrate on
// CalibrationSet through ONNX Runtime (library), then QDQ with 7-bit
// weights (Options.ReduceRange: most x86 servers lack VNNI), marked
// modelgen.MetaVariant = "int8" and with the float model's sha256. The
// same model, library and CPU always give the same bytes (and other CPUs
// too, but for the rare activation range that lies on a rounding step, see
// activationParams).
func Twin(library string, fp32 []byte) ([]byte, error) {
	m, err := modelgen.Parse(fp32)
	if err != nil {
		return nil, err
	}
	p, err := newPlan(m)
	if err != nil {
		return nil, fmt.Errorf("cannot quantize: %w", err)
	}
	ranges, err := calibrate(library, m, p, CalibrationSet())
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(fp32)
	return qdq(m, p, ranges, Options{ReduceRange: true}, []modelgen.KV{
		{Key: modelgen.MetaVariant, Value: engine.VariantInt8},
		{Key: MetaSource, Value: hex.EncodeToString(sum[:])},
		{Key: MetaQuantization, Value: fmt.Sprintf("QDQ; weights int8 per channel, symmetric, 7 bits (reduce range); "+
			"activations uint8 per tensor, min/max over %d images (the bundled photograph and variants of it)", CalibrationImages)},
	})
}

// Comparison is how far a quantized model's answers are from its float
// model's on the same images.
type Comparison struct {
	Images int
	// Top1Agreement is the share of images whose best class is the same.
	Top1Agreement float64
	// Top1InTop5 is the share of images whose best class for the float
	// model is among the quantized model's best five.
	Top1InTop5 float64
	// MeanKL and MaxKL are the Kullback-Leibler divergence KL(float ||
	// quantized) of the softmax of the two models' scores, in nats.
	MeanKL, MaxKL float64
}

// Compare runs both models (ONNX bytes with one input and one output) on
// images and compares their answers. With pseudo-random weights this
// measures quantization error, not accuracy: there is no right answer.
func Compare(library string, fp32, int8 []byte, images [][]float32) (Comparison, error) {
	scores := make([][][]float32, 2)
	for k, model := range [][]byte{fp32, int8} {
		m, err := modelgen.Parse(model)
		if err != nil {
			return Comparison{}, err
		}
		g := &m.Graph
		if len(g.Inputs) != 1 || len(g.Outputs) != 1 || len(g.Inputs[0].Shape) != 4 {
			return Comparison{}, fmt.Errorf("model %d: want one [N,C,H,W] input and one output", k)
		}
		shape := []int64{1}
		for _, d := range g.Inputs[0].Shape[1:] {
			shape = append(shape, d.Value)
		}
		p, err := engine.OpenProbe(library, model, g.Inputs[0].Name, []string{g.Outputs[0].Name})
		if err != nil {
			return Comparison{}, err
		}
		for i, img := range images {
			err = p.Run(img, shape, func(_ int, data []float32) {
				scores[k] = append(scores[k], append([]float32(nil), data...))
			})
			if err != nil {
				p.Close()
				return Comparison{}, fmt.Errorf("image %d: %w", i, err)
			}
		}
		p.Close()
	}
	c := Comparison{Images: len(images)}
	agree, in5 := 0, 0
	for i := range images {
		pf, pq := softmax(scores[0][i]), softmax(scores[1][i])
		best := argmax(pf)
		if best == argmax(pq) {
			agree++
		}
		better := 0 // classes the quantized model ranks above best
		for _, v := range pq {
			if v > pq[best] {
				better++
			}
		}
		if better < 5 {
			in5++
		}
		var kl float64
		for j := range pf {
			if pf[j] > 0 {
				kl += pf[j] * math.Log(pf[j]/max(pq[j], 1e-300))
			}
		}
		c.MeanKL += kl / float64(len(images))
		c.MaxKL = max(c.MaxKL, kl)
	}
	if len(images) > 0 {
		c.Top1Agreement = float64(agree) / float64(len(images))
		c.Top1InTop5 = float64(in5) / float64(len(images))
	}
	return c, nil
}

func softmax(logits []float32) []float64 {
	m := math.Inf(-1)
	for _, v := range logits {
		m = max(m, float64(v))
	}
	out := make([]float64, len(logits))
	var sum float64
	for i, v := range logits {
		out[i] = math.Exp(float64(v) - m)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}

func argmax(p []float64) int {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return best
}
