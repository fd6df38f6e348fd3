package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// slow returns an fn that takes d (or until its context ends), counting its
// runs and recording whether its context ended.
func slow(d time.Duration, runs *atomic.Int32, cancelled *atomic.Bool) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		runs.Add(1)
		select {
		case <-time.After(d):
			return "result", nil
		case <-ctx.Done():
			cancelled.Store(true)
			return "", ctx.Err()
		}
	}
}

func TestSharedExactlyOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[string, string]
		var runs atomic.Int32
		var cancelled atomic.Bool
		const n = 8
		type res struct {
			v      string
			shared bool
			err    error
		}
		got := make([]res, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				v, shared, err := g.Do(ctx, "k", slow(time.Second, &runs, &cancelled))
				got[i] = res{v, shared, err}
			})
			synctest.Wait() // the first one has started the call
		}
		wg.Wait()
		if runs.Load() != 1 {
			t.Errorf("fn ran %d times for %d identical calls, want 1", runs.Load(), n)
		}
		sharedCount := 0
		for i, r := range got {
			if r.v != "result" || r.err != nil {
				t.Errorf("caller %d got %q, %v", i, r.v, r.err)
			}
			if r.shared {
				sharedCount++
			}
		}
		if sharedCount != n-1 {
			t.Errorf("%d callers joined, want %d", sharedCount, n-1)
		}
		// Done: the next call runs fn again.
		g.Do(context.Background(), "k", slow(time.Second, &runs, &cancelled))
		if runs.Load() != 2 {
			t.Errorf("after completion fn ran %d times in all, want 2", runs.Load())
		}
	})
}

func TestCancelledOnlyWhenEveryCallerLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[string, string]
		var runs atomic.Int32
		var cancelled atomic.Bool
		ctx1, cancel1 := context.WithCancel(context.Background())
		ctx2, cancel2 := context.WithCancel(context.Background())
		errs := make(chan error, 2)
		go func() { _, _, err := g.Do(ctx1, "k", slow(time.Hour, &runs, &cancelled)); errs <- err }()
		synctest.Wait()
		go func() { _, _, err := g.Do(ctx2, "k", slow(time.Hour, &runs, &cancelled)); errs <- err }()
		synctest.Wait()

		cancel1()
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Errorf("first caller: %v, want context.Canceled", err)
		}
		synctest.Wait()
		if cancelled.Load() {
			t.Fatal("the shared work was cancelled while a caller still waited")
		}
		cancel2()
		<-errs
		synctest.Wait()
		if !cancelled.Load() {
			t.Error("the shared work went on after every caller left")
		}
		if runs.Load() != 1 {
			t.Errorf("fn ran %d times, want 1", runs.Load())
		}
	})
}

// A joiner with a later deadline is not cut short by the first caller's.
func TestLateJoinerKeepsItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[string, string]
		var runs atomic.Int32
		var cancelled atomic.Bool
		fn := slow(2*time.Second, &runs, &cancelled)
		first := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, _, err := g.Do(ctx, "k", fn)
			first <- err
		}()
		time.Sleep(500 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		v, shared, err := g.Do(ctx, "k", fn)
		if err != nil || v != "result" || !shared {
			t.Fatalf("late joiner got %q, shared=%v, %v; want the shared result", v, shared, err)
		}
		if took := time.Since(start); took != 1500*time.Millisecond {
			t.Errorf("late joiner waited %v, want 1.5s", took)
		}
		if err := <-first; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("first caller: %v, want its own deadline", err)
		}
		if runs.Load() != 1 || cancelled.Load() {
			t.Errorf("fn ran %d times, cancelled=%v; want once, not cancelled", runs.Load(), cancelled.Load())
		}
	})
}

// When the latest deadline passes the work ends, even if a caller is slow to
// notice; a caller arriving after that starts afresh.
func TestDeadlineEndsWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[string, string]
		var runs atomic.Int32
		var cancelled atomic.Bool
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, _, err := g.Do(ctx, "k", slow(time.Hour, &runs, &cancelled)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		synctest.Wait()
		if !cancelled.Load() {
			t.Error("work outlived every caller's deadline")
		}
		v, shared, err := g.Do(context.Background(), "k", slow(time.Second, &runs, &cancelled))
		if v != "result" || shared || err != nil || runs.Load() != 2 {
			t.Errorf("fresh call: %q shared=%v %v, runs %d", v, shared, err, runs.Load())
		}
	})
}

func TestFnErrorShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[int, int]
		boom := errors.New("boom")
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				_, _, err := g.Do(context.Background(), 1, func(context.Context) (int, error) {
					time.Sleep(time.Second)
					return 0, boom
				})
				if !errors.Is(err, boom) {
					t.Errorf("got %v, want boom", err)
				}
			})
		}
		wg.Wait()
	})
}

func ExampleGroup() {
	var g Group[string, int]
	v, shared, err := g.Do(context.Background(), "sha256:ab12", func(ctx context.Context) (int, error) {
		return 42, nil // the expensive work, run once for every identical caller
	})
	_, _, _ = v, shared, err
	// Output:
}

// A panic in fn, on the call's own goroutine, comes back to every caller as
// a *PanicError instead of ending the process.
func TestPanicShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g Group[int, int]
		var wg sync.WaitGroup
		joined := 0
		var mu sync.Mutex
		for i := range 2 {
			wg.Go(func() {
				_, _, err := g.DoNotify(context.Background(), 1, func(context.Context) (int, error) {
					time.Sleep(time.Second)
					panic("boom")
				}, func() { mu.Lock(); joined++; mu.Unlock() })
				var pe *PanicError
				if !errors.As(err, &pe) || pe.Value != "boom" || len(pe.Stack) == 0 {
					t.Errorf("caller %d: %v, want a PanicError with its stack", i, err)
				}
			})
			synctest.Wait()
		}
		wg.Wait()
		if joined != 1 {
			t.Errorf("joined called %d times, want 1 (for the second caller)", joined)
		}
	})
}
