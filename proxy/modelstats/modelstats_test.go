package modelstats

import (
	"reflect"
	"sync"
	"testing"
	"time"
)

// at is a fixed end time: 1,700,000,000,123 ms since the epoch.
var at = time.UnixMilli(1_700_000_000_123)

// Each event lands in its own statistic, with its count and nanoseconds;
// batch sizes are listed ascending, each once, with only the sizes run.
func TestRecorder(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		record func(r *Recorder)
		want   ModelStats
	}{
		{"nothing", func(*Recorder) {}, ModelStats{Name: "m", Version: "1", BatchStats: []BatchStats{}}},
		{"requests", func(r *Recorder) {
			r.Request(true, 3*ms, at)
			r.Request(true, 5*ms, at.Add(-time.Second)) // an earlier end keeps the latest
			r.Request(false, 2*ms, at)
		}, ModelStats{Name: "m", Version: "1", LastInference: 1_700_000_000_123, BatchStats: []BatchStats{},
			InferenceStats: InferStats{Success: Duration{2, 8e6}, Fail: Duration{1, 2e6}}}},
		{"cache", func(r *Recorder) {
			r.CacheHit(10 * time.Microsecond)
			r.CacheHit(20 * time.Microsecond)
			r.CacheMiss()
		}, ModelStats{Name: "m", Version: "1", BatchStats: []BatchStats{},
			InferenceStats: InferStats{CacheHit: Duration{2, 30_000}, CacheMiss: Duration{1, 0}}}},
		{"images", func(r *Recorder) {
			r.Prepared(4 * ms)
			r.Prepared(0) // a tensor: no preprocessing
			r.Computed(1*ms, 6*ms, 2*ms)
			r.Computed(3*ms, 6*ms, -ms) // a negative part counts as 0
		}, ModelStats{Name: "m", Version: "1", BatchStats: []BatchStats{},
			InferenceStats: InferStats{ComputeInput: Duration{2, 4e6}, Queue: Duration{2, 4e6},
				ComputeInfer: Duration{2, 12e6}, ComputeOutput: Duration{2, 2e6}}}},
		{"executions", func(r *Recorder) {
			r.Executed(4, 6*ms, ms, at)
			r.Executed(1, 2*ms, ms, at)
			r.Executed(4, 8*ms, 3*ms, at)
			r.Executed(0, ms, ms, at) // not a run
		}, ModelStats{Name: "m", Version: "1", LastInference: 1_700_000_000_123, InferenceCount: 9, ExecutionCount: 3,
			BatchStats: []BatchStats{
				{BatchSize: 1, ComputeInput: Duration{1, 0}, ComputeInfer: Duration{1, 2e6}, ComputeOutput: Duration{1, 1e6}},
				{BatchSize: 4, ComputeInput: Duration{2, 0}, ComputeInfer: Duration{2, 14e6}, ComputeOutput: Duration{2, 4e6}},
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Recorder
			tc.record(&r)
			if got := r.Snapshot("m", "1"); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// A snapshot is a copy: later events do not change it.
func TestSnapshotIsCopy(t *testing.T) {
	var r Recorder
	r.Executed(2, time.Millisecond, 0, at)
	s := r.Snapshot("m", "1")
	r.Executed(2, time.Millisecond, 0, at)
	if got := s.BatchStats[0].ComputeInfer.Count; got != 1 {
		t.Errorf("snapshot's batch count = %d after another run, want 1", got)
	}
}

// Concurrent recorders lose no event (run with -race).
func TestConcurrent(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	const workers, each = 8, 500
	for w := range workers {
		wg.Go(func() {
			for range each {
				r.Request(true, time.Microsecond, at)
				r.Computed(time.Microsecond, time.Microsecond, time.Microsecond)
				r.Executed(w+1, time.Microsecond, 0, at)
			}
		})
	}
	wg.Wait()
	s := r.Snapshot("m", "1")
	var images uint64
	for _, b := range s.BatchStats {
		images += b.BatchSize * b.ComputeInfer.Count
	}
	if s.InferenceStats.Success.Count != workers*each || s.ExecutionCount != workers*each ||
		images != s.InferenceCount || len(s.BatchStats) != workers {
		t.Errorf("got success %d, executions %d, images %d of %d, %d sizes; want %d, %d, equal, %d",
			s.InferenceStats.Success.Count, s.ExecutionCount, images, s.InferenceCount, len(s.BatchStats),
			workers*each, workers*each, workers)
	}
}
