package modelgen_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

// TestParseMarshalRoundTrip: the generators' models (as testenv keeps them
// in .deps/models) survive Parse and Marshal byte for byte, so tools that
// rewrite them lose nothing.
func TestParseMarshalRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model func(testing.TB) string
	}{{"tiny", testenv.TinyModel}, {"resnet50", testenv.ResNet50Model}} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := os.ReadFile(tc.model(t))
			if err != nil {
				t.Fatal(err)
			}
			m, err := modelgen.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Marshal(); !bytes.Equal(got, b) {
				t.Fatalf("Marshal(Parse(model)) differs: %d bytes, want %d", len(got), len(b))
			}
			g := m.Graph
			if g.Inputs[0].Name != modelgen.InputName || g.Outputs[0].Name != modelgen.OutputName ||
				g.Inputs[0].Shape[0].Param != "N" || g.Inputs[0].Shape[1].Value != 3 || m.Opsets[0].Version != 12 {
				t.Errorf("parsed graph: inputs %+v, outputs %+v, opsets %+v", g.Inputs, g.Outputs, m.Opsets)
			}
			conv := g.Nodes[0]
			if a, ok := conv.Attr("kernel_shape"); conv.OpType != "Conv" || !ok || len(a.Ints) != 2 {
				t.Errorf("first node = %+v", conv)
			}
			if w, err := g.Initializers[0].Floats(); err != nil || int64(len(w)) != g.Initializers[0].Elems() {
				t.Errorf("first initializer: %d floats, %v", len(w), err)
			}
		})
	}
}
