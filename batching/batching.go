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
//     the depth (waiting + running items) and RetryAfter = depth x ItemTime.
//   - Deadlines: an item whose context ends before dispatch never takes a
//     batch slot and is never passed to the Runner; its caller gets the
//     context's error at once, and the item leaves the queue at that moment:
//     its QueueCapacity slot is free for the next Submit, Snapshot no longer
//     counts it, and the dispatcher drops its reference to the item promptly,
//     without waiting for the next batch. A caller whose context ends while
//     its batch runs returns at once; the batch completes for the others.
//   - Per-item results: the Runner fills one Result per item; a Runner error
//     fails only that batch's items.
//   - ItemTime, the estimate behind RetryAfter, is a moving average of the
//     Runner's busy time per item over successful batches only (the Runner
//     returned nil and at least one item has no Err): a batch that fails,
//     often in microseconds because the backend is down, says nothing of how
//     long items take. A batch is charged the time from its start, or from
//     the end of the batch before it if that is later, to its end: when
//     MaxInFlight > 1 only pipelines into a backend that runs one batch at a
//     time, the wait behind the batch before is not counted twice, and
//     depth x ItemTime is the time to drain depth items. RetryAfter is not
//     divided by MaxInFlight.
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
// them before it exits. Submit, holding the read lock that Close takes to
// stop admission, counts the item in waiting, sends its request to the
// dispatcher over a channel without ever blocking, then waits for its result.
//
// Each request has an atomic state, queued until exactly one of two CASes
// moves it on: the dispatcher's to taken (into a batch, or answered ErrClosed
// by a cut-short Close) or expired (its context found ended), or Submit's to
// abandoned when its context ends first. The winner decrements waiting, so
// the count is exact the moment Submit returns. The dispatcher never passes a
// request it did not take to the Runner, and never answers one it did not
// take. An abandoning Submit nudges the dispatcher over a one-slot wake
// channel (non-blocking send) and the dispatcher compacts its queue.
//
// Requests are pooled. A request is reused only by its sole remaining owner:
// by Submit after it received the answer, or by the dispatcher when it drops
// a request that Submit abandoned (Submit touches it no more after its CAS).
// A request taken and then given up by its caller (context ended while its
// batch runs), or expired by the dispatcher (its Submit still looks at the
// state), is left to the garbage collector.
//
// The in channel holds 2 x QueueCapacity requests: at most QueueCapacity
// live ones (waiting bounds them) plus abandoned ones the dispatcher has not
// received yet. The send is non-blocking anyway: should more than
// QueueCapacity abandoned requests pile up unreceived (a starved dispatcher),
// Submit fails with a *QueueFullError rather than block.
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

// Trigger says what closed a batch.
type Trigger uint8

const (
	// TriggerFull: MaxBatchSize items waited.
	TriggerFull Trigger = iota + 1
	// TriggerWindow: the oldest item had waited Window.
	TriggerWindow
	// TriggerIdle: Window is zero and a runner slot was free, so the
	// waiting items left at once.
	TriggerIdle
	// TriggerDrain: Close dispatches what is queued without waiting.
	TriggerDrain
)

func (t Trigger) String() string {
	switch t {
	case TriggerFull:
		return "full"
	case TriggerWindow:
		return "window"
	case TriggerIdle:
		return "idle"
	case TriggerDrain:
		return "drain"
	}
	return "unknown"
}

// BatchInfo describes the batch a Runner is running.
type BatchInfo struct {
	// Trigger is what closed the batch.
	Trigger Trigger
	// QueueDepth is the number of waiting and running items, this batch's
	// included, when it was formed.
	QueueDepth int
}

type batchInfoKey struct{}

