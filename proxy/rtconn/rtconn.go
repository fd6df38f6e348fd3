// Package rtconn is the proxy's side of the runtime: one connection to the
// runtime's unix socket, redialed with backoff, and the batching.Runner that
// sends batches over it.
package rtconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/runtime/wire/wiretrace"
)

// ErrUnavailable means the runtime cannot take work now: disconnected,
// warming up, restarting or shutting down. Clients get 503.
var ErrUnavailable = errors.New("runtime unavailable")

// ErrModelChanged fails items prepared for a model the runtime no longer
// serves (it restarted with another model): they must never get scores from
// the wrong model. Clients get 503 and may retry.
var ErrModelChanged = errors.New("runtime model changed")

// ItemError is the runtime's per-item error (such as non-finite input).
type ItemError struct{ Msg string }

func (e *ItemError) Error() string { return "runtime rejected the input: " + e.Msg }

// Config configures a Conn; zero values mean the defaults given.
type Config struct {
	// Socket is the runtime's unix socket. Required.
	Socket string
	// StallAfter: a runtime whose executor has made no progress for this
	// long (a batch running longer, or batches waiting while none
	// finishes), or that does not answer a progress report within
	// HeartbeatTimeout, is stalled. Default 4s.
	StallAfter time.Duration
	// Heartbeat is how often the progress is asked for. Default 1s.
	Heartbeat time.Duration
	// HeartbeatTimeout bounds each progress report. Default 2s.
	HeartbeatTimeout time.Duration
	// BatchTimeout caps a batch's time in the runtime; a batch that takes
	// longer means a stuck runtime. Default 15s.
	BatchTimeout time.Duration
	// OnStall, if set, is called from Run's goroutine at each stall.
	OnStall func()
}

// Conn keeps one connection to the runtime, redialing with backoff, and
// watches the runtime's progress. A stalled runtime is treated as gone: its
// connection is closed (failing the batches on it at once) and redialed, and
// Current reports no client until a runtime that makes progress answers.
//
// Run's goroutine owns dialing and the heartbeat and exits when its context
// ends; Current and LastInfo may be called from any goroutine.
type Conn struct {
	cfg Config
	log *slog.Logger

	mu     sync.RWMutex
	client *wire.Client // nil while disconnected, not ready or stalled
	info   wire.Info
	ever   bool // a handshake was seen once: info is meaningful
}

// New returns a Conn for cfg; Run connects it.
func New(cfg Config, log *slog.Logger) *Conn {
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = 4 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 2 * time.Second
	}
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = 15 * time.Second
	}
	return &Conn{cfg: cfg, log: log}
}

// Current returns the connected client and its handshake; the client is nil
// while no ready runtime is connected.
func (rc *Conn) Current() (*wire.Client, wire.Info) {
	rc.mu.RLock()
	defer rc.mu.RUnlock()
	return rc.client, rc.info
}

// LastInfo returns the latest handshake, ready or not, and whether there was
// one.
func (rc *Conn) LastInfo() (wire.Info, bool) {
	rc.mu.RLock()
	defer rc.mu.RUnlock()
	return rc.info, rc.ever
}

