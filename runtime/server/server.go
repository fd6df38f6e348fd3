// Package server serves a model over a unix socket with the wire protocol.
//
// Batches from every connection go through one bounded queue to one executor
// goroutine, so exactly one batch runs at a time, in arrival order: the model
// is meant to own its CPU thread. Items holding non-finite values fail alone
// with a per-item error; the rest of their batch runs.
//
// Goroutines: Serve's accept loop exits when the listener closes; one reader
// per connection exits when its connection closes; the executor exits on
// Shutdown after the batch in flight. Replies are written under the
// connection's write lock by whichever goroutine produces them.
//
// Who may talk to it (harden.go): the socket's folder is checked before
// Listen (CheckSocketDir), every accepted connection's peer uid is checked
// (SO_PEERCRED), at most MaxConnections are open at once, and a connection
// must send its hello within HandshakeTimeout.
package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/runtime/wire/wiretrace"
)

// Model runs one batch: n images in, n*classes scores out.
type Model interface {
	Run(input []float32, n int) ([]float32, error)
}

// Config configures a Server.
type Config struct {
	// Info is the handshake; Ready is managed by the server. Its
	// MaxBatchSize bounds batches and frames. Required.
	Info wire.Info
	// QueueCapacity bounds batches waiting for the executor. Zero means 64.
	// A reader that finds it full stops reading its connection, which
	// pushes back on that client.
	QueueCapacity int
	// Logger receives JSON logs. Nil means slog.Default().
	Logger *slog.Logger
	// AllowedUIDs are the peer uids served besides the process's own
	// effective uid and root (env RUNTIME_ALLOWED_UIDS). A connection from
	// any other uid gets an Error frame and is closed.
	AllowedUIDs []uint32
	// MaxConnections bounds the connections open at once; one more gets an
	// Error frame and is closed. Zero (or less) means
	// DefaultMaxConnections.
	MaxConnections int
	// HandshakeTimeout is how long a new connection has to send its hello;
	// a connection silent that long is closed. Zero (or less) means
	// DefaultHandshakeTimeout. Once the hello is in, an idle connection is
	// left open: the proxy keeps one between batches.
	HandshakeTimeout time.Duration
}

// Defaults of Config's connection limits. The proxy holds one connection
// per runtime (a second for a moment while it redials) and each probe one
// for a moment; 16 leaves room for both and no room for a flood.
const (
	DefaultMaxConnections   = 16
	DefaultHandshakeTimeout = 5 * time.Second
)

// Server serves one Model.
type Server struct {
	cfg   Config
	model Model
	log   *slog.Logger
	ready atomic.Bool

	jobs chan job
	// images pools the buffers batches are decoded into (*[]float32): a
	// batch of the largest size is 602 KB per image, too much to allocate
	// (and fault in) for each.
	images   sync.Pool
	quit     chan struct{} // closed by Shutdown, under mu
	quitOnce sync.Once
	exec     chan struct{} // closed when the executor exits

	mu    sync.Mutex // guards ln and conns
	ln    net.Listener
	conns map[*conn]struct{}
	wg    sync.WaitGroup // connection readers

	// selfUID is the process's effective uid, served like root and
	// AllowedUIDs; a field so that tests can pretend to be someone else.
	selfUID uint32
	// Refused connections, for ConnStats and the rate-limited log lines.
	refusedPeers, refusedBusy, handshakeTimeouts atomic.Uint64
	refusalLog                                   rate.Sometimes
	noPeerCred                                   sync.Once
	// refusing bounds the refused connections still being answered.
	refusing chan struct{}

	batches, items atomic.Uint64
	// The executor's progress, for Stats: when the batch running now
	// started (0 when idle) and when the last one finished, in Unix ns.
	runningSince, lastFinish atomic.Int64
}

type job struct {
	c     *conn
	batch wire.Batch
	// images is batch.Images' buffer, from Server.images: whoever ends
	// the job (run, rejectQueued) puts it back.
	images *[]float32
}

// conn is one client connection.
type conn struct {
	net.Conn
	wmu  sync.Mutex
	wbuf []byte
}

