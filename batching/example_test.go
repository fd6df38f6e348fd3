package batching_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/batchgate/batchgate/batching"
)

// A Runner receives whole batches; callers submit one item at a time.
func Example() {
	var mu sync.Mutex
	var sizes []int
	double := batching.RunnerFunc[int, int](func(ctx context.Context, items []int, results []batching.Result[int]) error {
		mu.Lock()
		sizes = append(sizes, len(items))
		mu.Unlock()
		for i, x := range items {
			results[i].Value = 2 * x
		}
		return nil
	})
	// Wait up to 50ms for a batch of 4 to fill.
	b := batching.New(double, batching.Config{MaxBatchSize: 4, Window: 50 * time.Millisecond})

	var wg sync.WaitGroup
	out := make([]int, 4)
	for i := range 4 {
		wg.Go(func() { out[i], _ = b.Submit(context.Background(), i+1) })
	}
	wg.Wait()
	b.Close(context.Background())
	fmt.Println(out, "in batches of", sizes)
	// Output: [2 4 6 8] in batches of [4]
}