// InfoFrom returns the BatchInfo of the batch whose RunBatch received ctx,
// during that call: the batcher reuses the context for a later batch (one
// context per in-flight slot, so that dispatching allocates nothing).
func InfoFrom(ctx context.Context) (BatchInfo, bool) {
	i, ok := ctx.Value(batchInfoKey{}).(*BatchInfo)
	if !ok {
		return BatchInfo{}, false
	}
	return *i, true
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
	// QueueCapacity is the most items waiting (not yet dispatched); an
	// item whose context ended stops counting the moment Submit returns.
	// Zero means 64 * MaxBatchSize.
	QueueCapacity int
	// MaxInFlight is the most batches running at once. Zero means 1,
	// which suits a runtime with one thread; 2 pipelines into such a
	// runtime (the next batch waits at the runtime while one runs).
	// RetryAfter does not assume that MaxInFlight batches run in parallel:
	// it is depth x ItemTime, the measured busy time per item (see Snapshot).
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
	// RetryAfter estimates when the queue will have drained: Depth x
	// Snapshot.ItemTime, the measured busy time per item of recent
	// successful batches (not divided by MaxInFlight); zero until a batch
	// succeeded.
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("batching: queue full (%d items, retry after %v)", e.Depth, e.RetryAfter)
}

// Is makes errors.Is(err, ErrQueueFull) true.
func (e *QueueFullError) Is(target error) bool { return target == ErrQueueFull }

// Snapshot is a point-in-time view of a Batcher.
type Snapshot struct {
	// Waiting counts queued items, not yet dispatched. An item whose
	// context ended no longer counts once Submit has returned.
	Waiting int
	// InFlight counts items in running batches.
	InFlight int
	// ItemTime is a moving average of the Runner's busy time per item over
	// successful batches (the Runner returned nil and at least one item
	// has no Err). A batch counts the time from its start, or from the end
	// of the batch before it if later, to its end, over its size: with
	// MaxInFlight 2 pipelining into a backend that runs one batch at a
	// time, that is the backend's time per item, without the wait behind
	// the other batch. Zero until a batch succeeded.
	ItemTime time.Duration
	// Demand is the runtime work offered so far: the sum, over every
	// Submit that reached the queue (refused for a full queue or not), of
	// ItemTime at that moment. Its rate is the offered load in runners
	// (1 = one runner busy all the time), not capped at 1 like Busy's; it
	// grows only with items sent to the Runner (a cache hit never gets
	// here). Zero-cost items are not counted until a batch succeeded.
	Demand time.Duration
	// Busy is the Runner's busy time so far, every batch counted (failed
	// ones too) as ItemTime counts it: from its start, or the end of the
	// batch before it if later, to its end. Its rate is the busy fraction.
	Busy time.Duration
}

// Batcher groups items into batches for a Runner.
type Batcher[In, Out any] struct {
	cfg    Config
	runner Runner[In, Out]

	mu     sync.RWMutex // Submit holds it to send; Close takes it to close
	closed bool

	in       chan *request[In, Out] // to the dispatcher; 2 x QueueCapacity, sent to without blocking
	wake     chan struct{}          // 1 slot: Submit abandoned a request, compact the queue
	closing  chan struct{}          // closed by Close
	drainCtx context.Context        // Close's context, set before closing is closed
	stopped  chan struct{}          // closed when the dispatcher exits

	runCtx    context.Context // passed to the Runner
	cancelRun context.CancelFunc

	requests sync.Pool // of *request, reused once answered and received

	waiting  atomic.Int64 // admitted, still queued (state reqQueued)
	inFlight atomic.Int64 // items in running batches
	itemTime atomic.Int64 // EWMA of busy nanoseconds per item; written under timeMu
	demand   atomic.Int64 // Snapshot.Demand, nanoseconds
	busy     atomic.Int64 // Snapshot.Busy, nanoseconds; written under timeMu

	timeMu  sync.Mutex
	lastEnd time.Time // when the last batch ended, for ItemTime
}

// Request states: a request leaves reqQueued exactly once, by the CAS of
// whoever gets there first; the winner decrements waiting.
const (
	reqQueued    int32 = iota // admitted, counted in waiting
	reqTaken                  // dispatcher: in a batch, or answered ErrClosed
	reqExpired                // dispatcher: its context ended; never answered
	reqAbandoned              // Submit: its context ended; never answered
)

