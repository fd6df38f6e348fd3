// Package fairshare shares the proxy's costly resources between clients, so
// that one client address cannot take what every other client needs:
//
//   - Gate is a counting semaphore whose waiters are served by client, not
//     by arrival: a freed slot goes to the waiting client holding the fewest
//     slots, so a newcomer waits for the next slot to free, however many
//     requests another client has queued.
//   - Quota counts each client's requests in progress: a client alone may
//     use all but a part of the capacity, and only its part while other
//     clients are present, so that a newcomer always finds room.
//   - Shares bounds what each client holds of a budget (upload memory), so
//     that one client's slow bodies never hold all of it.
//   - Debt makes a client pay for the requests it gets refused: every
//     refusal adds the bytes it cost, debts drain at a fixed rate, and a
//     client whose debt is past the allowance waits (its body unread, its
//     connection held) before it is served again.
//
// A client is whatever string the caller names it by: the proxy uses the
// connection's remote address. The package knows nothing of HTTP.
package fairshare

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrBusy is a request refused because the waiting room is full (Gate) or
// because its client owes too much (Debt).
var ErrBusy = errors.New("fairshare: no room to wait")

// GateConfig sizes a Gate.
type GateConfig struct {
	// Slots is how many holders at once. Zero means 1.
	Slots int
	// Room is the most requests waiting for or holding a slot, all
	// clients together; beyond it ErrBusy. Zero means 64. (Quota keeps
	// one client from filling it.)
	Room int
}

// Gate is a semaphore of Slots shared fairly between clients. Its mutex
// guards every field; waiters are woken by closing their channel, under
// the mutex, by whoever frees a slot. Nothing runs in the background.
type Gate struct {
	cfg     GateConfig
	mu      sync.Mutex
	free    int                // slots not held
	inRoom  int                // requests waiting or holding
	clients map[string]*client // clients with a request waiting or holding
	grants  uint64             // slots granted so far
	arrived uint64             // requests come so far
}

// client is one client's place in the gate.
type client struct {
	held   int       // slots held
	queue  []*waiter // waiting, in arrival order
	served uint64    // the gate's grant count when it was last granted a slot
}

// waiter is one blocked Acquire; granted is set, and ready closed, once it
// holds a slot.
type waiter struct {
	ready   chan struct{}
	granted bool
	seq     uint64 // arrival order, the last tie-break
}

// NewGate returns a Gate sized by cfg.
func NewGate(cfg GateConfig) *Gate {
	if cfg.Slots <= 0 {
		cfg.Slots = 1
	}
	if cfg.Room <= 0 {
		cfg.Room = 64
	}
	return &Gate{cfg: cfg, free: cfg.Slots, clients: map[string]*client{}}
}

// Acquire waits for one of the gate's slots for client, until ctx ends.
// It returns ErrBusy at once when the waiting room is full, and ctx's error
// when ctx ended first. On success the caller
// must call release exactly once.
func (g *Gate) Acquire(ctx context.Context, name string) (release func(), err error) {
	g.mu.Lock()
	c := g.clients[name]
	if c == nil {
		c = &client{}
	}
	if g.inRoom >= g.cfg.Room {
		g.mu.Unlock()
		return nil, ErrBusy
	}
	g.clients[name] = c
	g.inRoom++
	g.arrived++
	w := &waiter{ready: make(chan struct{}), seq: g.arrived}
	c.queue = append(c.queue, w)
	g.dispatch()
	g.mu.Unlock()

	release = func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.drop(name, c, true)
		g.dispatch()
	}
	select {
	case <-w.ready:
		return release, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.granted { // granted as ctx ended: give the slot on
		g.drop(name, c, true)
	} else {
		for i, q := range c.queue {
			if q == w {
				c.queue = append(c.queue[:i], c.queue[i+1:]...)
				break
			}
		}
		g.drop(name, c, false)
	}
	g.dispatch()
	return nil, ctx.Err()
}

// drop takes one request of c out of the room, with the slot it held if
// held; a client with nothing left is forgotten. g.mu is held.
func (g *Gate) drop(name string, c *client, held bool) {
	if held {
		c.held--
		g.free++
	}
	g.inRoom--
	if c.held == 0 && len(c.queue) == 0 {
		delete(g.clients, name)
	}
}

