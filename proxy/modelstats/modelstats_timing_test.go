package modelstats

import (
	"testing"
	"time"
)

// BenchmarkRecord is what one computed image of a one-image request costs
// its version's recorder: its request, cache miss, preprocessing, image and
// its share of a batch of 8. It allocates nothing once the batch size has
// been seen.
func BenchmarkRecord(b *testing.B) {
	record := func(r *Recorder, end time.Time) {
		r.CacheMiss()
		r.Prepared(time.Millisecond)
		r.Computed(time.Millisecond, 5*time.Millisecond, time.Millisecond)
		r.Executed(8, 5*time.Millisecond, time.Millisecond, end)
		r.Request(true, 8*time.Millisecond, end)
	}
	b.Run("serial", func(b *testing.B) {
		var r Recorder
		end := time.Now()
		b.ReportAllocs()
		for b.Loop() {
			record(&r, end)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		var r Recorder
		end := time.Now()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				record(&r, end)
			}
		})
	})
}

// BenchmarkSnapshot is one version's answer to a statistics request.
func BenchmarkSnapshot(b *testing.B) {
	var r Recorder
	for size := 1; size <= 8; size++ {
		r.Executed(size, time.Millisecond, 0, time.Now())
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Snapshot("resnet50", "1")
	}
}
