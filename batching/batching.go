// Package batching is a dynamic batcher: it groups items submitted one at a
// time into batches for a Runner, such as a model that is cheaper per item on
// a batch. It knows nothing of HTTP, images or models.
//
// # Rules
//
//   - Work-conserving: whenever fewer than MaxInFlight batches run and items
//     wait, a batch of up to MaxBatchSize waiting items is formed, oldest
//     first, as soon as MaxBatchSize items wait or the oldest has waited
//     Window. So with an idle runner an item waits at most Window for company
//     (Window 0: never); under load, items pile up while the runner is busy
//     and leave as one batch the moment it is free.
//   - Bounded queue: at most QueueCapacity items wait. Submit on a full queue
//     fails at once with a *QueueFullError (errors.Is ErrQueueFull) holding
//     the depth and an estimated RetryAfter.
//   - Deadlines: an item whose context ends before dispatch never takes a
//     batch slot, and its caller gets the context's error. A caller whose
//     context ends while its batch runs returns at once; the batch completes
//     for the others.
//   - Per-item results: the Runner fills one Result per item; a Runner error
//     fails only that batch's items.
//   - Close stops accepting (ErrClosed), dispatches what is queued without
//     waiting for windows, and waits for running batches. Items still queued
//     when Close's context ends fail with ErrClosed, and the running batches'
//     context is cancelled.
//
// # Concurrency
//
// One goroutine, the dispatcher, owns the queue, the window timer and the
// batch buffers; it exits when Close has drained everything. MaxInFlight
// worker goroutines run batches; the dispatcher stops them and waits for
// them before it exits. Submit sends an item to
// the dispatcher over a channel that admission control keeps from ever
// blocking, then waits for its result.
package batching

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the outcome of one item.
type Result[Out any] struct {
	Value Out
	Err   error
}

// Runner runs one batch. RunBatch fills results[i] for items[i] (len(results)
// == len(items)) and returns an error only if the whole batch failed. ctx is
// the batcher's, not any caller's: it is cancelled only when Close gives up.
type Runner[In, Out any] interface {
	RunBatch(ctx context.Context, items []In, results []Result[Out]) error
}

// RunnerFunc adapts a function to Runner.
type RunnerFunc[In, Out any] func(ctx context.Context, items []In, results []Result[Out]) error

// RunBatch calls f.
func (f RunnerFunc[In, Out]) RunBatch(ctx context.Context, items []In, results []Result[Out]) error {
	return f(ctx, items, results)
}

// Observer receives batch events, for metrics. Its methods are called from
// the batcher's goroutines and must be fast and safe for concurrent use.
type Observer interface {
	// Dispatched is called as a batch starts, with each item's queue wait.
	Dispatched(waits []time.Duration)
	// Finished is called when a batch's Runner returns.
	Finished(size int, exec time.Duration, err error)
}

// Config configures a Batcher. The zero value is usable.
type Config struct {
	// MaxBatchSize is the most items in one batch. Zero means 8.
	MaxBatchSize int
	// Window is the longest an item waits for a batch to fill while the
	// runner is idle, counted from the oldest waiting item's arrival.
	// Zero dispatches at once.
	Window time.Duration
	// QueueCapacity is the most items waiting (not yet dispatched). Zero
	// means 64 * MaxBatchSize.
	QueueCapacity int
	// MaxInFlight is the most batches running at once. Zero means 1,
	// which suits a runtime with one thread.
	MaxInFlight int
	// Observer, if not nil, receives batch events.
	Observer Observer
}

var (
	// ErrQueueFull is matched by the *QueueFullError of a rejected Submit.
	ErrQueueFull = errors.New("batching: queue full")
	// ErrClosed is returned by Submit after Close, and for items that
	// Close could not dispatch in time.
	ErrClosed = errors.New("batching: batcher closed")
)

// QueueFullError is returned by Submit on a full queue.
type QueueFullError struct {
	// Depth is the number of waiting and running items.
	Depth int
	// RetryAfter estimates when the queue will have drained, from
	// recent per-item execution times; zero when nothing ran yet.
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("batching: queue full (%d items, retry after %v)", e.Depth, e.RetryAfter)
}

// Is makes errors.Is(err, ErrQueueFull) true.
func (e *QueueFullError) Is(target error) bool { return target == ErrQueueFull }

// Snapshot is a point-in-time view of a Batcher.
type Snapshot struct {
	// Waiting counts queued items, not yet dispatched.
	Waiting int
	// InFlight counts items in running batches.
	InFlight int
	// ItemTime is a moving average of execution time per item
	// (batch time / batch size); zero before the first batch.
	ItemTime time.Duration
}

