package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/runtime/wire"
)

// service classifies images: cache, coalescing, decoding, batching. It
// knows nothing of HTTP.
type service struct {
	rt      *runtimeConn
	batcher *batching.Batcher[*item, *inference]
	cache   *resultCache
	flights flightGroup
	decode  chan struct{} // semaphore: one slot per CPU
	// decodeWaiting counts requests waiting for or holding a decode slot;
	// beyond maxDecodeWaiting they are refused, so overload in decoding
	// gets 429 too instead of a queue bounded only by the deadline.
	decodeWaiting    atomic.Int64
	maxDecodeWaiting int64
	limits           imageprep.Limits
	timeout          time.Duration // longest a shared inference may run
	metrics          *proxyMetrics
}

// outcome is a classification with what the response reports about it.
type outcome struct {
	scores    []float32
	info      wire.Info
	cached    bool
	coalesced bool
	prep      time.Duration
	inf       *inference // nil when cached or coalesced
}

// classify returns the scores of the encoded image data. data is only read
// before classify returns or copied.
func (s *service) classify(ctx context.Context, data []byte, noCache bool) (*outcome, error) {
	c, info := s.rt.current()
	if c == nil {
		return nil, errUnavailable
	}
	sum := sha256.Sum256(data)
	key := fmt.Sprintf("%x|%s|%d", sum, info.ModelSHA256, imageprep.Version)
	if !noCache {
		if scores, ok := s.cache.get(key); ok {
			s.metrics.cacheHits.Inc()
			return &outcome{scores: scores, info: info, cached: true}, nil
		}
	}
	s.metrics.cacheMisses.Inc()
	own := append([]byte(nil), data...) // the flight may outlive the caller
	res, joined, err := s.flights.do(ctx, key, s.timeout, func(fctx context.Context) (*outcome, error) {
		start := time.Now()
		tensor, err := s.preprocess(fctx, own, info)
		if err != nil {
			return nil, err
		}
		prep := time.Since(start)
		inf, err := s.infer(fctx, tensor, info)
		if err != nil {
			return nil, err
		}
		s.cache.add(key, inf.scores)
		return &outcome{scores: inf.scores, info: info, prep: prep, inf: inf}, nil
	})
	if joined {
		s.metrics.cacheCoalesced.Inc()
	}
	if err != nil {
		return nil, err
	}
	if joined {
		shared := *res
		shared.coalesced, shared.inf = true, nil
		return &shared, nil
	}
	return res, nil
}

// preprocess decodes and transforms data on the bounded decode pool.
func (s *service) preprocess(ctx context.Context, data []byte, info wire.Info) ([]float32, error) {
	defer s.decodeWaiting.Add(-1)
	if s.decodeWaiting.Add(1) > s.maxDecodeWaiting {
		return nil, errDecodeBusy
	}
	select {
	case s.decode <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.decode }()
	img, _, err := imageprep.Decode(data, s.limits)
	if err != nil {
		return nil, err
	}
	tensor := make([]float32, info.ImageSize())
	err = imageprep.Preprocess(img, imageprep.Params{
		ResizeShorter: info.ResizeShorter, Height: info.Height, Width: info.Width, Mean: info.Mean, Std: info.Std,
	}, tensor)
	return tensor, err
}

// infer runs one preprocessed tensor through the batcher.
func (s *service) infer(ctx context.Context, tensor []float32, info wire.Info) (*inference, error) {
	return s.batcher.Submit(ctx, &item{tensor: tensor, modelSHA: info.ModelSHA256, submitted: time.Now()})
}

// errDecodeBusy: too many requests wait to be decoded. Clients get 429.
var errDecodeBusy = errors.New("decode queue full")

// resultCache is an LRU of scores bounded by entries and by bytes.
type resultCache struct {
	mu       sync.Mutex // makes add-then-evict atomic
	lru      *lru.Cache[string, []float32]
	bytes    int64
	maxBytes int64
}

func newResultCache(entries int, maxBytes int64) *resultCache {
	c := &resultCache{maxBytes: maxBytes}
	if entries <= 0 || maxBytes <= 0 {
		return c // disabled
	}
	c.lru, _ = lru.NewWithEvict(entries, func(k string, v []float32) { c.bytes -= entrySize(k, v) })
	return c
}

func entrySize(k string, v []float32) int64 { return int64(len(k) + 4*len(v) + 64) }

func (c *resultCache) get(key string) ([]float32, bool) {
	if c.lru == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(key)
}

func (c *resultCache) add(key string, scores []float32) {
	if c.lru == nil || entrySize(key, scores) > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Contains(key) {
		return
	}
	c.lru.Add(key, scores)
	c.bytes += entrySize(key, scores)
	for c.bytes > c.maxBytes {
		c.lru.RemoveOldest()
	}
}

// flightGroup coalesces identical requests in flight into one computation.
// The computation runs in its own goroutine with its own context: it
// survives any one caller giving up, and is cancelled only when every
// caller has (so that expired work never reaches the runtime).
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	val     *outcome
	err     error
	waiters int // guarded by flightGroup.mu
	cancel  context.CancelFunc
}

// do returns fn's result for key, joining a computation in flight if there
// is one (joined is then true).
func (g *flightGroup) do(ctx context.Context, key string, timeout time.Duration, fn func(context.Context) (*outcome, error)) (val *outcome, joined bool, err error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = map[string]*flight{}
	}
	f, joined := g.m[key]
	if joined {
		f.waiters++
	} else {
		fctx, cancel := context.WithTimeout(context.Background(), timeout)
		f = &flight{done: make(chan struct{}), waiters: 1, cancel: cancel}
		g.m[key] = f
		go func() {
			f.val, f.err = fn(fctx)
			cancel()
			g.forget(key, f)
			close(f.done)
		}()
	}
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.val, joined, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if g.m[key] == f {
				delete(g.m, key) // later callers start afresh
			}
		}
		g.mu.Unlock()
		return nil, joined, ctx.Err()
	}
}

func (g *flightGroup) forget(key string, f *flight) {
	g.mu.Lock()
	if g.m[key] == f {
		delete(g.m, key)
	}
	g.mu.Unlock()
}

// errStatus maps an error to an HTTP status, a client-safe message and a
// rejection reason for metrics. Internal errors are never echoed.
func errStatus(err error) (status int, msg, reason string) {
	var qf *batching.QueueFullError
	var ie *itemError
	switch {
	case errors.As(err, &qf), errors.Is(err, errDecodeBusy):
		return 429, "server overloaded: queue full, retry later", "queue_full"
	case errors.Is(err, context.DeadlineExceeded):
		return 504, "request deadline exceeded before the inference finished", "deadline"
	case errors.Is(err, errUnavailable), errors.Is(err, errModelChanged), errors.Is(err, batching.ErrClosed):
		return 503, "model runtime unavailable, retry later", "unavailable"
	case errors.Is(err, imageprep.ErrFormat):
		return 415, imageprep.ErrFormat.Error(), "unsupported_format"
	case errors.Is(err, imageprep.ErrTooLarge):
		return 413, "image has too many pixels", "too_many_pixels"
	case errors.Is(err, imageprep.ErrCorrupt):
		return 400, "corrupt or truncated image", "corrupt_image"
	case errors.As(err, &ie):
		return 400, "input rejected: holds NaN or infinite values", "bad_tensor"
	case errors.Is(err, context.Canceled):
		return 499, "request cancelled", "cancelled"
	}
	return 500, "inference failed", "internal"
}