// write sends one frame built by frame, within wire.WriteTimeout. An error
// means the client is gone or stopped reading: the connection is closed,
// which its reader notices.
func (c *conn) write(frame func([]byte) []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = frame(c.wbuf[:0])
	c.SetWriteDeadline(time.Now().Add(wire.WriteTimeout))
	if _, err := c.Write(c.wbuf); err != nil {
		c.Close()
	}
	if cap(c.wbuf) > 1<<20 { // do not pin one big result's buffer forever
		c.wbuf = nil
	}
}

// New returns a server for model. It is not ready until SetReady(true).
func New(model Model, cfg Config) *Server {
	if cfg.QueueCapacity == 0 {
		cfg.QueueCapacity = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	cfg.Info.ProtocolVersion = wire.Version
	cfg.Info.TraceContext = wire.TraceContextVersion
	s := &Server{
		cfg: cfg, model: model, log: cfg.Logger,
		jobs:  make(chan job, cfg.QueueCapacity),
		quit:  make(chan struct{}),
		exec:  make(chan struct{}),
		conns: map[*conn]struct{}{},
		// The first refusals each get a line, then one line per 10 s
		// carrying the running totals: a peer that reconnects in a loop
		// cannot flood the log.
		refusalLog: rate.Sometimes{First: 10, Interval: 10 * time.Second},
		refusing:   make(chan struct{}, cfg.MaxConnections),
		selfUID:    uint32(os.Geteuid()),
	}
	s.images.New = func() any { return new([]float32) }
	s.lastFinish.Store(time.Now().UnixNano())
	go s.executor()
	return s
}

// SetReady sets the readiness that handshakes report; batches sent while
// not ready fail with CodeNotReady.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Stats returns the number of batches and items the model ran, and the
// executor's progress.
func (s *Server) Stats() wire.Stats {
	now := time.Now().UnixNano()
	st := wire.Stats{Batches: s.batches.Load(), Items: s.items.Load(), Queued: len(s.jobs),
		IdleMs: (now - s.lastFinish.Load()) / 1e6}
	if since := s.runningSince.Load(); since != 0 {
		st.RunningMs = max((now-since)/1e6, 1)
	}
	return st
}

// Listen creates the unix socket at path with mode 0660. A socket file left
// by a dead runtime is removed; one that a live runtime answers on is left
// alone and Listen fails, as it does for a path that is not a socket.
func Listen(path string) (net.Listener, error) { return ListenMode(path, 0o660) }

// ListenMode is Listen with the socket file's mode (SocketMode picks it).
// It does not check the folder: call PrepareSocketDir first.
func ListenMode(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("cannot listen on %q: it exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("cannot listen on %q: another runtime is serving there", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("cannot tell whether %q is stale: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("cannot remove stale socket %q: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %q: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("cannot set mode of %q: %w", path, err)
	}
	return ln, nil
}

// Serve accepts connections on ln until Shutdown. It returns nil after
// Shutdown and the accept error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	select {
	case <-s.quit: // Shutdown came first
		s.mu.Unlock()
		ln.Close()
		return nil
	default:
		s.ln = ln
	}
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.quit:
				return nil
			default:
				return fmt.Errorf("cannot accept: %w", err)
			}
		}
		// Checked here, before a reader exists (harden.go): a refused
		// peer gets an Error frame and is closed, and never counts
		// towards the cap.
		if msg := s.checkPeer(nc); msg != "" {
			s.refuse(nc, msg)
			continue
		}
		c := &conn{Conn: nc}
		s.mu.Lock()
		if len(s.conns) >= s.cfg.MaxConnections {
			s.mu.Unlock()
			s.refusedBusy.Add(1)
			s.logRefusal("refused a runtime connection: too many open", "max_connections", s.cfg.MaxConnections)
			s.refuse(nc, fmt.Sprintf("too many connections: the limit is %d (RUNTIME_MAX_CONNECTIONS)", s.cfg.MaxConnections))
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.handle(c)
	}
}

