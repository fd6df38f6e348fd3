package fairshare

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// acquireAsync starts an Acquire and returns where its release (or error)
// arrives.
func acquireAsync(ctx context.Context, g *Gate, name string) <-chan func() {
	ch := make(chan func(), 1)
	go func() {
		rel, err := g.Acquire(ctx, name)
		if err != nil {
			rel = nil
		}
		ch <- rel
	}()
	return ch
}

// A client that queued many requests does not make a newcomer wait behind
// them: the next free slot goes to the client holding the fewest.
func TestGateServesFewestHeldFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Slots: 1, Room: 64})
		ctx := t.Context()
		first, err := g.Acquire(ctx, "flood")
		if err != nil {
			t.Fatal(err)
		}
		var floods []<-chan func()
		for range 10 {
			floods = append(floods, acquireAsync(ctx, g, "flood"))
			synctest.Wait()
		}
		honest := acquireAsync(ctx, g, "honest")
		synctest.Wait()
		first()
		synctest.Wait()
		select {
		case rel := <-honest:
			rel()
		default:
			t.Fatalf("the slot went to one of the 10 queued flood requests, not to the client holding none: %+v", g.Stats())
		}
		// Then the flood's, in their order, one at a time.
		for i, ch := range floods {
			synctest.Wait()
			select {
			case rel := <-ch:
				rel()
			default:
				t.Fatalf("flood request %d not served in arrival order", i)
			}
		}
		if s := g.Stats(); s != (Stats{}) {
			t.Errorf("after every release: %+v, want empty", s)
		}
	})
}

func TestGateRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		g := NewGate(GateConfig{Slots: 2, Room: 8})
		for range 8 {
			acquireAsync(ctx, g, "a")
		}
		synctest.Wait()
		if _, err := g.Acquire(ctx, "b"); !errors.Is(err, ErrBusy) {
			t.Errorf("a 9th request: %v, want ErrBusy", err)
		}
		if s := g.Stats(); s != (Stats{Held: 2, Waiting: 6, Clients: 1}) {
			t.Errorf("stats %+v", s)
		}
		cancel()
		synctest.Wait()
	})
}

func TestQuota(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQuota(4, 16)
		enter := func(name string, n int) (got int) {
			for range n {
				if q.Enter(name) {
					got++
				}
			}
			return got
		}
		steps := []struct {
			what  string
			name  string
			n     int
			want  int
			sleep time.Duration // before the step
		}{
			{"alone, a client takes up to what one may alone", "flood", 20, 16, 0},
			{"another client gets in", "other", 1, 1, 0},
			{"with another present, the flood is held to its part", "flood", 5, 0, 0},
			{"the other leaves but stays present for a while", "", 0, 0, 0},
			{"still held", "flood", 1, 0, Presence / 2},
			{"the other gone: alone again", "flood", 3, 0, Presence},
			{"the flood down to 12: up to 16 again", "", 0, 0, 0},
			{"alone: 4 more", "flood", 5, 4, 0},
		}
		for _, st := range steps {
			time.Sleep(st.sleep)
			switch st.what {
			case "the other leaves but stays present for a while":
				q.Leave("other")
				continue
			case "the flood down to 12: up to 16 again":
				for range 4 {
					q.Leave("flood")
				}
				continue
			}
			if got := enter(st.name, st.n); got != st.want {
				t.Errorf("%s: %s let in %d of %d, want %d", st.what, st.name, got, st.n, st.want)
			}
		}
		for range 16 {
			q.Leave("flood")
		}
		if q.Total() != 0 || len(q.held) != 0 {
			t.Errorf("after leaving: total %d, %d clients", q.Total(), len(q.held))
		}
		time.Sleep(2 * Presence)
		q.Enter("x")
		q.Leave("x")
		if len(q.seen) != 1 {
			t.Errorf("%d clients remembered, want only the last one", len(q.seen))
		}
		if NewQuota(0, 0).Enter("a") != true {
			t.Error("no bound refused")
		}
	})
}

// A waiter whose context ends leaves the room; a slot granted as it ended
// goes on to the next waiter.
func TestGateCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGate(GateConfig{Slots: 1})
		hold, _ := g.Acquire(t.Context(), "a")
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if _, err := g.Acquire(ctx, "b"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the deadline", err)
		}
		if s := g.Stats(); s.Waiting != 0 || s.Clients != 1 {
			t.Fatalf("after the deadline: %+v, want b gone", s)
		}
		next := acquireAsync(t.Context(), g, "c")
		synctest.Wait()
		hold()
		synctest.Wait()
		rel := <-next
		if rel == nil {
			t.Fatal("c did not get the slot")
		}
		rel()
		if s := g.Stats(); s != (Stats{}) {
			t.Errorf("after every release: %+v", s)
		}
	})
}

