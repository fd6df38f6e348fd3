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

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
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

// Conn keeps one connection to the runtime, redialing with backoff.
//
// Run's goroutine owns dialing and exits when its context ends; Current and
// LastInfo may be called from any goroutine.
type Conn struct {
	socket string
	log    *slog.Logger
	// onChange is called from Run's goroutine with true when a ready
	// runtime is connected and false when it is lost.
	onChange func(connected bool)

	mu     sync.RWMutex
	client *wire.Client // nil while disconnected or not ready
	info   wire.Info
	ever   bool // a handshake was seen once: info is meaningful
}

// New returns a Conn to the runtime at socket; Run connects it.
func New(socket string, log *slog.Logger, onChange func(connected bool)) *Conn {
	if onChange == nil {
		onChange = func(bool) {}
	}
	return &Conn{socket: socket, log: log, onChange: onChange}
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
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	logged := false
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := wire.Dial(dctx, rc.socket)
		cancel()
		if err == nil && !c.Info().Ready {
			rc.setInfo(c.Info())
			c.Close()
			err = fmt.Errorf("runtime at %q is warming up", rc.socket)
		}
		if err != nil {
			if !logged {
				rc.log.Warn("runtime not available; retrying", "socket", rc.socket, "error", err)
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
		rc.log.Info("runtime connected", "socket", rc.socket, "model", info.Model, "model_sha256", info.ModelSHA256,
			"generated", info.Generated, "max_batch_size", info.MaxBatchSize)
		if info.Generated {
			rc.log.Warn("!!! the runtime's model has generated pseudo-random weights: predictions are meaningless !!!")
		}
		rc.mu.Lock()
		rc.client, rc.info, rc.ever = c, info, true
		rc.mu.Unlock()
		rc.onChange(true)
		backoff, logged = minBackoff, false

		select {
		case <-c.Done():
			rc.log.Warn("runtime connection lost; reconnecting", "socket", rc.socket)
		case <-ctx.Done():
		}
		rc.mu.Lock()
		rc.client = nil
		rc.mu.Unlock()
		rc.onChange(false)
		c.Close()
	}
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
}

// Result is one item's outcome.
type Result struct {
	Scores    []float32 // owned by the item: nothing else aliases them
	BatchSize int
	QueueWait time.Duration
	Exec      time.Duration // the batch's execution time in the runtime
}

// Runner sends batches to the runtime; it implements batching.Runner.
type Runner struct {
	conn    *Conn
	metrics *stats.Metrics
	buf     sync.Pool // of *[]float32, one chunk's input
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
	// Items prepared for another model fail alone; the rest go in chunks
	// of the runtime's max batch size.
	live := make([]int, 0, len(items))
	for i, it := range items {
		if it.ModelSHA != info.ModelSHA256 {
			results[i].Err = ErrModelChanged
			continue
		}
		live = append(live, i)
	}
	for len(live) > 0 {
		chunk := live[:min(len(live), info.MaxBatchSize)]
		live = live[len(chunk):]
		bp, _ := r.buf.Get().(*[]float32)
		if bp == nil {
			bp = new([]float32)
		}
		in := (*bp)[:0]
		for _, i := range chunk {
			in = append(in, items[i].Tensor...)
		}
		res, err := c.Run(ctx, len(chunk), in)
		*bp = in
		r.buf.Put(bp)
		if err != nil {
			var we *wire.Error
			switch {
			case errors.Is(err, wire.ErrConnLost), errors.As(err, &we) && (we.Code == wire.CodeNotReady || we.Code == wire.CodeShuttingDown):
				err = fmt.Errorf("%w: %v", ErrUnavailable, err)
			case ctx.Err() != nil:
				err = ctx.Err()
			default:
				err = fmt.Errorf("cannot run batch of %d on the runtime: %w", len(chunk), err)
			}
			for _, i := range chunk {
				results[i].Err = err
			}
			continue
		}
		exec := time.Duration(res.ExecNanos)
		r.metrics.RuntimeSeconds.Update(exec.Seconds())
		for k, i := range chunk {
			if res.Errors[k] != "" {
				results[i].Err = &ItemError{Msg: res.Errors[k]}
				continue
			}
			results[i].Value = &Result{
				// A copy: a cached entry must not pin the whole batch.
				Scores:    slices.Clone(res.Scores[k*res.Classes : (k+1)*res.Classes]),
				BatchSize: len(chunk),
				QueueWait: start.Sub(items[i].Submitted),
				Exec:      exec,
			}
		}
	}
	return nil
}