// Shutdown stops accepting, lets the batch in flight finish and answers
// queued batches with CodeShuttingDown, then closes every connection. The
// listener's close removes the socket file.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.quitOnce.Do(func() { close(s.quit) })
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	select {
	case <-s.exec:
	case <-ctx.Done():
		return fmt.Errorf("batch in flight did not finish: %w", ctx.Err())
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// handle reads one connection's frames until it closes.
func (s *Server) handle(c *conn) {
	defer s.wg.Done()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	r := bufio.NewReaderSize(c, 256<<10)
	// The hello must come within HandshakeTimeout: a peer that connects
	// and says nothing (or trickles a frame) would hold a slot forever.
	c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	typ, body, err := wire.ReadFrame(r, wire.MaxControlFrame, nil)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.handshakeTimeouts.Add(1)
			s.logRefusal("closed a runtime connection that sent no hello in time",
				"handshake_timeout", s.cfg.HandshakeTimeout.String())
		}
		return
	}
	c.SetReadDeadline(time.Time{}) // from here on, idle is normal
	if typ != wire.TypeHello {
		c.write(func(b []byte) []byte {
			return wire.AppendError(b, &wire.Error{Code: wire.CodeBadRequest, Message: "expected hello"})
		})
		return
	}
	if v, err := wire.ParseHello(body); err != nil || v != wire.Version {
		c.write(func(b []byte) []byte {
			return wire.AppendError(b, &wire.Error{Code: wire.CodeVersion,
				Message: fmt.Sprintf("unsupported protocol version %d, this runtime speaks %d", v, wire.Version)})
		})
		return
	}
	info := s.cfg.Info
	info.Ready = s.ready.Load()
	c.write(func(b []byte) []byte {
		b, _ = wire.AppendJSON(b, wire.TypeInfo, &info) // Info always marshals
		return b
	})

	size, maxN := info.ImageSize(), info.MaxBatchSize
	var buf []byte
	for {
		typ, body, err := wire.ReadFrame(r, info.MaxBatchFrame(), buf)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("closing runtime connection", "error", err)
				if errors.Is(err, wire.ErrFrameTooLarge) {
					c.write(func(b []byte) []byte {
						return wire.AppendError(b, &wire.Error{Code: wire.CodeTooLarge, Message: err.Error()})
					})
				}
			}
			return
		}
		buf = body[:0]
		switch typ {
		case wire.TypeStatsRequest:
			id, err := wire.ParseStatsRequest(body)
			if err != nil {
				s.replyError(c, 0, wire.CodeBadRequest, err.Error())
				continue
			}
			c.write(func(b []byte) []byte { return wire.AppendStats(b, id, s.Stats()) })
		case wire.TypeBatch:
			images := s.images.Get().(*[]float32)
			batch, code, err := wire.ParseBatchInto(body, size, maxN, *images)
			if batch.Images != nil { // a refused frame leaves the buffer as it was
				*images = batch.Images[:0]
			}
			switch {
			case err != nil:
				s.images.Put(images)
				s.replyError(c, batch.ID, code, err.Error())
			case !s.ready.Load():
				s.images.Put(images)
				s.replyError(c, batch.ID, wire.CodeNotReady, "runtime is warming up")
			default:
				select {
				case s.jobs <- job{c: c, batch: batch, images: images}:
				case <-s.quit:
					s.images.Put(images)
					s.replyError(c, batch.ID, wire.CodeShuttingDown, "runtime is shutting down")
				}
			}
		default:
			s.replyError(c, 0, wire.CodeBadRequest, fmt.Sprintf("unexpected message type %d", typ))
		}
	}
}

func (s *Server) replyError(c *conn, id uint64, code uint16, msg string) {
	c.write(func(b []byte) []byte { return wire.AppendError(b, &wire.Error{ID: id, Code: code, Message: msg}) })
}

// executor runs queued batches one at a time until Shutdown, then answers
// what is still queued.
func (s *Server) executor() {
	defer close(s.exec)
	for {
		// Shutdown wins over queued batches: select alone would pick at
		// random when both are ready after the batch in flight.
		select {
		case <-s.quit:
			s.rejectQueued()
			return
		default:
		}
		select {
		case j := <-s.jobs:
			s.run(j)
		case <-s.quit:
			s.rejectQueued()
			return
		}
	}
}

