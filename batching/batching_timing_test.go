package batching

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSubmit measures the batcher's own cost per item with a runner
// that does nothing. Twice as many submitters as the batch size and a 1ms
// window let batches fill: the runner is otherwise always idle.
func BenchmarkSubmit(b *testing.B) {
	for _, size := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			var batches, items atomic.Int64
			noop := RunnerFunc[int, int](func(_ context.Context, in []int, _ []Result[int]) error {
				batches.Add(1)
				items.Add(int64(len(in)))
				return nil
			})
			bt := New(noop, Config{MaxBatchSize: size, Window: time.Millisecond, QueueCapacity: 1 << 16})
			defer bt.Close(context.Background())
			b.ReportAllocs()
			b.SetParallelism(size) // GOMAXPROCS (2 here) * size submitters
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bt.Submit(ctx, 1); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(items.Load())/float64(max(batches.Load(), 1)), "items/batch")
		})
	}
}
