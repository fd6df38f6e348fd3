package wire

import "testing"

// One 3x224x224 image each way: the proxy's AppendBatch and the runtime's
// ParseBatchInto into a reused buffer, then Finite.
func BenchmarkAppendBatch(b *testing.B) {
	img := make([]float32, 3*224*224)
	buf := make([]byte, 0, 5+12+4*len(img))
	b.ReportAllocs()
	b.SetBytes(int64(4 * len(img)))
	for b.Loop() {
		buf = AppendBatch(buf[:0], 1, 1, img, TraceContext{})
	}
}

func BenchmarkParseBatch(b *testing.B) {
	img := make([]float32, 3*224*224)
	body := AppendBatch(nil, 1, 1, img, TraceContext{})[5:]
	buf := make([]float32, len(img))
	b.ReportAllocs()
	b.SetBytes(int64(4 * len(img)))
	for b.Loop() {
		batch, _, err := ParseBatchInto(body, len(img), 8, buf)
		if err != nil || !Finite(batch.Images) {
			b.Fatal(err)
		}
	}
}