// Batcher groups items into batches for a Runner.
type Batcher[In, Out any] struct {
	cfg    Config
	runner Runner[In, Out]

	mu     sync.RWMutex // Submit holds it to send; Close takes it to close
	closed bool

	in       chan *request[In, Out] // to the dispatcher; admission keeps it from blocking
	closing  chan struct{}          // closed by Close
	drainCtx context.Context        // Close's context, set before closing is closed
	stopped  chan struct{}          // closed when the dispatcher exits

	runCtx    context.Context // passed to the Runner
	cancelRun context.CancelFunc

	requests sync.Pool // of *request, reused once answered and received

	waiting  atomic.Int64 // admitted, not yet dispatched or dropped
	inFlight atomic.Int64 // items in running batches
	itemTime atomic.Int64 // EWMA of nanoseconds per item
}

type request[In, Out any] struct {
	ctx     context.Context
	item    In
	arrival time.Time
	done    chan Result[Out] // buffered: the sender never blocks
}

// batch is a reusable batch buffer. The dispatcher owns it while filling it,
// a worker while running it, then it returns to the dispatcher.
type batch[In, Out any] struct {
	reqs    []*request[In, Out]
	items   []In
	results []Result[Out]
	waits   []time.Duration
}

// New starts a Batcher for r.
func New[In, Out any](r Runner[In, Out], cfg Config) *Batcher[In, Out] {
	if cfg.MaxBatchSize <= 0 {
		cfg.MaxBatchSize = 8
	}
	if cfg.QueueCapacity <= 0 {
		cfg.QueueCapacity = 64 * cfg.MaxBatchSize
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1
	}
	if cfg.Window < 0 {
		cfg.Window = 0
	}
	runCtx, cancel := context.WithCancel(context.Background())
	b := &Batcher[In, Out]{
		cfg: cfg, runner: r,
		in:      make(chan *request[In, Out], cfg.QueueCapacity),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
		runCtx:  runCtx, cancelRun: cancel,
	}
	go b.dispatch()
	return b
}

// Submit queues item and waits for its result. It fails at once with a
// *QueueFullError when the queue is full and with ErrClosed after Close;
// it returns ctx's error as soon as ctx ends.
func (b *Batcher[In, Out]) Submit(ctx context.Context, item In) (Out, error) {
	var zero Out
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	req, _ := b.requests.Get().(*request[In, Out])
	if req == nil {
		req = &request[In, Out]{done: make(chan Result[Out], 1)}
	}
	req.ctx, req.item, req.arrival = ctx, item, time.Now()
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return zero, ErrClosed
	}
	if b.waiting.Add(1) > int64(b.cfg.QueueCapacity) {
		depth := b.waiting.Add(-1) + b.inFlight.Load()
		b.mu.RUnlock()
		return zero, &QueueFullError{Depth: int(depth), RetryAfter: b.retryAfter(depth)}
	}
	b.in <- req // never blocks: at most QueueCapacity requests are admitted
	b.mu.RUnlock()

	select {
	case r := <-req.done:
		// Answered: neither the dispatcher nor a worker holds req now.
		*req = request[In, Out]{done: req.done}
		b.requests.Put(req)
		return r.Value, r.Err
	case <-ctx.Done():
		return zero, ctx.Err() // req may still be queued: not reused
	}
}

// retryAfter estimates how long depth items take to drain.
func (b *Batcher[In, Out]) retryAfter(depth int64) time.Duration {
	per := b.itemTime.Load()
	return time.Duration(float64(depth) * float64(per) / float64(b.cfg.MaxInFlight))
}

// Snapshot returns the current queue state.
func (b *Batcher[In, Out]) Snapshot() Snapshot {
	return Snapshot{
		Waiting:  int(b.waiting.Load()),
		InFlight: int(b.inFlight.Load()),
		ItemTime: time.Duration(b.itemTime.Load()),
	}
}

// Close stops accepting items, dispatches the queued ones and waits for
// every batch to finish. If ctx ends first, items still queued fail with
// ErrClosed, running batches' context is cancelled, and Close still waits
// for their Runner calls to return. It returns ctx's error in that case.
func (b *Batcher[In, Out]) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.stopped
		return nil
	}
	b.closed = true
	b.drainCtx = ctx
	close(b.closing)
	b.mu.Unlock()
	<-b.stopped
	b.cancelRun()
	if ctx.Err() != nil {
		return fmt.Errorf("batching: drain cut short: %w", ctx.Err())
	}
	return nil
}

