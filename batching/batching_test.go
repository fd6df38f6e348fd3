package batching

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const failBatch = -666

var (
	errNegative = errors.New("negative item")
	errBatch    = errors.New("batch failed")
)

// recorder is a Runner that doubles items after exec (fake time inside
// synctest). Item failBatch fails its whole batch; other items < 0 fail alone.
type recorder struct {
	exec func() time.Duration

	mu         sync.Mutex
	batches    [][]int
	starts     []time.Time
	running    int
	maxRunning int
}

func (r *recorder) RunBatch(ctx context.Context, items []int, results []Result[int]) error {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(items))
	r.starts = append(r.starts, time.Now())
	r.running++
	r.maxRunning = max(r.maxRunning, r.running)
	exec := time.Duration(0)
	if r.exec != nil {
		exec = r.exec()
	}
	r.mu.Unlock()
	time.Sleep(exec)
	r.mu.Lock()
	r.running--
	r.mu.Unlock()
	for i, it := range items {
		if it == failBatch {
			return errBatch
		}
		if it < 0 {
			results[i].Err = errNegative
		} else {
			results[i].Value = 2 * it
		}
	}
	return nil
}

func fixed(d time.Duration) func() time.Duration { return func() time.Duration { return d } }

func TestWindow(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name       string
		cfg        Config
		exec       time.Duration
		arrivals   []time.Duration // item i arrives at arrivals[i]
		want       [][]int
		wantStarts []time.Duration
	}{
		{
			name: "idle runner waits Window from the oldest item",
			cfg:  Config{MaxBatchSize: 8, Window: 10 * ms}, arrivals: []time.Duration{0, ms, 2 * ms},
			want: [][]int{{0, 1, 2}}, wantStarts: []time.Duration{10 * ms},
		},
		{
			name: "window 0 dispatches at once",
			cfg:  Config{MaxBatchSize: 8}, arrivals: []time.Duration{0, ms, 2 * ms},
			want: [][]int{{0}, {1}, {2}}, wantStarts: []time.Duration{0, ms, 2 * ms},
		},
		{
			name: "a full batch goes without waiting for the window",
			cfg:  Config{MaxBatchSize: 2, Window: time.Hour}, arrivals: []time.Duration{0, ms},
			want: [][]int{{0, 1}}, wantStarts: []time.Duration{ms},
		},
		{
			name: "under load batches fill while the runner is busy",
			cfg:  Config{MaxBatchSize: 4, Window: 10 * ms}, exec: 100 * ms,
			arrivals: []time.Duration{0, 20 * ms, 30 * ms, 40 * ms, 50 * ms, 60 * ms},
			want:     [][]int{{0}, {1, 2, 3, 4}, {5}}, wantStarts: []time.Duration{10 * ms, 110 * ms, 210 * ms},
		},
		{
			name: "two in flight",
			cfg:  Config{MaxBatchSize: 2, MaxInFlight: 2}, exec: 100 * ms,
			arrivals: []time.Duration{0, ms, 2 * ms, 3 * ms},
			want:     [][]int{{0}, {1}, {2, 3}}, wantStarts: []time.Duration{0, ms, 100 * ms},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := &recorder{exec: fixed(tc.exec)}
				b := New(r, tc.cfg)
				t0 := time.Now()
				var wg sync.WaitGroup
				for i, at := range tc.arrivals {
					wg.Go(func() {
						time.Sleep(at)
						got, err := b.Submit(context.Background(), i)
						if err != nil || got != 2*i {
							t.Errorf("Submit(%d) = %d, %v; want %d", i, got, err, 2*i)
						}
					})
				}
				wg.Wait()
				b.Close(context.Background())
				if !slices.EqualFunc(r.batches, tc.want, slices.Equal) {
					t.Errorf("batches = %v, want %v", r.batches, tc.want)
				}
				var starts []time.Duration
				for _, s := range r.starts {
					starts = append(starts, s.Sub(t0))
				}
				if !slices.Equal(starts, tc.wantStarts) {
					t.Errorf("batch starts = %v, want %v", starts, tc.wantStarts)
				}
			})
		})
	}
}

func TestQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{exec: fixed(time.Second)}
		b := New(r, Config{MaxBatchSize: 1, QueueCapacity: 2})
		defer b.Close(context.Background())
		ctx := context.Background()
		b.Submit(ctx, 100) // one batch teaches the batcher 1 s per item
		for i := range 3 { // one runs, two wait
			go b.Submit(ctx, i)
			synctest.Wait()
		}
		if got := b.Snapshot(); got.Waiting != 2 || got.InFlight != 1 || got.ItemTime != time.Second {
			t.Errorf("Snapshot = %+v, want 2 waiting, 1 in flight, 1s per item", got)
		}
		start := time.Now()
		_, err := b.Submit(ctx, 3)
		var qf *QueueFullError
		if !errors.As(err, &qf) || !errors.Is(err, ErrQueueFull) {
			t.Fatalf("Submit on a full queue = %v, want a QueueFullError", err)
		}
		if time.Since(start) != 0 {
			t.Error("Submit on a full queue waited")
		}
		if qf.Depth != 3 || qf.RetryAfter != 3*time.Second {
			t.Errorf("QueueFullError = %+v, want depth 3, retry after 3s", qf)
		}
	})
}

func TestDeadlineBeforeDispatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{exec: fixed(100 * time.Millisecond)}
		b := New(r, Config{MaxBatchSize: 1})
		go b.Submit(context.Background(), 1) // runs 0..100ms
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := b.Submit(ctx, 2)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 50*time.Millisecond {
			t.Errorf("Submit = %v after %v, want DeadlineExceeded after 50ms", err, time.Since(start))
		}
		if got, err := b.Submit(context.Background(), 3); got != 6 || err != nil {
			t.Errorf("Submit(3) = %d, %v", got, err)
		}
		b.Close(context.Background())
		if want := [][]int{{1}, {3}}; !slices.EqualFunc(r.batches, want, slices.Equal) {
			t.Errorf("batches = %v, want %v: the expired item must not take a slot", r.batches, want)
		}
	})
}

func TestCancelWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{exec: fixed(100 * time.Millisecond)}
		b := New(r, Config{MaxBatchSize: 2, Window: 10 * time.Millisecond})
		defer b.Close(context.Background())
		ctx, cancel := context.WithCancel(context.Background())
		t0 := time.Now()
		var cancelled error
		var cancelledAt time.Duration
		go func() {
			_, cancelled = b.Submit(ctx, 1)
			cancelledAt = time.Since(t0)
		}()
		go func() { time.Sleep(50 * time.Millisecond); cancel() }()
		got, err := b.Submit(context.Background(), 2)
		if got != 4 || err != nil || time.Since(t0) != 100*time.Millisecond {
			t.Errorf("other item = %d, %v at %v; want 4 at 100ms", got, err, time.Since(t0))
		}
		synctest.Wait()
		if !errors.Is(cancelled, context.Canceled) || cancelledAt != 50*time.Millisecond {
			t.Errorf("cancelled item = %v at %v, want Canceled at 50ms", cancelled, cancelledAt)
		}
	})
}

func TestErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		b := New(r, Config{MaxBatchSize: 3, Window: time.Millisecond})
		defer b.Close(context.Background())
		submitAll := func(items ...int) []Result[int] {
			res := make([]Result[int], len(items))
			var wg sync.WaitGroup
			for i, it := range items {
				wg.Go(func() { res[i].Value, res[i].Err = b.Submit(context.Background(), it) })
			}
			wg.Wait()
			return res
		}
		got := submitAll(1, -1, 2)
		if got[0] != (Result[int]{Value: 2}) || !errors.Is(got[1].Err, errNegative) || got[2] != (Result[int]{Value: 4}) {
			t.Errorf("per-item results = %+v, want 2, errNegative, 4", got)
		}
		for i, res := range submitAll(5, failBatch, 7) {
			if !errors.Is(res.Err, errBatch) {
				t.Errorf("item %d of failed batch = %+v, want errBatch", i, res)
			}
		}
		if got := submitAll(3); got[0] != (Result[int]{Value: 6}) {
			t.Errorf("after a failed batch = %+v, want 6", got[0])
		}
	})
}

func TestClose(t *testing.T) {
	t.Run("drains the queue", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := &recorder{exec: fixed(time.Second)}
			b := New(r, Config{MaxBatchSize: 2, Window: time.Hour})
			res := make([]Result[int], 3)
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Go(func() { res[i].Value, res[i].Err = b.Submit(context.Background(), i) })
			}
			synctest.Wait()
			if err := b.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			for i, r := range res {
				if r.Err != nil || r.Value != 2*i {
					t.Errorf("item %d = %+v, want %d", i, r, 2*i)
				}
			}
			if _, err := b.Submit(context.Background(), 9); !errors.Is(err, ErrClosed) {
				t.Errorf("Submit after Close = %v, want ErrClosed", err)
			}
			if err := b.Close(context.Background()); err != nil {
				t.Errorf("second Close = %v", err)
			}
		})
	})
	t.Run("drain timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := &recorder{exec: fixed(time.Second)}
			b := New(r, Config{MaxBatchSize: 1})
			res := make([]Result[int], 3)
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Go(func() { res[i].Value, res[i].Err = b.Submit(context.Background(), i) })
				synctest.Wait()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			t0 := time.Now()
			if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Close = %v, want DeadlineExceeded", err)
			}
			if time.Since(t0) != time.Second {
				t.Errorf("Close returned after %v, want 1s: it must wait for the batch in flight", time.Since(t0))
			}
			wg.Wait()
			if res[0] != (Result[int]{Value: 0}) || !errors.Is(res[1].Err, ErrClosed) || !errors.Is(res[2].Err, ErrClosed) {
				t.Errorf("results = %+v, want the running item done and the queued ones ErrClosed", res)
			}
		})
	})
}