// rejectQueued answers every queued batch with CodeShuttingDown.
func (s *Server) rejectQueued() {
	for {
		select {
		case j := <-s.jobs:
			s.images.Put(j.images)
			s.replyError(j.c, j.batch.ID, wire.CodeShuttingDown, "runtime is shutting down")
		default:
			return
		}
	}
}

// run executes one batch, leaving out items with non-finite values.
func (s *Server) run(j job) {
	defer s.images.Put(j.images)
	size, classes := s.cfg.Info.ImageSize(), s.cfg.Info.Classes
	b := j.batch
	res := &wire.Result{ID: b.ID, Classes: classes, Scores: make([]float32, b.N*classes), Errors: make([]string, b.N)}
	valid := make([]int, 0, b.N)
	for i := range b.N {
		if wire.Finite(b.Images[i*size : (i+1)*size]) {
			valid = append(valid, i)
		} else {
			res.Errors[i] = "input holds NaN or infinite values"
		}
	}
	if len(valid) > 0 {
		input := b.Images
		if len(valid) < b.N {
			input = make([]float32, 0, len(valid)*size)
			for _, i := range valid {
				input = append(input, b.Images[i*size:(i+1)*size]...)
			}
		}
		start := time.Now()
		s.runningSince.Store(start.UnixNano())
		scores, err := s.model.Run(input, len(valid))
		end := time.Now()
		s.runningSince.Store(0)
		s.lastFinish.Store(end.UnixNano())
		res.ExecNanos = uint64(end.Sub(start))
		s.traceRun(b, len(valid), start, end, err)
		if err != nil {
			s.log.Error("batch failed", "batch_size", len(valid), "error", err)
			s.replyError(j.c, b.ID, wire.CodeInternal, "model failed on the batch")
			return
		}
		for k, i := range valid {
			copy(res.Scores[i*classes:(i+1)*classes], scores[k*classes:(k+1)*classes])
		}
		s.batches.Add(1)
		s.items.Add(uint64(len(valid)))
	}
	j.c.write(func(buf []byte) []byte { return wire.AppendResult(buf, res) })
}

// traceRun records the model's run of a batch as a span under the proxy's
// batch span, when the batch carried a sampled trace context. The process's
// tracer provider (tracing.Start) exports it; with tracing off it is a
// no-op.
func (s *Server) traceRun(b wire.Batch, n int, start, end time.Time, err error) {
	sc := wiretrace.FromWire(b.Trace)
	if !sc.IsSampled() {
		return
	}
	info := &s.cfg.Info
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
	_, span := tracer.Start(ctx, "onnxruntime.run", trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.Int("batch.size", n),
			attribute.Int("batch.items_rejected", b.N-n),
			attribute.String("model.name", info.Model),
			attribute.String("model.sha256", info.ModelSHA256),
			attribute.String("model.variant", info.Variant),
			attribute.Int("onnxruntime.threads", info.Threads),
		))
	if err != nil {
		span.SetStatus(codes.Error, "model failed on the batch")
	}
	span.End(trace.WithTimestamp(end))
}

// tracer names the runtime's spans' instrumentation scope.
var tracer = otel.Tracer("github.com/batchgate/batchgate/runtime/server")

// Warmup runs one batch of every size from 1 to the max batch size, so that
// no client pays for a first run, and returns how long that took. It stops
// between sizes when ctx ends, with ctx's error.
func (s *Server) Warmup(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	size := s.cfg.Info.ImageSize()
	zeros := make([]float32, s.cfg.Info.MaxBatchSize*size)
	for n := 1; n <= s.cfg.Info.MaxBatchSize; n++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if _, err := s.model.Run(zeros[:n*size], n); err != nil {
			return 0, fmt.Errorf("warm-up at batch size %d failed: %w", n, err)
		}
	}
	return time.Since(start), nil
}
