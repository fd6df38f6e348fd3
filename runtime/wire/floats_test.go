package wire

import (
	"math"
	"testing"
)

// TestFinite: NaN and both infinities are refused, every finite value
// (the largest, the smallest subnormal, -0) passes.
func TestFinite(t *testing.T) {
	for _, tc := range []struct {
		x    float32
		want bool
	}{
		{0, true}, {float32(math.Copysign(0, -1)), true}, {1, true}, {-2.5, true},
		{math.MaxFloat32, true}, {-math.MaxFloat32, true}, {math.SmallestNonzeroFloat32, true},
		{float32(math.NaN()), false}, {float32(math.Inf(1)), false}, {float32(math.Inf(-1)), false},
		{math.Float32frombits(0x7fc00001), false}, {math.Float32frombits(0xff800001), false},
	} {
		if got := Finite([]float32{1, tc.x, 2}); got != tc.want {
			t.Errorf("Finite(%v, bits %#x) = %v, want %v", tc.x, math.Float32bits(tc.x), got, tc.want)
		}
	}
	if !Finite(nil) {
		t.Error("Finite(nil) = false, want true")
	}
}

// TestParseBatchInto: a buffer with room receives the images (no new
// slice), values bit for bit, and one without room is not written.
func TestParseBatchInto(t *testing.T) {
	images := []float32{1.5, -0, math.SmallestNonzeroFloat32, math.MaxFloat32, -3, 7}
	body := AppendBatch(nil, 9, 2, images, TraceContext{})[5:]
	buf := make([]float32, 0, 16)
	b, _, err := ParseBatchInto(body, 3, 4, buf)
	if err != nil {
		t.Fatal(err)
	}
	if &b.Images[0] != &buf[:1][0] {
		t.Error("ParseBatchInto allocated although the buffer had room")
	}
	for i, v := range images {
		if math.Float32bits(b.Images[i]) != math.Float32bits(v) {
			t.Errorf("image value %d = %v, want %v", i, b.Images[i], v)
		}
	}
	small := make([]float32, 0, 2)
	b, _, err = ParseBatchInto(body, 3, 4, small)
	if err != nil || len(b.Images) != 6 || small[:2][0] != 0 || small[:2][1] != 0 {
		t.Errorf("too small a buffer: %v, %d images, buffer %v (want it untouched)", err, len(b.Images), small[:2])
	}
}