// counter is an Observer that counts.
type counter struct {
	mu                  sync.Mutex
	dispatched, batches int
	maxWait             time.Duration
}

func (c *counter) Dispatched(waits []time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dispatched += len(waits)
	for _, w := range waits {
		c.maxWait = max(c.maxWait, w)
	}
}

func (c *counter) Finished(size int, exec time.Duration, err error) {
	c.mu.Lock()
	c.batches++
	c.mu.Unlock()
}

// TestStress submits bounded random workloads and checks the invariants:
// one result per item, the right value, batches within MaxBatchSize, in
// arrival order, at most MaxInFlight running, cancelled items never run.
func TestStress(t *testing.T) {
	for seed := range uint64(6) {
		synctest.Test(t, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			cfg := Config{
				MaxBatchSize:  1 + rng.IntN(16),
				Window:        time.Duration(rng.IntN(5)) * time.Millisecond,
				MaxInFlight:   1 + rng.IntN(3),
				QueueCapacity: 1 << 20,
			}
			execRng := rand.New(rand.NewPCG(seed, 7)) // recorder.mu guards it
			r := &recorder{exec: func() time.Duration {
				return time.Duration(execRng.IntN(8000)) * time.Microsecond
			}}
			obs := &counter{}
			cfg.Observer = obs
			b := New(r, cfg)
			const n = 1500
			cancelled := map[int]bool{}
			results := make([]Result[int], n)
			var wg sync.WaitGroup
			var at time.Duration
			for i := range n {
				at += time.Duration(1+rng.IntN(1500)) * time.Microsecond
				var timeout time.Duration
				if rng.IntN(10) == 0 {
					cancelled[i] = true
					timeout = time.Duration(rng.IntN(3000)) * time.Microsecond
				}
				arrive := at
				wg.Go(func() {
					time.Sleep(arrive)
					ctx := context.Background()
					if timeout > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, timeout)
						defer cancel()
					}
					results[i].Value, results[i].Err = b.Submit(ctx, i)
				})
			}
			wg.Wait()
			if err := b.Close(context.Background()); err != nil {
				t.Fatal(err)
			}

			// Batches that start at the same instant may enter the runner
			// in any order: sort by start, then first item, and require
			// the concatenation to be in arrival order.
			order := make([]int, len(r.batches))
			for i := range order {
				order[i] = i
			}
			slices.SortFunc(order, func(a, b int) int {
				if c := r.starts[a].Compare(r.starts[b]); c != 0 {
					return c
				}
				return r.batches[a][0] - r.batches[b][0]
			})
			seen := map[int]int{}
			last := -1
			for _, k := range order {
				batch := r.batches[k]
				if len(batch) == 0 || len(batch) > cfg.MaxBatchSize {
					t.Fatalf("batch of %d, max %d", len(batch), cfg.MaxBatchSize)
				}
				for _, it := range batch {
					seen[it]++
					if it <= last {
						t.Fatalf("item %d dispatched after item %d: not in arrival order", it, last)
					}
					last = it
				}
			}
			ran := 0
			for i, res := range results {
				switch {
				case seen[i] > 1:
					t.Fatalf("item %d ran %d times", i, seen[i])
				case !cancelled[i] && (seen[i] != 1 || res.Err != nil || res.Value != 2*i):
					t.Fatalf("item %d: ran %d times, result %+v; want once, %d", i, seen[i], res, 2*i)
				case cancelled[i] && res.Err == nil && res.Value != 2*i:
					t.Fatalf("cancelled item %d got the wrong value %d", i, res.Value)
				case cancelled[i] && seen[i] == 0 && !errors.Is(res.Err, context.DeadlineExceeded):
					t.Fatalf("item %d never ran but got %+v", i, res)
				}
				ran += seen[i]
			}
			if r.maxRunning > cfg.MaxInFlight {
				t.Errorf("%d batches ran at once, max %d", r.maxRunning, cfg.MaxInFlight)
			}
			if obs.dispatched != ran || obs.batches != len(r.batches) {
				t.Errorf("observer saw %d items in %d batches, runner ran %d in %d", obs.dispatched, obs.batches, ran, len(r.batches))
			}
			if s := b.Snapshot(); s.Waiting != 0 || s.InFlight != 0 {
				t.Errorf("after Close, Snapshot = %+v, want empty", s)
			}
		})
	}
}