type request[In, Out any] struct {
	state   atomic.Int32 // reqQueued... ; zero (reqQueued) when fresh or reset
	ctx     context.Context
	item    In
	arrival time.Time
	done    chan Result[Out] // buffered: the sender never blocks; written only if taken
}

// batch is a reusable batch buffer. The dispatcher owns it while filling it,
// a worker while running it, then it returns to the dispatcher.
type batch[In, Out any] struct {
	reqs    []*request[In, Out]
	items   []In
	results []Result[Out]
	waits   []time.Duration
	info    BatchInfo
	// ctx is the batcher's runCtx carrying &info, made once for the slot:
	// RunBatch gets it without a per-batch allocation.
	ctx context.Context
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
		// QueueCapacity live requests plus as many abandoned ones not
		// yet received; Submit's send does not block past that either.
		in:      make(chan *request[In, Out], 2*cfg.QueueCapacity),
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
		runCtx:  runCtx, cancelRun: cancel,
	}
	go b.dispatch()
	return b
}

// Submit queues item and waits for its result. It fails at once with a
// *QueueFullError when the queue is full and with ErrClosed after Close;
// it returns ctx's error as soon as ctx ends, and if item was still queued
// then, its queue slot is free by the time Submit returns.
func (b *Batcher[In, Out]) Submit(ctx context.Context, item In) (Out, error) {
	var zero Out
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return zero, ErrClosed
	}
	b.demand.Add(b.itemTime.Load())
	if b.waiting.Add(1) > int64(b.cfg.QueueCapacity) {
		b.mu.RUnlock()
		return zero, b.full()
	}
	req, _ := b.requests.Get().(*request[In, Out])
	if req == nil {
		req = &request[In, Out]{done: make(chan Result[Out], 1)}
	}
	req.ctx, req.item, req.arrival = ctx, item, time.Now()
	select {
	case b.in <- req:
	default:
		// More than QueueCapacity abandoned requests wait to be received:
		// the dispatcher is starved. Refuse rather than block.
		b.mu.RUnlock()
		b.recycle(req)
		return zero, b.full()
	}
	b.mu.RUnlock()

	select {
	case r := <-req.done:
		// Answered: neither the dispatcher nor a worker holds req now.
		b.recycle(req)
		return r.Value, r.Err
	case <-ctx.Done():
	}
	if req.state.CompareAndSwap(reqQueued, reqAbandoned) {
		// Still queued: the slot is free now. req belongs to the
		// dispatcher from here on (it drops and reuses it): hands off.
		b.waiting.Add(-1)
		select {
		case b.wake <- struct{}{}:
		default: // a wake is pending already
		}
	}
	// Otherwise it is in a batch whose worker will still answer it, or the
	// dispatcher expired it: not reused either way.
	return zero, ctx.Err()
}

// full undoes an admission and describes the full queue.
func (b *Batcher[In, Out]) full() *QueueFullError {
	depth := b.waiting.Add(-1) + b.inFlight.Load()
	return &QueueFullError{Depth: int(depth), RetryAfter: time.Duration(depth * b.itemTime.Load())}
}

// recycle resets req and returns it to the pool. Only req's sole owner may
// call it.
func (b *Batcher[In, Out]) recycle(req *request[In, Out]) {
	*req = request[In, Out]{done: req.done}
	b.requests.Put(req)
}

