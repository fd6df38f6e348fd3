package sweep

import (
	"strings"
	"testing"
)

func TestVariantsMarkdown(t *testing.T) {
	reps := map[string]*report{
		"fp32": {Model: "resnet50-v1-generated.onnx", Raw: map[int]float64{1: 10, 4: 10.5}, Points: []point{
			{Setting: "batch=1 window=0s", Mode: "closed", Throughput: 9.7, RawRPS: 10, Ratio: 0.97, ProxyCPUms: 20, RtCPUms: 100},
			{Setting: "batch=1 window=0s", Mode: "open", Load: 0.5},
		}},
		"int8": {Model: "resnet50-v1-int8-generated.onnx", Raw: map[int]float64{1: 17, 4: 18.9}, Points: []point{
			{Setting: "batch=1 window=0s", Mode: "closed", Throughput: 16, RawRPS: 17, Ratio: 0.941, ProxyCPUms: 20, RtCPUms: 60},
		}},
	}
	md := variantsMarkdown([]string{"fp32", "int8"}, reps)
	for _, want := range []string{
		"| fp32 | resnet50-v1-generated.onnx | batch=1 window=0s | 9.70 | 10.00 | 0.970 | 20.0 | 100.0 | 17% |",
		"| int8 | resnet50-v1-int8-generated.onnx | batch=1 window=0s | 16.00 | 17.00 | 0.941 | 20.0 | 60.0 | 25% |",
		"| 1 | 10.00 | 17.00 | 1.70 |",
		"| 4 | 10.50 | 18.90 | 1.80 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("variants.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Count(md, "| fp32 | resnet50") != 1 {
		t.Errorf("open-loop points listed:\n%s", md)
	}
}