// dispatch is the dispatcher goroutine: it owns the queue, the timer, the
// free batch buffers and so the count of running batches. It starts
// MaxInFlight workers and, on exit, stops them and waits for them.
func (b *Batcher[In, Out]) dispatch() {
	var (
		queue    []*request[In, Out] // FIFO; queue[0] is the oldest
		free     []*batch[In, Out]   // MaxInFlight minus the running batches
		work     = make(chan *batch[In, Out], b.cfg.MaxInFlight)
		finished = make(chan *batch[In, Out], b.cfg.MaxInFlight)
		timer    = time.NewTimer(time.Hour)
		closing  = b.closing
		drainEnd <-chan struct{} // Close's ctx.Done, once closing
		draining bool
		workers  sync.WaitGroup
	)
	timer.Stop()
	for range b.cfg.MaxInFlight {
		free = append(free, &batch[In, Out]{})
		workers.Go(func() {
			for bt := range work {
				b.run(bt)
				finished <- bt
			}
		})
	}
	defer func() {
		close(work)
		workers.Wait()
		close(b.stopped)
	}()
	for {
		// Form batches while a worker is free.
		for len(free) > 0 && len(queue) > 0 {
			if len(queue) < b.cfg.MaxBatchSize && !draining &&
				time.Since(queue[0].arrival) < b.cfg.Window {
				break // wait for company, at most until the window ends
			}
			bt := free[len(free)-1]
			if queue = b.take(queue, bt); len(bt.reqs) > 0 {
				free = free[:len(free)-1]
				b.prepare(bt)
				work <- bt // never blocks: one slot per buffer
			}
		}
		if len(queue) > 0 && len(free) > 0 {
			timer.Reset(time.Until(queue[0].arrival.Add(b.cfg.Window)))
		} else {
			timer.Stop()
		}
		if draining && len(queue) == 0 && len(b.in) == 0 && len(free) == b.cfg.MaxInFlight {
			return
		}

		select {
		case req := <-b.in:
			queue = append(queue, req)
		case bt := <-finished:
			free = append(free, bt)
		case <-timer.C:
		case <-closing:
			closing, draining = nil, true
			drainEnd = b.drainCtx.Done()
		case <-drainEnd:
			// Out of time: fail everything still queued.
			drainEnd = nil
			for len(b.in) > 0 {
				queue = append(queue, <-b.in)
			}
			for _, r := range queue {
				b.waiting.Add(-1)
				r.done <- Result[Out]{Err: ErrClosed}
			}
			queue = nil
			b.cancelRun()
		}
	}
}

// take moves up to MaxBatchSize live requests from the front of queue into
// bt.reqs. Requests whose context has ended are answered with its error and
// never take a slot.
func (b *Batcher[In, Out]) take(queue []*request[In, Out], bt *batch[In, Out]) []*request[In, Out] {
	bt.reqs = bt.reqs[:0]
	i := 0
	for ; i < len(queue) && len(bt.reqs) < b.cfg.MaxBatchSize; i++ {
		r := queue[i]
		queue[i] = nil // let the request be collected once answered
		if err := r.ctx.Err(); err != nil {
			b.waiting.Add(-1)
			r.done <- Result[Out]{Err: err}
			continue
		}
		bt.reqs = append(bt.reqs, r)
	}
	return queue[i:]
}

// prepare fills bt's items and does the accounting as it is dispatched.
func (b *Batcher[In, Out]) prepare(bt *batch[In, Out]) {
	n := len(bt.reqs)
	b.waiting.Add(-int64(n))
	b.inFlight.Add(int64(n))
	bt.items = bt.items[:0]
	for _, r := range bt.reqs {
		bt.items = append(bt.items, r.item)
	}
	if b.cfg.Observer != nil {
		now := time.Now()
		bt.waits = bt.waits[:0]
		for _, r := range bt.reqs {
			bt.waits = append(bt.waits, now.Sub(r.arrival))
		}
		b.cfg.Observer.Dispatched(bt.waits)
	}
}

// run runs one batch on a worker and answers its requests.
func (b *Batcher[In, Out]) run(bt *batch[In, Out]) {
	n := len(bt.reqs)
	bt.results = slices.Grow(bt.results[:0], n)[:n]
	start := time.Now()
	err := b.runner.RunBatch(b.runCtx, bt.items, bt.results)
	exec := time.Since(start)
	b.observe(n, exec)
	if b.cfg.Observer != nil {
		b.cfg.Observer.Finished(n, exec, err)
	}
	b.inFlight.Add(-int64(n))
	for i, r := range bt.reqs {
		res := bt.results[i]
		if err != nil {
			res = Result[Out]{Err: err}
		}
		r.done <- res
	}
	// Drop references to answered requests, items and results.
	clear(bt.reqs)
	clear(bt.items)
	clear(bt.results)
}

// observe folds a batch's per-item time into the moving average.
func (b *Batcher[In, Out]) observe(n int, exec time.Duration) {
	per := float64(exec) / float64(n)
	for {
		old := b.itemTime.Load()
		next := per
		if old != 0 {
			next = 0.8*float64(old) + 0.2*per
		}
		if b.itemTime.CompareAndSwap(old, int64(math.Round(next))) {
			return
		}
	}
}