// dispatch hands free slots to waiters: each to the first waiter of the
// client holding the fewest slots; among equals, to the client served
// least recently (one never served, first), so that clients with
// requests queued take turns; then to the longest waiting. g.mu is held.
func (g *Gate) dispatch() {
	for g.free > 0 {
		var next *client
		for _, c := range g.clients {
			if len(c.queue) == 0 {
				continue
			}
			if next == nil || c.held < next.held ||
				c.held == next.held && (c.served < next.served || c.served == next.served && c.queue[0].seq < next.queue[0].seq) {
				next = c
			}
		}
		if next == nil {
			return
		}
		w := next.queue[0]
		next.queue = next.queue[1:]
		next.held++
		g.grants++
		next.served = g.grants
		g.free--
		w.granted = true
		close(w.ready)
	}
}

// Stats is a snapshot of a gate.
type Stats struct {
	Held, Waiting, Clients int
}

// Stats returns how many slots are held, how many requests wait, and how
// many clients have either.
func (g *Gate) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Stats{Held: g.cfg.Slots - g.free, Waiting: g.inRoom - (g.cfg.Slots - g.free), Clients: len(g.clients)}
}

// Quota counts each client's requests in progress. A client holding
// PerClient or more is refused while another client is present (has a
// request in progress, or sent one within the last Presence), and, alone,
// past Alone: the room left (capacity - Alone) is there for a newcomer's
// first request, and from its arrival every client is held to its part.
// Its mutex guards the counts; a client with nothing in progress and not
// seen for Presence is forgotten.
type Quota struct {
	perClient, alone int
	mu               sync.Mutex
	total            int
	held             map[string]int
	seen             map[string]time.Time // each client's last Enter
	swept            time.Time
}

// Presence is how long a client counts as present after its last request.
const Presence = 2 * time.Second

// NewQuota returns a Quota that holds a client to perClient while others
// are present and to alone (at least perClient) while none is.
// perClient <= 0: no bound.
func NewQuota(perClient, alone int) *Quota {
	return &Quota{perClient: perClient, alone: max(alone, perClient), held: map[string]int{}, seen: map[string]time.Time{}}
}

// Enter counts a request of name's in; false (nothing counted) when the
// client holds its part and another client is present, or holds what a
// client alone may.
func (q *Quota) Enter(name string) bool {
	now := time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	if now.Sub(q.swept) > Presence { // forget the clients gone
		q.swept = now
		for k, t := range q.seen {
			if now.Sub(t) > Presence {
				delete(q.seen, k)
			}
		}
	}
	q.seen[name] = now
	if n := q.held[name]; q.perClient > 0 && n >= q.perClient && (n >= q.alone || q.others(name, now)) {
		return false
	}
	q.held[name]++
	q.total++
	return true
}

// others reports whether a client other than name is present. q.mu is
// held.
func (q *Quota) others(name string, now time.Time) bool {
	if q.total > q.held[name] {
		return true
	}
	for k, t := range q.seen {
		if k != name && now.Sub(t) <= Presence {
			return true
		}
	}
	return false
}

// Leave counts a request of name's out.
func (q *Quota) Leave(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch n := q.held[name]; {
	case n > 1:
		q.held[name] = n - 1
	case n == 1:
		delete(q.held, name)
	default:
		panic("fairshare: Quota left more often than entered")
	}
	q.total--
}

// Total is the number of requests in progress.
func (q *Quota) Total() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}

// Shares bounds how much of something (bytes of memory, uploads) each
// client holds at once. Its mutex guards the counts; a client at zero is forgotten.
type Shares struct {
	limit int64
	mu    sync.Mutex
	held  map[string]int64
}

// NewShares returns Shares of limit per client; limit <= 0: no bound.
func NewShares(limit int64) *Shares { return &Shares{limit: limit, held: map[string]int64{}} }

// Take adds n to name's share; false (nothing taken) if that would pass
// the limit.
func (s *Shares) Take(name string, n int64) bool {
	if s == nil || s.limit <= 0 || n <= 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[name]+n > s.limit {
		return false
	}
	s.held[name] += n
	return true
}

// Give returns n of name's share.
func (s *Shares) Give(name string, n int64) {
	if s == nil || s.limit <= 0 || n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch h := s.held[name] - n; {
	case h > 0:
		s.held[name] = h
	case h == 0:
		delete(s.held, name)
	default:
		panic("fairshare: Shares gave back more than taken")
	}
}

// Limit is the most one client may hold; 0: no bound.
func (s *Shares) Limit() int64 { return max(s.limit, 0) }

// Held returns name's share now.
func (s *Shares) Held(name string) int64 {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[name]
}
