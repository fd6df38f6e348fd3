package modelstats_test

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/batchgate/batchgate/proxy/modelstats"
)

// A version's recorder counts a request of two images run in one batch,
// then a request answered from the cache.
func Example() {
	var rec modelstats.Recorder
	end := time.UnixMilli(1_700_000_000_000)
	rec.CacheMiss()
	rec.CacheMiss()
	rec.Prepared(3 * time.Millisecond)
	rec.Prepared(4 * time.Millisecond)
	rec.Executed(2, 10*time.Millisecond, time.Millisecond, end)
	rec.Computed(2*time.Millisecond, 10*time.Millisecond, time.Millisecond)
	rec.Computed(1*time.Millisecond, 10*time.Millisecond, time.Millisecond)
	rec.Request(true, 20*time.Millisecond, end)
	rec.CacheHit(50 * time.Microsecond)
	rec.Request(true, time.Millisecond, end)

	s := rec.Snapshot("resnet50", "1")
	fmt.Println("requests:", s.InferenceStats.Success.Count, "cache hits:", s.InferenceStats.CacheHit.Count)
	fmt.Println("images computed:", s.InferenceCount, "in", s.ExecutionCount, "run")
	b, _ := json.Marshal(s.BatchStats)
	fmt.Println(string(b))
	// Output:
	// requests: 2 cache hits: 1
	// images computed: 2 in 1 run
	// [{"batch_size":2,"compute_input":{"count":1,"ns":0},"compute_infer":{"count":1,"ns":10000000},"compute_output":{"count":1,"ns":1000000}}]
}