// Under -race: many clients, many goroutines; every slot comes back.
func TestGateConcurrent(t *testing.T) {
	g := NewGate(GateConfig{Slots: 3, Room: 40})
	var wg sync.WaitGroup
	var mu sync.Mutex
	held, most := 0, 0
	for i := range 200 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*time.Millisecond)
			defer cancel()
			rel, err := g.Acquire(ctx, fmt.Sprint(i%5))
			if err != nil {
				return
			}
			mu.Lock()
			held++
			most = max(most, held)
			mu.Unlock()
			time.Sleep(100 * time.Microsecond)
			mu.Lock()
			held--
			mu.Unlock()
			rel()
		})
	}
	wg.Wait()
	if most > 3 {
		t.Errorf("%d holders at once, want at most 3 slots", most)
	}
	if s := g.Stats(); s != (Stats{}) {
		t.Errorf("after every release: %+v", s)
	}
}

func TestDebt(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name      string
		charge    int64
		wantWait  time.Duration // how long Wait holds
		wantErr   error
		wantRetry time.Duration
	}{
		{"within the allowance", 8 * mib, 0, nil, 0},
		{"just past it", 9 * mib, time.Second, nil, 0},
		{"past MaxWait", 20 * mib, 2 * time.Second, ErrBusy, 10 * time.Second},
		{"capped at MaxDebt", 500 * mib, 2 * time.Second, ErrBusy, 58 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := NewDebt(DebtConfig{Rate: mib}) // allowance 8 MiB, max 68 MiB
				d.Charge("a", tt.charge)
				start := time.Now()
				retry, err := d.Wait(t.Context(), "a")
				if got := time.Since(start); got != tt.wantWait {
					t.Errorf("held %v, want %v", got, tt.wantWait)
				}
				if !errors.Is(err, tt.wantErr) || retry != tt.wantRetry {
					t.Errorf("got (%v, %v), want (%v, %v)", retry, err, tt.wantRetry, tt.wantErr)
				}
				if _, err := d.Wait(t.Context(), "b"); err != nil {
					t.Errorf("another client: %v, want served at once", err)
				}
			})
		})
	}
}

// A request's own deadline bounds the wait, and drained accounts are
// forgotten.
func TestDebtDeadlineAndSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := NewDebt(DebtConfig{Rate: 1000, Allowance: 1000, MaxWait: time.Minute})
		d.Charge("a", 11000) // 10 s over
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		retry, err := d.Wait(ctx, "a")
		if !errors.Is(err, ErrBusy) || retry != 7*time.Second {
			t.Errorf("got (%v, %v), want 7s and ErrBusy at the deadline", retry, err)
		}
		time.Sleep(20 * time.Second)
		d.Charge("b", 1)
		d.mu.Lock()
		n := len(d.accounts)
		d.mu.Unlock()
		if n != 1 || d.Owed("a") != 0 {
			t.Errorf("accounts %d, a owes %d: want a's drained account dropped", n, d.Owed("a"))
		}
	})
}

// A Debt with no rate never holds anyone.
func TestDebtOff(t *testing.T) {
	d := NewDebt(DebtConfig{})
	d.Charge("a", 1<<40)
	if _, err := d.Wait(context.Background(), "a"); err != nil || d.Owed("a") != 0 {
		t.Errorf("off: %v, owed %d", err, d.Owed("a"))
	}
}

func TestShares(t *testing.T) {
	s := NewShares(100)
	steps := []struct {
		name string
		take int64 // negative: give
		want bool
		held int64
	}{
		{"a", 60, true, 60},
		{"a", 41, false, 60},
		{"b", 100, true, 100},
		{"a", 40, true, 100},
		{"a", -100, true, 0},
		{"a", 100, true, 100},
	}
	for i, st := range steps {
		ok := true
		if st.take >= 0 {
			ok = s.Take(st.name, st.take)
		} else {
			s.Give(st.name, -st.take)
		}
		if ok != st.want || s.Held(st.name) != st.held {
			t.Errorf("step %d (%s %d): got %v, holds %d; want %v, %d", i, st.name, st.take, ok, s.Held(st.name), st.want, st.held)
		}
	}
	if NewShares(0).Take("a", 1<<60) != true {
		t.Error("no limit refused")
	}
}

func ExampleGate() {
	g := NewGate(GateConfig{Slots: 2})
	release, err := g.Acquire(context.Background(), "10.0.0.7")
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	defer release()
	fmt.Printf("%+v\n", g.Stats())
	// Output: {Held:1 Waiting:0 Clients:1}
}
