package flight

import (
	"context"
	"errors"
	"fmt"
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
		var runs atomic.Int32
		var wg sync.WaitGroup
		const n = 3
		for i := range n {
			wg.Go(func() {
				_, shared, err := g.Do(context.Background(), 1, func(context.Context) (int, error) {
					runs.Add(1)
					time.Sleep(time.Second)
					return 0, boom
				})
				if !errors.Is(err, boom) {
					t.Errorf("caller %d got %v, want boom", i, err)
				}
				if shared != (i > 0) {
					t.Errorf("caller %d: shared=%v, want %v", i, shared, i > 0)
				}
			})
			synctest.Wait() // caller i has started or joined the call
		}
		wg.Wait()
		if runs.Load() != 1 {
			t.Errorf("fn ran %d times for %d identical calls, want 1: its error must be shared, not reached by each caller alone", runs.Load(), n)
		}
	})
}

func ExampleGroup() {
	var g Group[string, int]
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	first := make(chan string)
	go func() {
		v, shared, err := g.Do(context.Background(), "sha256:ab12", func(ctx context.Context) (int, error) {
			close(started)
			<-release // the expensive work, run once for every identical caller
			return 42, nil
		})
		first <- fmt.Sprintf("first:  %d shared=%v err=%v", v, shared, err)
	}()
	<-started
	// An identical call while the first is in flight joins it and gets
	// its result: its own fn (which would return 7) does not run.
	v, shared, err := g.DoNotify(context.Background(), "sha256:ab12", func(context.Context) (int, error) {
		once.Do(func() { close(release) })
		return 7, nil
	}, func() { once.Do(func() { close(release) }) })
	fmt.Println(<-first)
	fmt.Printf("second: %d shared=%v err=%v\n", v, shared, err)
	// Output:
	// first:  42 shared=false err=<nil>
	// second: 42 shared=true err=<nil>
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
