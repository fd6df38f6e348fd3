package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/runtime/wire"
)

// errUnavailable means the runtime cannot take work now: disconnected,
// warming up, restarting or shutting down. Clients get 503.
var errUnavailable = errors.New("runtime unavailable")

// errModelChanged fails items prepared for a model the runtime no longer
// serves (it restarted with another model): they must never get scores
// from the wrong model. Clients get 503 and may retry.
var errModelChanged = errors.New("runtime model changed")

// itemError is the runtime's per-item error (such as non-finite input).
type itemError struct{ msg string }

func (e *itemError) Error() string { return "runtime rejected the input: " + e.msg }

// runtimeConn keeps one connection to the runtime, redialing with backoff.
//
// Its loop goroutine owns dialing; it exits when ctx (given to run) ends.
// current() may be called from any goroutine.
type runtimeConn struct {
	socket string
	log    *slog.Logger
	// onChange is called with true when a ready runtime is connected and
	// false when it is lost.
	onChange func(connected bool)

	mu     sync.RWMutex
	client *wire.Client // nil while disconnected or not ready
	info   wire.Info
	ever   bool // a handshake was seen once: info is meaningful
}

// current returns the connected client and its handshake, or nil.
func (rc *runtimeConn) current() (*wire.Client, wire.Info) {
	rc.mu.RLock()
	defer rc.mu.RUnlock()
	return rc.client, rc.info
}

// lastInfo returns the latest handshake, ready or not, and whether there
// was one.
func (rc *runtimeConn) lastInfo() (wire.Info, bool) {
	rc.mu.RLock()
	defer rc.mu.RUnlock()
	return rc.info, rc.ever
}

// run dials until ctx ends, keeping at most one connection.
func (rc *runtimeConn) run(ctx context.Context) {
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

func (rc *runtimeConn) setInfo(info wire.Info) {
	rc.mu.Lock()
	rc.info, rc.ever = info, true
	rc.mu.Unlock()
}

// item is one preprocessed image waiting for the runtime.
type item struct {
	tensor    []float32
	modelSHA  string    // the model it was preprocessed for
	submitted time.Time // when it entered the batcher
}

// inference is one item's outcome.
type inference struct {
	scores    []float32
	batchSize int
	queueWait time.Duration
	exec      time.Duration // the batch's execution time in the runtime
}

// runner sends batches to the runtime; it implements batching.Runner.
type runner struct {
	rt      *runtimeConn
	metrics *proxyMetrics
	buf     sync.Pool // of *[]float32, one batch's input
}

func (r *runner) RunBatch(ctx context.Context, items []*item, results []batching.Result[*inference]) error {
	c, info := r.rt.current()
	if c == nil {
		return errUnavailable
	}
	start := time.Now()
	// Items prepared for another model fail alone; the rest go in
	// chunks of the runtime's max batch size.
	live := make([]int, 0, len(items))
	for i, it := range items {
		if it.modelSHA != info.ModelSHA256 {
			results[i].Err = errModelChanged
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
			in = append(in, items[i].tensor...)
		}
		res, err := c.Run(ctx, len(chunk), in)
		*bp = in
		r.buf.Put(bp)
		if err != nil {
			var we *wire.Error
			switch {
			case errors.Is(err, wire.ErrConnLost), errors.As(err, &we) && (we.Code == wire.CodeNotReady || we.Code == wire.CodeShuttingDown):
				err = fmt.Errorf("%w: %v", errUnavailable, err)
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
		r.metrics.runtimeSeconds.Update(exec.Seconds())
		for k, i := range chunk {
			if res.Errors[k] != "" {
				results[i].Err = &itemError{msg: res.Errors[k]}
				continue
			}
			results[i].Value = &inference{
				scores:    res.Scores[k*res.Classes : (k+1)*res.Classes],
				batchSize: len(chunk),
				queueWait: start.Sub(items[i].submitted),
				exec:      exec,
			}
		}
	}
	return nil
}
