package wire

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrConnLost is returned for every batch outstanding on a connection that
// broke: the runtime crashed, restarted or closed it.
var ErrConnLost = errors.New("connection to runtime lost")

// Client is one connection to a runtime. It is safe for concurrent use:
// calls are pipelined on the connection and matched to replies by id.
//
// A reader goroutine owns the receiving side; it exits when the connection
// breaks or Close is called, after failing every outstanding call with
// ErrConnLost.
type Client struct {
	conn net.Conn
	info Info
	done chan struct{} // closed by the reader when it exits

	// wsem serializes writes (a one-slot semaphore, so a caller can give
	// up waiting for it when its context ends); wbuf is only used while
	// holding it.
	wsem chan struct{}
	wbuf []byte

	mu      sync.Mutex // guards the fields below
	nextID  uint64
	pending map[uint64]chan reply
	err     error // why the connection ended; set once
}

type reply struct {
	result *Result
	stats  Stats
	err    error
}

// Dial connects to the runtime listening on the unix socket path and does
// the handshake. It returns an error if the runtime speaks another protocol
// version; a runtime that is not ready yet is returned with Info().Ready
// false, and its batches fail with CodeNotReady.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to runtime at %q: %w", path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	if _, err := conn.Write(AppendHello(nil, Version)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot send hello to runtime at %q: %w", path, err)
	}
	typ, body, err := ReadFrame(r, MaxControlFrame, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("cannot read handshake from runtime at %q: %w", path, err)
	}
	c := &Client{conn: conn, done: make(chan struct{}), wsem: make(chan struct{}, 1), pending: map[uint64]chan reply{}}
	switch typ {
	case TypeInfo:
		if err := json.Unmarshal(body, &c.info); err != nil {
			conn.Close()
			return nil, fmt.Errorf("cannot parse handshake from runtime at %q: %w", path, err)
		}
	case TypeError:
		conn.Close()
		e, err := ParseError(body)
		if err != nil {
			return nil, fmt.Errorf("runtime at %q refused the handshake: %w", path, err)
		}
		return nil, fmt.Errorf("runtime at %q refused the handshake: %w", path, e)
	default:
		conn.Close()
		return nil, fmt.Errorf("runtime at %q answered the handshake with message type %d", path, typ)
	}
	conn.SetDeadline(time.Time{})
	go c.read(r)
	return c, nil
}

// Info returns the handshake the runtime sent.
func (c *Client) Info() Info { return c.info }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Run sends n preprocessed images (n*ImageSize() values) as one batch and
// waits for the result. If ctx ends first, Run returns ctx's error at once;
// the runtime still runs the batch and its result is dropped.
func (c *Client) Run(ctx context.Context, n int, images []float32) (*Result, error) {
	return c.RunTraced(ctx, n, images, TraceContext{})
}

// RunTraced is Run with the batch span's trace context, sent to runtimes
// that read it (Info().TraceContext >= 1) and dropped for older ones.
func (c *Client) RunTraced(ctx context.Context, n int, images []float32, tc TraceContext) (*Result, error) {
	if c.info.TraceContext < TraceContextVersion {
		tc = TraceContext{}
	}
	if want := n * c.info.ImageSize(); n <= 0 || len(images) != want {
		return nil, fmt.Errorf("BUG: Run got %d values for %d images of %d", len(images), n, c.info.ImageSize())
	}
	id, ch, err := c.register()
	if err != nil {
		return nil, err
	}
	if err := c.send(ctx, func(b []byte) []byte { return AppendBatch(b, id, n, images, tc) }); err != nil {
		c.unregister(id)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: cannot send batch of %d: %v", ErrConnLost, n, err)
	}
	select {
	case r := <-ch:
		return r.result, r.err
	case <-ctx.Done():
		c.unregister(id)
		return nil, ctx.Err()
	}
}

// Stats asks the runtime for its counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	id, ch, err := c.register()
	if err != nil {
		return Stats{}, err
	}
	if err := c.send(ctx, func(b []byte) []byte { return AppendStatsRequest(b, id) }); err != nil {
		c.unregister(id)
		return Stats{}, err
	}
	select {
	case r := <-ch:
		return r.stats, r.err
	case <-ctx.Done():
		c.unregister(id)
		return Stats{}, ctx.Err()
	}
}

// Close closes the connection; outstanding calls fail with ErrConnLost.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) register() (uint64, chan reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, nil, c.err
	}
	c.nextID++
	ch := make(chan reply, 1) // the reader never blocks on it
	c.pending[c.nextID] = ch
	return c.nextID, ch, nil
}

func (c *Client) unregister(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// WriteTimeout bounds each frame's write: a runtime that stops reading (a
// stopped process, a full socket buffer) fails the call instead of holding
// the write lock forever.
const WriteTimeout = 10 * time.Second

// send writes one frame. Waiting for another caller's write ends with ctx
// (a write blocked on a stopped runtime must not hold up a heartbeat
// forever); the write itself is bounded by WriteTimeout.
func (c *Client) send(ctx context.Context, frame func([]byte) []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.wsem }()
	c.wbuf = frame(c.wbuf[:0])
	c.conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	_, err := c.conn.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 { // do not pin one huge batch's buffer forever
		c.wbuf = nil
	}
	if err != nil {
		// Part of a frame may have gone out: the stream cannot be
		// trusted further. Closing ends the reader, which fails every
		// outstanding call.
		c.conn.Close()
	}
	return err
}

// read owns the receiving side of the connection until it breaks.
func (c *Client) read(r *bufio.Reader) {
	defer close(c.done)
	var buf []byte
	var err error
	for err == nil {
		var typ byte
		var body []byte
		typ, body, err = ReadFrame(r, max(c.info.MaxResultFrame(), MaxControlFrame), buf)
		if err != nil {
			break
		}
		buf = body[:0]
		err = c.dispatch(typ, body)
	}
	c.conn.Close()
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrConnLost, err)
	for id, ch := range c.pending {
		ch <- reply{err: c.err}
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// dispatch delivers one reply. A reply nobody waits for (the caller gave up)
// is dropped.
func (c *Client) dispatch(typ byte, body []byte) error {
	id, err := ParseID(body)
	if err != nil {
		return fmt.Errorf("message type %d: %w", typ, err)
	}
	var rep reply
	switch typ {
	case TypeResult:
		rep.result, rep.err = ParseResult(body, c.info.Classes, c.info.MaxBatchSize)
		if rep.err != nil {
			return rep.err // a corrupt stream cannot be trusted further
		}
	case TypeError:
		e, err := ParseError(body)
		if err != nil {
			return err
		}
		rep.err = e
	case TypeStats:
		if _, rep.stats, err = ParseStats(body); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unexpected message type %d", typ)
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ok {
		ch <- rep
	}
	return nil
}
