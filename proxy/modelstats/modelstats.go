// Package modelstats records Triton's statistics extension for one model
// version: request counts and durations, the time images spend in each
// stage, and the model's executions per batch size. A Recorder is owned by
// the version it counts (proxy/versions); the front ends (proxy/httpapi's
// /v2/models/.../stats, proxy/oipgrpc's ModelStatistics) read its
// snapshots. It knows nothing of HTTP, gRPC or the runtime.
//
// What each statistic measures here (docs/api.md, "Statistics"):
//
//   - success, fail: the requests routed to the version, answered with a
//     2xx status or not, with their whole duration.
//   - queue: each image the model computed for a request, its wait in the
//     batcher's queue. Cache hits never queue here, so they are not in it.
//   - compute_input: each image computed, its preprocessing (decode,
//     resize, normalize); 0 ns for FP32 tensors, which need none.
//   - compute_infer: each image computed, the model's run of its batch as
//     the runtime times it (counted once per image, as Triton counts a
//     batch's execution per request).
//   - compute_output: each image computed, the rest of its batch's call
//     to the runtime, the call's round trip less the model's run: the
//     tensors over the socket, the runtime's checks and tensor set-up, the
//     scores back. The two directions cannot be timed apart here, so both
//     are in compute_output.
//   - cache_hit: each answer from the result cache, with the lookup's
//     time (hashing the image and reading the cache); cache_miss: each
//     lookup that missed, with 0 ns (its time cannot be told apart from
//     the computation that follows).
//   - inference_count, execution_count, batch_stats: the model's runs on
//     the runtime, whoever sent them (mirrored shadow traffic included):
//     the images computed, the runs, and per batch size the runs with the
//     runtime's time (compute_infer), the rest of the call
//     (compute_output), and compute_input with 0 ns (preprocessing is per
//     image, before batching).
//   - last_inference: when the version last answered a request or ran a
//     batch, in milliseconds since the epoch.
package modelstats

import (
	"slices"
	"sync"
	"time"
)

// Duration is a count and the nanoseconds they took in all: Triton's
// StatisticDuration.
type Duration struct {
	Count uint64 `json:"count"`
	NS    uint64 `json:"ns"`
}

// add counts one occurrence that took d (a negative d counts as 0).
func (d *Duration) add(took time.Duration) {
	d.Count++
	d.NS += uint64(max(took, 0))
}

// InferStats is Triton's InferStatistics: what the version's requests and
// their images went through.
type InferStats struct {
	Success       Duration `json:"success"`
	Fail          Duration `json:"fail"`
	Queue         Duration `json:"queue"`
	ComputeInput  Duration `json:"compute_input"`
	ComputeInfer  Duration `json:"compute_infer"`
	ComputeOutput Duration `json:"compute_output"`
	CacheHit      Duration `json:"cache_hit"`
	CacheMiss     Duration `json:"cache_miss"`
}

// BatchStats is Triton's InferBatchStatistics: the model's runs of one
// batch size.
type BatchStats struct {
	BatchSize     uint64   `json:"batch_size"`
	ComputeInput  Duration `json:"compute_input"`
	ComputeInfer  Duration `json:"compute_infer"`
	ComputeOutput Duration `json:"compute_output"`
}

// ModelStats is one model version's statistics, as Triton's statistics
// extension answers them (ModelStatistics).
type ModelStats struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// LastInference is in milliseconds since the epoch; 0: never.
	LastInference  uint64       `json:"last_inference"`
	InferenceCount uint64       `json:"inference_count"`
	ExecutionCount uint64       `json:"execution_count"`
	InferenceStats InferStats   `json:"inference_stats"`
	BatchStats     []BatchStats `json:"batch_stats"` // by batch size, ascending
}

// Recorder counts one model version's statistics. It is safe for
// concurrent use; the zero value is ready. Recording takes its mutex for a
// few additions and allocates nothing, except that the first run of a
// batch size larger than any before grows the per-size table (bounded by
// the largest batch size).
type Recorder struct {
	mu         sync.Mutex
	last       int64 // ms since the epoch
	inferences uint64
	executions uint64
	infer      InferStats
	bySize     []BatchStats // index: batch size - 1; Count 0: never run
}

// Request counts a request the version answered: a success if ok, else a
// failure, that took took and ended at end.
func (r *Recorder) Request(ok bool, took time.Duration, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.infer.Success.add(took)
	} else {
		r.infer.Fail.add(took)
	}
	r.last = max(r.last, end.UnixMilli())
}

// CacheHit counts an answer from the result cache whose lookup took took.
func (r *Recorder) CacheHit(took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infer.CacheHit.add(took)
}

// CacheMiss counts a cache lookup that missed (0 ns: see the package
// comment).
func (r *Recorder) CacheMiss() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infer.CacheMiss.add(0)
}

// Prepared counts the preprocessing of an image the model computed for a
// request: compute_input.
func (r *Recorder) Prepared(prep time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infer.ComputeInput.add(prep)
}

// Computed counts an image the model computed for a request: its queue
// wait, its batch's run in the runtime (infer) and the rest of its batch's
// call to the runtime (output).
func (r *Recorder) Computed(queue, infer, output time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infer.Queue.add(queue)
	r.infer.ComputeInfer.add(infer)
	r.infer.ComputeOutput.add(output)
}

// Executed counts a successful run of the model on a batch of size images
// that ended at end: the runtime's time (infer) and the rest of the call
// (output). A size below 1 is not counted.
func (r *Recorder) Executed(size int, infer, output time.Duration, end time.Time) {
	if size < 1 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if size > len(r.bySize) {
		r.bySize = slices.Grow(r.bySize, size-len(r.bySize))[:size]
	}
	b := &r.bySize[size-1]
	b.BatchSize = uint64(size)
	b.ComputeInput.add(0)
	b.ComputeInfer.add(infer)
	b.ComputeOutput.add(output)
	r.inferences += uint64(size)
	r.executions++
	r.last = max(r.last, end.UnixMilli())
}

// Snapshot returns the statistics so far, named name and version.
func (r *Recorder) Snapshot(name, version string) ModelStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := ModelStats{Name: name, Version: version, LastInference: uint64(max(r.last, 0)),
		InferenceCount: r.inferences, ExecutionCount: r.executions, InferenceStats: r.infer,
		BatchStats: make([]BatchStats, 0, len(r.bySize))}
	for _, b := range r.bySize {
		if b.ComputeInfer.Count > 0 {
			s.BatchStats = append(s.BatchStats, b)
		}
	}
	return s
}
