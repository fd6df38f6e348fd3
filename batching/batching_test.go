package batching

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"weak"
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
	infos      []BatchInfo
	starts     []time.Time
	running    int
	maxRunning int
	inRunner   map[int]bool // items of the running batches, if not nil
}

func (r *recorder) RunBatch(ctx context.Context, items []int, results []Result[int]) error {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(items))
	info, _ := InfoFrom(ctx)
	r.infos = append(r.infos, info)
	r.starts = append(r.starts, time.Now())
	r.running++
	r.maxRunning = max(r.maxRunning, r.running)
	exec := time.Duration(0)
	if r.exec != nil {
		exec = r.exec()
	}
	if r.inRunner != nil {
		for _, it := range items {
			r.inRunner[it] = true
		}
	}
	r.mu.Unlock()
	time.Sleep(exec)
	r.mu.Lock()
	r.running--
	if r.inRunner != nil {
		for _, it := range items {
			delete(r.inRunner, it)
		}
	}
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
		triggers   []Trigger
	}{
		{
			name: "idle runner waits Window from the oldest item",
			cfg:  Config{MaxBatchSize: 8, Window: 10 * ms}, arrivals: []time.Duration{0, ms, 2 * ms},
			want: [][]int{{0, 1, 2}}, wantStarts: []time.Duration{10 * ms}, triggers: []Trigger{TriggerWindow},
		},
		{
			name: "window 0 dispatches at once",
			cfg:  Config{MaxBatchSize: 8}, arrivals: []time.Duration{0, ms, 2 * ms},
			want: [][]int{{0}, {1}, {2}}, wantStarts: []time.Duration{0, ms, 2 * ms},
			triggers: []Trigger{TriggerIdle, TriggerIdle, TriggerIdle},
		},
		{
			name: "a full batch goes without waiting for the window",
			cfg:  Config{MaxBatchSize: 2, Window: time.Hour}, arrivals: []time.Duration{0, ms},
			want: [][]int{{0, 1}}, wantStarts: []time.Duration{ms}, triggers: []Trigger{TriggerFull},
		},
		{
			name: "under load batches fill while the runner is busy",
			cfg:  Config{MaxBatchSize: 4, Window: 10 * ms}, exec: 100 * ms,
			arrivals: []time.Duration{0, 20 * ms, 30 * ms, 40 * ms, 50 * ms, 60 * ms},
			want:     [][]int{{0}, {1, 2, 3, 4}, {5}}, wantStarts: []time.Duration{10 * ms, 110 * ms, 210 * ms},
			triggers: []Trigger{TriggerWindow, TriggerFull, TriggerWindow},
		},
		{
			name: "two in flight",
			cfg:  Config{MaxBatchSize: 2, MaxInFlight: 2}, exec: 100 * ms,
			arrivals: []time.Duration{0, ms, 2 * ms, 3 * ms},
			want:     [][]int{{0}, {1}, {2, 3}}, wantStarts: []time.Duration{0, ms, 100 * ms},
			triggers: []Trigger{TriggerIdle, TriggerIdle, TriggerFull},
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
				var triggers []Trigger
				for _, i := range r.infos {
					triggers = append(triggers, i.Trigger)
				}
				if !slices.Equal(triggers, tc.triggers) {
					t.Errorf("triggers = %v, want %v", triggers, tc.triggers)
				}
			})
		})
	}
}

// TestBatchInfoDrain: Close sends queued items at once, as TriggerDrain,
// and QueueDepth counts every item waiting or running as a batch forms.
func TestBatchInfoDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{exec: fixed(time.Second)}
		b := New(r, Config{MaxBatchSize: 2, Window: time.Hour})
		for i := range 3 {
			go b.Submit(context.Background(), i)
			synctest.Wait()
		}
		// 0 and 1 left as a full batch (depth 2); 2 waits for the window,
		// then leaves alone once the first batch is done (depth 1).
		b.Close(context.Background())
		want := []BatchInfo{{TriggerFull, 2}, {TriggerDrain, 1}}
		if !slices.Equal(r.infos, want) {
			t.Errorf("batch infos = %v, want %v", r.infos, want)
		}
	})
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