// Run dials until ctx ends, keeping at most one connection.
func (rc *Conn) Run(ctx context.Context) {
	const minBackoff, maxBackoff = 50 * time.Millisecond, time.Second
	backoff := minBackoff
	logged := false
	for ctx.Err() == nil {
		c, err := rc.dial(ctx)
		if err != nil {
			if !logged {
				rc.log.Warn("runtime not available; retrying", "socket", rc.cfg.Socket, "error", err)
				logged = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		info := c.Info()
		rc.log.Info("runtime connected", "socket", rc.cfg.Socket, "model", info.Model, "model_sha256", info.ModelSHA256,
			"generated", info.Generated, "variant", info.Variant, "max_batch_size", info.MaxBatchSize)
		if info.Generated {
			rc.log.Warn("!!! the runtime's model has generated pseudo-random weights: predictions are meaningless !!!")
		}
		rc.mu.Lock()
		rc.client, rc.info, rc.ever = c, info, true
		rc.mu.Unlock()
		backoff, logged = minBackoff, false

		if err := rc.watch(ctx, c); err != nil {
			rc.log.Warn("runtime stalled; closing the connection and redialing", "socket", rc.cfg.Socket, "error", err)
			if rc.cfg.OnStall != nil {
				rc.cfg.OnStall()
			}
		} else if ctx.Err() == nil {
			rc.log.Warn("runtime connection lost; reconnecting", "socket", rc.cfg.Socket)
		}
		rc.mu.Lock()
		rc.client = nil
		rc.mu.Unlock()
		c.Close()
	}
}

// dial connects and checks that the runtime is ready and making progress.
func (rc *Conn) dial(ctx context.Context) (*wire.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := wire.Dial(dctx, rc.cfg.Socket)
	if err != nil {
		return nil, err
	}
	if !c.Info().Ready {
		rc.setInfo(c.Info())
		c.Close()
		return nil, fmt.Errorf("runtime at %q is warming up", rc.cfg.Socket)
	}
	if err := rc.check(ctx, c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// watch asks for the runtime's progress every Heartbeat until the
// connection ends (nil) or the runtime stalls (the reason).
func (rc *Conn) watch(ctx context.Context, c *wire.Client) error {
	t := time.NewTicker(rc.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.Done():
			return nil
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := rc.check(ctx, c); err != nil {
			return err
		}
	}
}

// check asks c for its progress, within HeartbeatTimeout.
func (rc *Conn) check(ctx context.Context, c *wire.Client) error {
	hctx, cancel := context.WithTimeout(ctx, rc.cfg.HeartbeatTimeout)
	defer cancel()
	st, err := c.Stats(hctx)
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no progress report within %v (process stopped or overloaded?)", rc.cfg.HeartbeatTimeout)
	case err != nil:
		return fmt.Errorf("progress report: %w", err)
	case st.Stalled(rc.cfg.StallAfter):
		return fmt.Errorf("no progress for %v: a batch has run %d ms, %d batches wait, the last finished %d ms ago",
			rc.cfg.StallAfter, st.RunningMs, st.Queued, st.IdleMs)
	}
	return nil
}

func (rc *Conn) setInfo(info wire.Info) {
	rc.mu.Lock()
	rc.info, rc.ever = info, true
	rc.mu.Unlock()
}

// Item is one preprocessed image waiting for the runtime.
type Item struct {
	Tensor    []float32
	ModelSHA  string    // the model it was preprocessed for
	Submitted time.Time // when it entered the batcher
	Deadline  time.Time // its request's; zero: none
	// Trace is its request's span, which the batch span links to;
	// invalid when the request is not traced (NewItem sets it).
	Trace trace.SpanContext
}

// Result is one item's outcome.
type Result struct {
	Scores    []float32 // owned by the item: nothing else aliases them
	BatchSize int
	QueueWait time.Duration
	Exec      time.Duration // the batch's execution time in the runtime
	// Transfer is the rest of the batch's call to the runtime: its tensors
	// over the socket, the runtime's checks and tensor set-up, and the
	// scores back (the call's round trip less Exec).
	Transfer time.Duration
	// BatchSpan is the span of the batch that ran the item, for the
	// request's queue span to link to; invalid when no member was sampled.
	BatchSpan trace.SpanContext
}

// Runner sends batches to the runtime; it implements batching.Runner.
type Runner struct {
	conn    *Conn
	metrics *stats.Metrics
	buf     sync.Pool // of *[]float32, one chunk's input
}

// errBatchTimeout is the cause of a batch context ended by BatchTimeout.
var errBatchTimeout = errors.New("batch timeout")

// batchContext bounds a batch: it ends when the latest of its items'
// deadlines passes (nobody waits for it then), or after BatchTimeout,
// whichever is first.
func (r *Runner) batchContext(ctx context.Context, items []*Item, chunk []int) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, i := range chunk {
		if d := items[i].Deadline; d.IsZero() {
			latest = time.Time{}
			break
		} else if d.After(latest) {
			latest = d
		}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, r.conn.cfg.BatchTimeout, errBatchTimeout)
	if latest.IsZero() {
		return ctx, cancel
	}
	dctx, dcancel := context.WithDeadline(ctx, latest)
	return dctx, func() { dcancel(); cancel() }
}

// NewRunner returns a Runner over conn.
func NewRunner(conn *Conn, m *stats.Metrics) *Runner { return &Runner{conn: conn, metrics: m} }

// RunBatch implements batching.Runner.
func (r *Runner) RunBatch(ctx context.Context, items []*Item, results []batching.Result[*Result]) error {
	c, info := r.conn.Current()
	if c == nil {
		return ErrUnavailable
	}
	start := time.Now()
	span := startBatchSpan(ctx, items, info.ModelSHA256)
	defer span.End()
	bsc := span.SpanContext()
	failed := 0
	defer func() {
		if span.IsRecording() && failed > 0 {
			span.SetStatus(codes.Error, fmt.Sprintf("%d of %d items failed", failed, len(items)))
		}
	}()
	// Items prepared for another model fail alone; the rest go in chunks
	// of the runtime's max batch size.
	live := make([]int, 0, len(items))
	for i, it := range items {
		if it.ModelSHA != info.ModelSHA256 {
			results[i].Err = ErrModelChanged
			failed++
			continue
		}
		live = append(live, i)
	}
	for len(live) > 0 {
		chunk := live[:min(len(live), info.MaxBatchSize)]
		bctx, cancel := r.batchContext(ctx, items, chunk)
		live = live[len(chunk):]
		bp, _ := r.buf.Get().(*[]float32)
		if bp == nil {
			bp = new([]float32)
		}
		in := (*bp)[:0]
		for _, i := range chunk {
			in = append(in, items[i].Tensor...)
		}
		sent := time.Now()
		res, err := c.RunTraced(bctx, len(chunk), in, wiretrace.ToWire(bsc))
		roundTrip := time.Since(sent)
		capped := errors.Is(context.Cause(bctx), errBatchTimeout)
		expired := bctx.Err() != nil // before cancel, which ends bctx anyway
		cancel()
		*bp = in
		r.buf.Put(bp)
		if err != nil {
			var we *wire.Error
			switch {
			case errors.Is(err, wire.ErrConnLost), errors.As(err, &we) && (we.Code == wire.CodeNotReady || we.Code == wire.CodeShuttingDown):
				err = fmt.Errorf("%w: %v", ErrUnavailable, err)
			case capped:
				// The runtime took longer than any batch may: stuck.
				// Closing fails the other batches on the connection at
				// once, and Run redials.
				c.Close()
				err = fmt.Errorf("%w: batch of %d took over %v", ErrUnavailable, len(chunk), r.conn.cfg.BatchTimeout)
			case ctx.Err() != nil:
				err = ctx.Err()
			case expired:
				err = context.DeadlineExceeded // every item's deadline passed
			default:
				err = fmt.Errorf("cannot run batch of %d on the runtime: %w", len(chunk), err)
			}
			for _, i := range chunk {
				results[i].Err = err
			}
			failed += len(chunk)
			continue
		}
		exec := time.Duration(res.ExecNanos)
		span.SetAttributes(attribute.Float64("runtime.exec_ms", float64(exec.Microseconds())/1000))
		r.metrics.RuntimeSeconds.Update(exec.Seconds())
		for k, i := range chunk {
			if res.Errors[k] != "" {
				results[i].Err = &ItemError{Msg: res.Errors[k]}
				failed++
				continue
			}
			results[i].Value = &Result{
				// A copy: a cached entry must not pin the whole batch.
				Scores:    slices.Clone(res.Scores[k*res.Classes : (k+1)*res.Classes]),
				BatchSize: len(chunk),
				QueueWait: start.Sub(items[i].Submitted),
				Exec:      exec,
				Transfer:  max(roundTrip-exec, 0),
				BatchSpan: bsc,
			}
		}
	}
	return nil
}