// Snapshot returns the current queue state.
func (b *Batcher[In, Out]) Snapshot() Snapshot {
	return Snapshot{
		Waiting:  int(b.waiting.Load()),
		InFlight: int(b.inFlight.Load()),
		ItemTime: time.Duration(b.itemTime.Load()),
		Demand:   time.Duration(b.demand.Load()),
		Busy:     time.Duration(b.busy.Load()),
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
		bt := &batch[In, Out]{}
		bt.ctx = context.WithValue(b.runCtx, batchInfoKey{}, &bt.info)
		free = append(free, bt)
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
			bt.info = BatchInfo{Trigger: TriggerIdle, QueueDepth: int(b.waiting.Load() + b.inFlight.Load())}
			switch {
			case draining:
				bt.info.Trigger = TriggerDrain
			case len(queue) >= b.cfg.MaxBatchSize:
				bt.info.Trigger = TriggerFull
			case b.cfg.Window > 0:
				bt.info.Trigger = TriggerWindow
			}
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
			if req.state.Load() == reqAbandoned {
				b.recycle(req) // Submit gave up on it on the way
			} else {
				queue = append(queue, req)
			}
		case <-b.wake:
			queue = b.compact(queue)
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
				if r.state.CompareAndSwap(reqQueued, reqTaken) {
					b.waiting.Add(-1)
					r.done <- Result[Out]{Err: ErrClosed}
				} else {
					b.recycle(r) // abandoned by Submit
				}
			}
			queue = nil
			b.cancelRun()
		}
	}
}

// take moves up to MaxBatchSize live requests from the front of queue into
// bt.reqs, marking them taken. Requests whose context has ended never take a
// slot: those Submit abandoned are reused, the others marked expired and left
// to their Submit, which returns the context's error.
func (b *Batcher[In, Out]) take(queue []*request[In, Out], bt *batch[In, Out]) []*request[In, Out] {
	bt.reqs = bt.reqs[:0]
	i := 0
	for ; i < len(queue) && len(bt.reqs) < b.cfg.MaxBatchSize; i++ {
		r := queue[i]
		queue[i] = nil // let the request be collected once answered
		next := reqTaken
		if r.ctx.Err() != nil {
			next = reqExpired
		}
		switch {
		case !r.state.CompareAndSwap(reqQueued, next):
			b.recycle(r) // Submit abandoned it: the dispatcher is its last owner
		case next == reqExpired:
			b.waiting.Add(-1)
		default:
			bt.reqs = append(bt.reqs, r)
		}
	}
	// Keep the rest at the front of the same array: re-slicing from i
	// would shrink its capacity until an append allocates a new one.
	n := copy(queue, queue[i:])
	clear(queue[n:])
	return queue[:n]
}

// compact drops the requests Submit abandoned from queue, keeping the order
// of the others, so that their items are not held until the next batch.
func (b *Batcher[In, Out]) compact(queue []*request[In, Out]) []*request[In, Out] {
	kept := queue[:0]
	for _, r := range queue {
		if r.state.Load() == reqAbandoned {
			b.recycle(r)
		} else {
			kept = append(kept, r)
		}
	}
	clear(queue[len(kept):])
	return kept
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
	err := b.runner.RunBatch(bt.ctx, bt.items, bt.results)
	end := time.Now()
	exec := end.Sub(start)
	b.observe(start, end, bt.results, err)
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

// observe notes that a batch ran from start to end and, if it succeeded
// (err nil and at least one result without Err), folds its busy time per
// item into ItemTime. The batch is charged from its start, or from the
// previous batch's end if later, to its end: a pipelined batch's wait behind
// the one before it is that one's time, not its own.
func (b *Batcher[In, Out]) observe(start, end time.Time, results []Result[Out], err error) {
	ok := err == nil && slices.ContainsFunc(results, func(r Result[Out]) bool { return r.Err == nil })
	b.timeMu.Lock()
	defer b.timeMu.Unlock()
	from := start
	if b.lastEnd.After(from) {
		from = b.lastEnd
	}
	if end.After(b.lastEnd) {
		b.lastEnd = end
	}
	// Negative only if another batch that ended later took timeMu first:
	// it was charged for the time they shared.
	busy := max(end.Sub(from), 0)
	b.busy.Add(int64(busy))
	if !ok {
		return
	}
	per := float64(busy) / float64(len(results))
	if old := b.itemTime.Load(); old != 0 {
		per = 0.8*float64(old) + 0.2*per
	}
	b.itemTime.Store(int64(math.Round(per)))
}