// TestStress submits bounded random workloads, some with deadlines and some
// cancelled at random times, and checks the invariants: one result per item,
// its own value, batches within MaxBatchSize, in arrival order, at most
// MaxInFlight running, an item never run after its Submit gave up; and,
// sampled whenever the bubble is still, queue accounting that is exact:
// Waiting is the number of callers waiting for items not in the runner,
// InFlight the number of items in it.
func TestStress(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 42))
				const n = 1500
				cfg := Config{
					MaxBatchSize:  1 + rng.IntN(16),
					Window:        time.Duration(rng.IntN(5)) * time.Millisecond,
					MaxInFlight:   1 + rng.IntN(3),
					QueueCapacity: n,
				}
				execRng := rand.New(rand.NewPCG(seed, 7)) // recorder.mu guards it
				r := &recorder{inRunner: map[int]bool{}, exec: func() time.Duration {
					return time.Duration(execRng.IntN(8000)) * time.Microsecond
				}}
				obs := &counter{}
				cfg.Observer = obs
				b := New(r, cfg)
				cancelled := map[int]bool{}
				results := make([]Result[int], n)
				var (
					mu     sync.Mutex
					active = map[int]bool{}      // in Submit
					gaveUp = map[int]time.Time{} // Submit returned the context's error
				)
				var wg sync.WaitGroup
				var at time.Duration
				start := time.Now()
				for i := range n {
					at += time.Duration(1+rng.IntN(1500)) * time.Microsecond
					var timeout, cancelAfter time.Duration
					switch rng.IntN(10) {
					case 0:
						cancelled[i] = true
						timeout = time.Duration(1+rng.IntN(3000)) * time.Microsecond
					case 1:
						cancelled[i] = true
						cancelAfter = 1 + time.Duration(rng.IntN(6000))*time.Microsecond
					}
					arrive := at
					wg.Go(func() {
						time.Sleep(arrive)
						ctx, cancel := context.WithCancel(context.Background())
						defer cancel()
						if timeout > 0 {
							ctx, cancel = context.WithTimeout(ctx, timeout)
							defer cancel()
						}
						if cancelAfter > 0 {
							go func() { time.Sleep(cancelAfter); cancel() }()
						}
						mu.Lock()
						active[i] = true
						mu.Unlock()
						v, err := b.Submit(ctx, i)
						mu.Lock()
						delete(active, i)
						if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
							gaveUp[i] = time.Now()
						}
						mu.Unlock()
						results[i].Value, results[i].Err = v, err
					})
				}
				stop, sampled := make(chan struct{}), make(chan int)
				go func() {
					samples := 0
					defer func() { sampled <- samples }()
					for {
						select {
						case <-stop:
							return
						case <-time.After(time.Duration(1+rng.IntN(2000)) * time.Microsecond):
						}
						synctest.Wait() // every other goroutine blocked: a still point
						mu.Lock()
						r.mu.Lock()
						waiting := 0
						for i := range active {
							if !r.inRunner[i] {
								waiting++
							}
						}
						want := Snapshot{Waiting: waiting, InFlight: len(r.inRunner)}
						r.mu.Unlock()
						mu.Unlock()
						if got := b.Snapshot(); got.Waiting != want.Waiting || got.InFlight != want.InFlight {
							t.Errorf("at %v: Snapshot = %+v, want %d waiting, %d in flight", time.Since(start), got, want.Waiting, want.InFlight)
							return
						}
						samples++
					}
				}()
				wg.Wait()
				close(stop)
				if samples := <-sampled; samples < 100 {
					t.Errorf("only %d samples", samples)
				}
				time.Sleep(time.Second) // batches of callers that gave up finish
				if s := b.Snapshot(); s.Waiting != 0 || s.InFlight != 0 {
					t.Errorf("all done, Snapshot = %+v, want empty", s)
				}
				if err := b.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				for k, batch := range r.batches {
					for _, it := range batch {
						if gave, ok := gaveUp[it]; ok && r.starts[k].After(gave) {
							t.Fatalf("item %d ran at %v, after its Submit gave up at %v", it, r.starts[k], gave)
						}
					}
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
					case cancelled[i] && seen[i] == 0 && !errors.Is(res.Err, context.DeadlineExceeded) && !errors.Is(res.Err, context.Canceled):
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
		})
	}
}

// blocked is a Runner whose batches wait for release to be closed; it
// records the items it is given.
type blocked struct {
	release chan struct{}
	mu      sync.Mutex
	batches [][]int
}

func (r *blocked) RunBatch(_ context.Context, items []int, results []Result[int]) error {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(items))
	r.mu.Unlock()
	<-r.release
	for i, it := range items {
		results[i].Value = 2 * it
	}
	return nil
}

