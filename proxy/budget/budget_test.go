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
