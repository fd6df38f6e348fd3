package budget

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(100)
		a, err := b.Acquire(context.Background(), 60)
		if err != nil || b.InUse() != 60 {
			t.Fatalf("Acquire(60) = %v, in use %d", err, b.InUse())
		}
		// 50 more must wait for a's release, and gives up at its deadline.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := b.Acquire(ctx, 50); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Acquire over budget = %v, want to wait until the deadline", err)
		}
		got := make(chan *Lease)
		go func() { l, _ := b.Acquire(context.Background(), 50); got <- l }()
		synctest.Wait()
		a.Retain() // shared with later work
		a.Release()
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("granted while a reference to the first lease remained")
		default:
		}
		a.Release()
		l := <-got
		if b.InUse() != 50 {
			t.Errorf("in use %d, want 50", b.InUse())
		}
		l.Release()
		if b.InUse() != 0 {
			t.Errorf("in use %d after every release, want 0", b.InUse())
		}
		if _, err := b.Acquire(context.Background(), 101); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Acquire(101) of 100 = %v, want ErrTooLarge", err)
		}
	})
}

// TestLeaseGrow: a lease grows as bytes arrive, waits for room like
// Acquire, and returns everything it grew to at its release.
func TestLeaseGrow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(100)
		l, _ := b.Acquire(context.Background(), 10)
		if err := l.Grow(context.Background(), 30); err != nil || l.Size() != 40 || b.InUse() != 40 {
			t.Fatalf("Grow(30) = %v: size %d, in use %d; want 40, 40", err, l.Size(), b.InUse())
		}
		other, _ := b.Acquire(context.Background(), 50)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := l.Grow(ctx, 20); !errors.Is(err, context.DeadlineExceeded) || l.Size() != 40 {
			t.Fatalf("Grow past the budget = %v, size %d; want to wait until the deadline, size 40", err, l.Size())
		}
		if err := l.Grow(context.Background(), 61); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Grow to 101 of 100 = %v, want ErrTooLarge", err)
		}
		other.Release()
		l.Release()
		if b.InUse() != 0 {
			t.Errorf("in use %d after every release, want 0", b.InUse())
		}
	})
}