// TestAbandonFreesSlot: an item whose context ends while it waits leaves the
// queue at once, so new items are admitted while the runner is still busy.
func TestAbandonFreesSlot(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline bool // the queued items' deadlines pass; else they are cancelled
		wantErr  error
	}{
		{"cancelled", false, context.Canceled},
		{"deadline passed", true, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := &blocked{release: make(chan struct{})}
				b := New(r, Config{MaxBatchSize: 1, QueueCapacity: 2})
				bg := context.Background()
				want := func(step string, waiting, inFlight int) {
					t.Helper()
					synctest.Wait()
					if s := b.Snapshot(); s.Waiting != waiting || s.InFlight != inFlight {
						t.Errorf("%s: Snapshot = %+v, want %d waiting, %d in flight", step, s, waiting, inFlight)
					}
				}
				res := make([]Result[int], 5)
				returned := make([]bool, 5)
				var mu sync.Mutex
				submit := func(ctx context.Context, i int) {
					go func() {
						v, err := b.Submit(ctx, i)
						mu.Lock()
						res[i], returned[i] = Result[int]{Value: v, Err: err}, true
						mu.Unlock()
					}()
				}
				submit(bg, 0)
				want("item 0 runs", 0, 1)
				var end [3]func() // ends item i's context
				for i := 1; i <= 2; i++ {
					ctx, cancel := context.WithCancel(bg)
					end[i] = cancel
					if tc.deadline {
						ctx, cancel = context.WithTimeout(bg, time.Duration(i)*10*time.Millisecond)
						end[i] = func() { time.Sleep(10 * time.Millisecond) }
					}
					defer cancel()
					submit(ctx, i)
					want("item queued", i, 1)
				}
				for i := 1; i <= 2; i++ {
					end[i]()
					want("context ended", 2-i, 1)
					mu.Lock()
					if !returned[i] || !errors.Is(res[i].Err, tc.wantErr) {
						t.Errorf("item %d: returned %v, %+v; want %v at once", i, returned[i], res[i], tc.wantErr)
					}
					mu.Unlock()
				}
				// The freed slots take two new items while item 0 still runs.
				submit(bg, 3)
				want("item 3 admitted", 1, 1)
				submit(bg, 4)
				want("item 4 admitted", 2, 1)
				mu.Lock()
				for i := 3; i <= 4; i++ {
					if returned[i] {
						t.Errorf("item %d: returned %+v while the runner is busy, want it queued", i, res[i])
					}
				}
				mu.Unlock()
				var qf *QueueFullError
				if _, err := b.Submit(bg, 5); !errors.As(err, &qf) || qf.Depth != 3 {
					t.Errorf("Submit on a full queue = %v, want a QueueFullError of depth 3", err)
				}
				want("after the rejection", 2, 1)

				close(r.release)
				if err := b.Close(bg); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				for _, i := range []int{0, 3, 4} {
					if res[i] != (Result[int]{Value: 2 * i}) {
						t.Errorf("item %d = %+v, want %d", i, res[i], 2*i)
					}
				}
				if want := [][]int{{0}, {3}, {4}}; !slices.EqualFunc(r.batches, want, slices.Equal) {
					t.Errorf("batches = %v, want %v: abandoned items must never reach the runner", r.batches, want)
				}
				want("after Close", 0, 0)
			})
		})
	}
}

// TestAbandonReleasesItem: the dispatcher lets go of an abandoned item (a
// 600 KB tensor in the proxy) at once, not when it next forms a batch.
func TestAbandonReleasesItem(t *testing.T) {
	type tensor [600 << 10]byte
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		b := New(RunnerFunc[*tensor, int](func(context.Context, []*tensor, []Result[int]) error {
			<-release
			return nil
		}), Config{MaxBatchSize: 1})
		bg := context.Background()
		go b.Submit(bg, new(tensor)) // keeps the runner busy
		synctest.Wait()
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		var items [2]weak.Pointer[tensor]
		for i := range items {
			item := new(tensor)
			items[i] = weak.Make(item)
			go b.Submit(ctx, item)
		}
		synctest.Wait()
		cancel()
		synctest.Wait()
		runtime.GC()
		for i, w := range items {
			if w.Value() != nil {
				t.Errorf("abandoned item %d still referenced while the runner is busy", i)
			}
		}
		close(release)
		b.Close(bg)
	})
}

