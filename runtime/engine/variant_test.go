package engine

import (
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

func TestVariant(t *testing.T) {
	for _, tc := range []struct {
		name     string
		metadata map[string]string
		ops      map[string]int
		want     string
	}{
		{"float graph", nil, map[string]int{"Conv": 53, "Gemm": 1}, VariantFP32},
		{"QDQ graph", nil, map[string]int{"Conv": 53, "QuantizeLinear": 73, "DequantizeLinear": 181}, VariantInt8},
		// The model zoo's resnet50-v1-12-int8 holds QOperator-format nodes.
		{"QOperator graph", nil, map[string]int{"QLinearConv": 53, "QuantizeLinear": 1}, VariantInt8},
		{"metadata says", map[string]string{modelgen.MetaVariant: "int8"}, map[string]int{"Conv": 1}, VariantInt8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := variant(tc.metadata, tc.ops); got != tc.want {
				t.Errorf("variant = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOptimizedOps: with the cache on, Info lists the kernels of the graph
// ONNX Runtime optimized, whether it was just built or loaded.
func TestOptimizedOps(t *testing.T) {
	cache := t.TempDir()
	for _, tc := range []struct {
		name, cache string
		fromCache   bool
	}{{"no cache", "", false}, {"built", cache, false}, {"loaded", cache, true}} {
		t.Run(tc.name, func(t *testing.T) {
			info := open(t, testenv.TinyModel(t), tc.cache).Info()
			if info.FromCache != tc.fromCache || info.Variant != VariantFP32 || info.Ops["Conv"] != 1 {
				t.Errorf("from cache %v, variant %q, ops %v", info.FromCache, info.Variant, info.Ops)
			}
			if tc.cache == "" {
				if info.OptimizedOps != nil {
					t.Errorf("OptimizedOps = %v without a cache", info.OptimizedOps)
				}
				return
			}
			if info.OptimizedOps["Gemm"]+info.OptimizedOps["FusedGemm"] != 1 || len(info.OptimizedOps) == 0 {
				t.Errorf("OptimizedOps = %v", info.OptimizedOps)
			}
		})
	}
}
