// Package budget bounds the memory that requests hold at once: a Budget is a
// byte-weighted semaphore, and a Lease is one reservation from it, shared by
// reference count between the code that reads a request and the work that
// outlives it (a coalesced decode may run on after its first client left).
package budget

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// ErrTooLarge is returned for a reservation larger than the whole budget:
// it could never be granted.
var ErrTooLarge = errors.New("larger than the whole memory budget")

// Budget hands out reservations of bytes, first come first served, up to
// its size.
type Budget struct {
	size  int64
	sem   *semaphore.Weighted
	inUse atomic.Int64
}

// New returns a budget of size bytes.
func New(size int64) *Budget {
	return &Budget{size: size, sem: semaphore.NewWeighted(size)}
}

// Size is the budget's total in bytes.
func (b *Budget) Size() int64 { return b.size }

// InUse is the number of bytes reserved now.
func (b *Budget) InUse() int64 { return b.inUse.Load() }

// Acquire reserves n bytes, waiting until they are free or ctx ends. The
// Lease starts with one reference.
func (b *Budget) Acquire(ctx context.Context, n int64) (*Lease, error) {
	if n > b.size {
		return nil, fmt.Errorf("%w: %d bytes, budget %d", ErrTooLarge, n, b.size)
	}
	n = max(n, 0)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, err
	}
	b.inUse.Add(n)
	l := &Lease{b: b, n: n}
	l.refs.Store(1)
	return l, nil
}

// Lease is a reservation. Its bytes return to the budget when the last
// reference is released.
type Lease struct {
	b    *Budget
	n    int64 // written only by Grow, before the lease is shared
	refs atomic.Int32
}

// Size is the number of bytes the lease holds.
func (l *Lease) Size() int64 { return l.n }

// Grow reserves n more bytes for the lease, waiting like Acquire, so that a
// reservation can follow the bytes that arrive instead of taking a whole
// body's worth up front. Only the lease's single holder may grow it, before
// it is shared (Retain).
func (l *Lease) Grow(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	if l.n+n > l.b.size {
		return fmt.Errorf("%w: %d bytes, budget %d", ErrTooLarge, l.n+n, l.b.size)
	}
	if err := l.b.sem.Acquire(ctx, n); err != nil {
		return err
	}
	l.b.inUse.Add(n)
	l.n += n
	return nil
}

// Retain adds a reference, for work that outlives the current holder.
func (l *Lease) Retain() { l.refs.Add(1) }

// Release drops a reference; the last one returns the bytes.
func (l *Lease) Release() {
	switch r := l.refs.Add(-1); {
	case r == 0:
		l.b.inUse.Add(-l.n)
		l.b.sem.Release(l.n)
	case r < 0:
		panic("budget: Lease released more often than retained")
	}
}
