// Package flight coalesces identical calls in flight into one execution, like
// golang.org/x/sync/singleflight, with cancellation: the shared work runs on
// its own context, survives any one caller giving up, and ends only when
// every caller has left or the latest caller deadline has passed.
//
// # Ownership
//
// The Group's mutex guards its map and, for each call, the waiter count,
// the deadline and the timer. Each execution runs in its own goroutine,
// which exits when fn returns; fn must return soon after its context ends.
package flight

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// PanicError is what the callers get when fn panics: the shared work runs
// on its own goroutine, out of reach of the callers' own recover.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic in shared work: %v", e.Value) }

// Group runs at most one fn per key at a time. The zero value is ready.
type Group[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]*call[V]
}

type call[V any] struct {
	ctx    context.Context // fn's
	cancel context.CancelFunc
	done   chan struct{} // closed once val and err are set
	val    V
	err    error

	// Guarded by Group.mu.
	waiters   int
	unbounded bool        // a caller had no deadline: no timer
	expired   bool        // ended by the deadline; read after done
	deadline  time.Time   // latest caller deadline
	timer     *time.Timer // ends ctx at deadline
}

// Do returns fn's result for key. If a call for key is in flight, Do joins
// it instead of starting another, and shared is true; fn runs once for all
// of them, and they all get its result.
//
// fn's context ends when every caller of that execution has returned early,
// or when the latest of their deadlines has passed, whichever comes first: a
// late joiner with more time keeps the work going for itself, and the first
// caller's deadline does not cut it short. Do returns as soon as the
// caller's own ctx ends, with ctx's error.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (v V, shared bool, err error) {
	return g.DoNotify(ctx, key, fn, nil)
}

// DoNotify is Do, calling joined (if not nil) as soon as the caller has
// joined a call in flight, before it waits: what the caller held for its own
// fn can be let go then.
func (g *Group[K, V]) DoNotify(ctx context.Context, key K, fn func(context.Context) (V, error), joined func()) (v V, shared bool, err error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = map[K]*call[V]{}
	}
	c, shared := g.m[key]
	if shared && c.ctx.Err() != nil {
		shared = false // ended but not yet collected: start afresh
	}
	if shared {
		c.waiters++
	} else {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call[V]{ctx: fctx, cancel: cancel, done: make(chan struct{})}
		c.waiters = 1
		g.m[key] = c
		go g.run(key, c, fn)
	}
	g.extend(c, ctx)
	g.mu.Unlock()
	if shared && joined != nil {
		joined()
	}

	select {
	case <-c.done:
		switch {
		case c.err != nil && ctx.Err() != nil:
			return v, shared, ctx.Err() // the caller's own reason wins
		case c.err != nil && c.expired:
			return v, shared, context.DeadlineExceeded
		}
		return c.val, shared, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		if c.waiters == 0 {
			g.end(key, c)
		}
		g.mu.Unlock()
		return v, shared, ctx.Err()
	}
}

// run executes fn for c, then forgets c. A panic in fn becomes every
// caller's *PanicError.
func (g *Group[K, V]) run(key K, c *call[V], fn func(context.Context) (V, error)) {
	func() {
		defer func() {
			if p := recover(); p != nil {
				c.err = &PanicError{Value: p, Stack: debug.Stack()}
			}
		}()
		c.val, c.err = fn(c.ctx)
	}()
	g.mu.Lock()
	g.end(key, c)
	g.mu.Unlock()
	close(c.done)
}

// end cancels c and removes it from the map if it is still there. Called
// under g.mu.
func (g *Group[K, V]) end(key K, c *call[V]) {
	c.cancel()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if g.m[key] == c {
		delete(g.m, key)
	}
}

// extend moves c's deadline to ctx's when that is later; a caller without a
// deadline lifts it for good. Called under g.mu.
func (g *Group[K, V]) extend(c *call[V], ctx context.Context) {
	dl, ok := ctx.Deadline()
	switch {
	case c.unbounded:
	case !ok:
		c.unbounded = true
		if c.timer != nil {
			c.timer.Stop()
			c.timer = nil
		}
	case c.timer == nil:
		c.deadline = dl
		c.timer = time.AfterFunc(time.Until(dl), func() { g.expire(c) })
	case dl.After(c.deadline):
		c.deadline = dl
		c.timer.Reset(time.Until(dl))
	}
}

// expire ends c at its deadline, unless a joiner has moved the deadline
// since the timer fired.
func (g *Group[K, V]) expire(c *call[V]) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !c.unbounded && !time.Now().Before(c.deadline) {
		c.expired = true
		c.cancel()
	}
}
