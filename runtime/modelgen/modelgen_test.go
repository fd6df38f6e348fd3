package modelgen

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

func TestStats(t *testing.T) {
	// ResNet50 has 25,557,032 trainable parameters (conv weights, batch
	// norm scale and shift, classifier) whichever v1 variant it is.
	_, got := ResNet50(DefaultSeed)
	if got.Params != 25_557_032 {
		t.Errorf("ResNet50 params = %d, want 25557032", got.Params)
	}
	// v1 puts the stride on the 1x1 convolution: 3.86 GMACs, against
	// 4.09 for v1.5 which strides the 3x3.
	if got.MACs < 3.8e9 || got.MACs > 4.2e9 {
		t.Errorf("ResNet50 MACs = %d, want about 3.9e9", got.MACs)
	}
	t.Logf("ResNet50 v1: %d params, %.3f GMACs", got.Params, float64(got.MACs)/1e9)
}

func TestDeterministic(t *testing.T) {
	for _, tc := range []struct {
		name string
		gen  func(uint64) ([]byte, Stats)
	}{{"tiny", Tiny}, {"resnet50", ResNet50}} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := tc.gen(1)
			b, _ := tc.gen(1)
			c, _ := tc.gen(2)
			if !bytes.Equal(a, b) {
				t.Errorf("two models with seed 1 differ: sha256 %x and %x", sha256.Sum256(a), sha256.Sum256(b))
			}
			if bytes.Equal(a, c) {
				t.Error("seeds 1 and 2 gave the same model")
			}
		})
	}
}