// serial is a Runner for a backend that runs one batch at a time, however
// many are in flight: 100ms per item. Item failBatch fails its batch at
// once (backend down); other items < 0 fail alone, also at once.
type serial struct{ backend chan struct{} }

func (r serial) RunBatch(_ context.Context, items []int, results []Result[int]) error {
	if slices.Contains(items, failBatch) {
		return errBatch
	}
	if slices.ContainsFunc(items, func(it int) bool { return it < 0 }) {
		for i := range results {
			results[i].Err = errNegative
		}
		return nil
	}
	r.backend <- struct{}{} // a channel, not a mutex: synctest sees it block
	time.Sleep(time.Duration(len(items)) * 100 * time.Millisecond)
	<-r.backend
	for i, it := range items {
		results[i].Value = 2 * it
	}
	return nil
}

// TestRetryAfter: RetryAfter is depth x the backend's time per item in
// successful batches, whatever failed since and however many are in flight.
func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxInFlight int
		warm        [][]int // each group submitted at once, in turn
	}{
		{"after a runner error", 1, [][]int{{1}, {failBatch}}},
		{"after a batch of failed items", 1, [][]int{{1}, {-1}}},
		{"two in flight, not overlapping", 2, [][]int{{1}, {2}}},
		{"two in flight, one backend", 2, [][]int{{1, 2}, {failBatch}}},
		{"two in flight, batches of 2", 2, [][]int{{1, 2, 3, 4}, {-1, failBatch}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const queueCap = 3
				b := New(serial{make(chan struct{}, 1)}, Config{
					MaxBatchSize: 2, Window: time.Millisecond,
					MaxInFlight: tc.maxInFlight, QueueCapacity: queueCap,
				})
				defer b.Close(context.Background())
				bg := context.Background()
				for _, group := range tc.warm {
					var wg sync.WaitGroup
					for _, it := range group {
						wg.Go(func() { b.Submit(bg, it) })
					}
					wg.Wait()
				}
				if got := b.Snapshot().ItemTime; got != 100*time.Millisecond {
					t.Errorf("ItemTime = %v, want 100ms", got)
				}
				// Fill the batches in flight, one item each, then the queue.
				for i := range tc.maxInFlight + queueCap {
					go b.Submit(bg, 10+i)
					synctest.Wait()
					time.Sleep(time.Millisecond) // past the window: one item per batch
				}
				synctest.Wait()
				depth := tc.maxInFlight + queueCap
				if s := b.Snapshot(); s.Waiting+s.InFlight != depth {
					t.Fatalf("Snapshot = %+v, want %d items in all", s, depth)
				}
				_, err := b.Submit(bg, 99)
				var qf *QueueFullError
				if !errors.As(err, &qf) {
					t.Fatalf("Submit on a full queue = %v, want a QueueFullError", err)
				}
				if want := time.Duration(depth) * 100 * time.Millisecond; qf.Depth != depth || qf.RetryAfter != want {
					t.Errorf("QueueFullError = %+v, want depth %d, retry after %v", qf, depth, want)
				}
			})
		})
	}
}

// Snapshot's Demand counts the measured time per item of every Submit that
// reached the queue, refused ones included; Busy counts the runner's time.
func TestDemandAndBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{exec: fixed(time.Second)}
		b := New(r, Config{MaxBatchSize: 1, QueueCapacity: 1})
		defer b.Close(context.Background())
		ctx := context.Background()
		b.Submit(ctx, 100) // no time per item known yet: no demand; 1 s busy
		for _, tc := range []struct {
			step         string
			submit       int
			demand, busy time.Duration
		}{
			{"after the first batch", 0, 0, time.Second},
			{"one running, one waiting", 2, 2 * time.Second, time.Second},
			{"one refused (queue full) counts too", 1, 3 * time.Second, time.Second},
		} {
			for i := range tc.submit {
				go b.Submit(ctx, i)
				synctest.Wait()
			}
			if got := b.Snapshot(); got.Demand != tc.demand || got.Busy != tc.busy {
				t.Errorf("%s: Demand %v, Busy %v; want %v, %v", tc.step, got.Demand, got.Busy, tc.demand, tc.busy)
			}
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := b.Snapshot(); got.Busy != 3*time.Second || got.Demand != 3*time.Second {
			t.Errorf("drained: Demand %v, Busy %v; want 3s, 3s", got.Demand, got.Busy)
		}
	})
}
