// Package classify turns encoded images into model scores: a result cache,
// coalescing of identical requests in flight, and decoding on a bounded pool
// within a memory budget, in front of a Backend that runs preprocessed
// images. It knows nothing of HTTP or of the runtime's socket.
//
// # Memory
//
// The bytes of an image are held by a budget.Lease that the caller
// reserved; Classify releases it once the image is decoded, which may be
// after Classify has returned (a coalesced decode runs on for the other
// callers). Decoding reserves the decoded image's size, estimated from its
// header, from the decode budget, and gives it back once the tensor is made.
package classify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.opentelemetry.io/otel/attribute"

	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/fairshare"
	"github.com/batchgate/batchgate/proxy/flight"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
)

// Backend runs preprocessed images on the model. Service is its only user.
type Backend interface {
	// Model returns the model served: its handshake, whether a ready
	// runtime serves it now, and whether any handshake was seen yet.
	Model() (info wire.Info, ready, known bool)
	// Infer runs one preprocessed image, prepared for the model with
	// sha256 modelSHA, in a batch.
	Infer(ctx context.Context, tensor []float32, modelSHA string) (*Inference, error)
}

// Inference is one image's run on the model.
type Inference struct {
	Scores    []float32
	BatchSize int
	QueueWait time.Duration
	Exec      time.Duration // the model's execution of the batch
	Transfer  time.Duration // the rest of the runtime call (rtconn.Result's)
}

// Outcome is a classification with what the answer reports about it.
type Outcome struct {
	Scores    []float32
	Model     wire.Info
	Cached    bool
	Coalesced bool
	Prep      time.Duration
	Inference *Inference // nil when cached or coalesced
}

var (
	// ErrUnavailable: no ready runtime, and the answer is not cached.
	ErrUnavailable = errors.New("model runtime unavailable")
	// ErrDecodeBusy: too many requests wait to be decoded.
	ErrDecodeBusy = errors.New("decode queue full")
	// ErrClientBusy: other clients are present and the client has its
	// part in progress (Config.ImagesPerClient).
	ErrClientBusy = errors.New("too many of the client's images in progress")
)

// MemoryError is an image whose decoding needs more memory than the whole
// decode budget: it can never be decoded here.
type MemoryError struct{ Need, Budget int64 }

func (e *MemoryError) Error() string {
	return fmt.Sprintf("decoding the image needs %d MiB, more than the decode budget of %d MiB", e.Need>>20, e.Budget>>20)
}

// Config configures a Service; the zero value is usable.
type Config struct {
	// CacheEntries and CacheBytes bound the result cache; a zero in
	// either disables it.
	CacheEntries int
	CacheBytes   int64
	// DecodeWorkers is how many images are decoded at once. Zero means
	// GOMAXPROCS.
	DecodeWorkers int
	// DecodeQueue is the most requests waiting for or holding a decode
	// worker; beyond it ErrDecodeBusy. Zero means 64.
	DecodeQueue int
	// ImagesPerClient is the most images of one client (WithClient) in
	// progress, being decoded or run, while another client is present
	// (fairshare.Quota); beyond it ErrClientBusy. A client alone may have
	// up to DecodeQueue - ImagesPerClient, so that a newcomer finds room.
	// Zero means a quarter of DecodeQueue, at least DecodeWorkers+1;
	// negative, no bound. Decode workers are shared between clients too: a
	// freed worker goes to the waiting client holding the fewest
	// (fairshare.Gate).
	ImagesPerClient int
	// DecodeMemory bounds the memory of the images being decoded and
	// preprocessed at once (imageprep.Header.MemoryBytes). Zero means
	// 128 MiB.
	DecodeMemory int64
	// Limits bound the images decoded.
	Limits imageprep.Limits
}

// Service classifies images. It is safe for concurrent use.
type Service struct {
	cfg     Config
	be      Backend
	metrics *stats.Metrics
	cache   *cache
	flights flight.Group[string, *Outcome]
	decode  *fairshare.Gate  // decode workers, shared between clients
	large   *fairshare.Gate  // all the workers but one, for large images
	quota   *fairshare.Quota // images in progress, per client
	mem     *budget.Budget
}

// New returns a Service over be.
func New(cfg Config, be Backend, m *stats.Metrics) *Service {
	if cfg.DecodeWorkers <= 0 {
		cfg.DecodeWorkers = runtime.GOMAXPROCS(0)
	}
	if cfg.DecodeQueue <= 0 {
		cfg.DecodeQueue = 64
	}
	if cfg.DecodeMemory <= 0 {
		cfg.DecodeMemory = 128 << 20
	}
	if cfg.ImagesPerClient == 0 {
		cfg.ImagesPerClient = max(cfg.DecodeQueue/4, cfg.DecodeWorkers+1)
	}
	return &Service{
		cfg: cfg, be: be, metrics: m,
		cache:  newCache(cfg.CacheEntries, cfg.CacheBytes),
		decode: fairshare.NewGate(fairshare.GateConfig{Slots: cfg.DecodeWorkers, Room: cfg.DecodeQueue}),
		large:  fairshare.NewGate(fairshare.GateConfig{Slots: max(cfg.DecodeWorkers-1, 1), Room: cfg.DecodeQueue}),
		quota:  fairshare.NewQuota(cfg.ImagesPerClient, cfg.DecodeQueue-cfg.ImagesPerClient),
		mem:    budget.New(cfg.DecodeMemory),
	}
}

// DecodeBytes is the memory reserved by decodes now.
func (s *Service) DecodeBytes() int64 { return s.mem.InUse() }

// Model returns the model's handshake and whether a ready runtime serves it.
func (s *Service) Model() (wire.Info, bool) {
	info, ready, _ := s.be.Model()
	return info, ready
}

// LastModel returns the latest handshake, ready or not, if there was one.
func (s *Service) LastModel() (wire.Info, bool) {
	info, _, known := s.be.Model()
	return info, known
}

// Classify returns the scores of the encoded image data. It takes over one
// reference of lease (nil when data is not budgeted) and releases it once
// data is no longer needed, possibly after returning: the caller must not
// change data. With noCache the cache is not read; the fresh answer still
// goes into it.
//
// While no runtime is ready, a cached answer for the last model seen is
// still given: degraded but useful.
func (s *Service) Classify(ctx context.Context, data []byte, lease *budget.Lease, noCache bool) (*Outcome, error) {
	return s.ClassifyOn(ctx, Target{Backend: s.be}, data, lease, noCache)
}

type partitionKey struct{}

type clientKey struct{}

// WithClient returns a context whose classifications share the decode
// workers and the queues with other clients' fairly (Config.ImagesPerClient):
// client names who sent the request, a remote address. Without it, every
// request is of the one client "".
func WithClient(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, clientKey{}, client)
}

// WithPartition returns a context whose classifications share cache
// entries and coalesced work only with those of the same partition (an API
// key's id): otherwise a client could tell from an answer's cached or
// coalesced flag, or from its speed, that another client sent the same
// image. "" is the shared partition.
func WithPartition(ctx context.Context, partition string) context.Context {
	return context.WithValue(ctx, partitionKey{}, partition)
}

// Target is one model version to classify on: its backend, the tag that
// keeps its cache and coalescing entries apart from other versions', and
// an optional mirror.
type Target struct {
	Backend Backend
	// Tag is added to the cache and coalescing key. Versions with
	// different tags never share an answer, even when their models have
	// the same sha256. "" is the single-model key, unchanged.
	Tag string
	// Mirror, if set, is called once the target computed an image (not
	// for cached or coalesced answers) with the tensor, the model's
	// handshake and the scores. It runs on the computing goroutine and
	// must not block; it owns tensor from then on (nothing else uses
	// it) and must not change scores.
	// ctx is the computing request's: it carries its values (its span,
	// for the mirror's batch to link to) and must not be waited on.
	Mirror func(ctx context.Context, tensor []float32, info wire.Info, scores []float32)
}

// ClassifyOn is Classify on t's backend, with t's cache tag and mirror.
func (s *Service) ClassifyOn(ctx context.Context, t Target, data []byte, lease *budget.Lease, noCache bool) (*Outcome, error) {
	release := releaser(lease)
	info, ready, known := t.Backend.Model()
	if !known {
		release()
		return nil, ErrUnavailable
	}
	sum := sha256.Sum256(data)
	key := hex.EncodeToString(sum[:]) + "|" + info.ModelSHA256 + "|" + strconv.Itoa(imageprep.Version)
	if t.Tag != "" {
		key += "|" + t.Tag
	}
	if p, _ := ctx.Value(partitionKey{}).(string); p != "" {
		key += "|p=" + p
	}
	if !noCache {
		if scores, ok := s.cache.get(key); ok {
			release()
			s.metrics.CacheHits.Inc()
			return &Outcome{Scores: scores, Model: info, Cached: true}, nil
		}
	}
	if !ready {
		release()
		return nil, ErrUnavailable
	}
	s.metrics.CacheMisses.Inc()
	joined := func() {
		release() // the call in flight reads its own caller's bytes
		s.metrics.CacheCoalesced.Inc()
	}
	out, shared, err := s.flights.DoNotify(ctx, key, func(fctx context.Context) (*Outcome, error) {
		defer release()
		leave, err := s.enter(fctx)
		if err != nil {
			return nil, err
		}
		defer leave()
		start := time.Now()
		tensor, err := s.preprocess(fctx, data, info, release)
		if err != nil {
			return nil, err
		}
		prep := time.Since(start)
		inf, err := t.Backend.Infer(fctx, tensor, info.ModelSHA256)
		if err != nil {
			return nil, err
		}
		s.cache.add(key, inf.Scores)
		if t.Mirror != nil {
			t.Mirror(fctx, tensor, info, inf.Scores)
		}
		return &Outcome{Scores: inf.Scores, Model: info, Prep: prep, Inference: inf}, nil
	}, joined)
	if err != nil {
		return nil, err
	}
	if shared {
		o := *out
		o.Coalesced, o.Inference = true, nil
		return &o, nil
	}
	return out, nil
}

// InferTensor runs one preprocessed image (the model's input layout) with
// no cache and no coalescing.
func (s *Service) InferTensor(ctx context.Context, tensor []float32) (*Outcome, error) {
	return s.InferTensorOn(ctx, Target{Backend: s.be}, tensor)
}

// InferTensorOn is InferTensor on t's backend. The mirror gets a copy of
// tensor (the caller's may live in a request body).
func (s *Service) InferTensorOn(ctx context.Context, t Target, tensor []float32) (*Outcome, error) {
	info, ready, _ := t.Backend.Model()
	if !ready {
		return nil, ErrUnavailable
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	inf, err := t.Backend.Infer(ctx, tensor, info.ModelSHA256)
	leave()
	if err == nil && t.Mirror != nil {
		t.Mirror(ctx, slices.Clone(tensor), info, inf.Scores)
	}
	if err != nil {
		return nil, err
	}
	return &Outcome{Scores: inf.Scores, Model: info, Inference: inf}, nil
}

// enter counts an image of ctx's client in progress, or refuses it with
// ErrClientBusy; leave counts it out.
func (s *Service) enter(ctx context.Context) (leave func(), err error) {
	client, _ := ctx.Value(clientKey{}).(string)
	if !s.quota.Enter(client) {
		return nil, ErrClientBusy
	}
	return func() { s.quota.Leave(client) }, nil
}

// preprocess decodes and transforms data on the bounded decode pool within
// the decode budget; done is called once data has been decoded.
func (s *Service) preprocess(ctx context.Context, data []byte, info wire.Info, done func()) (_ []float32, err error) {
	span := startSpan(ctx, "preprocess")
	defer func() { endSpan(span, err) }()
	h, err := imageprep.Inspect(data, s.cfg.Limits)
	if err != nil {
		return nil, err
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("image.format", h.Format), attribute.Int("image.width", h.Width),
			attribute.Int("image.height", h.Height), attribute.Int("image.bytes", len(data)))
	}
	p := imageprep.Params{ResizeShorter: info.ResizeShorter, Height: info.Height, Width: info.Width, Mean: info.Mean, Std: info.Std}
	need := h.MemoryBytes(p)
	if need > s.mem.Size() { // never decodable here, busy or not
		return nil, &MemoryError{Need: need, Budget: s.mem.Size()}
	}
	// A decode worker first, then the memory. Workers go to the waiting
	// client holding the fewest, so a client's own queue never delays
	// another's requests by more than the decodes already running. Large
	// images (over an eighth of the budget: seconds of CPU, not
	// milliseconds) take all the workers but one at most, so that photos
	// never wait behind them for a worker; and as only holders of a
	// worker wait for memory (the budget is first come first served), a
	// photo waits there behind at most workers-1 of them.
	client, _ := ctx.Value(clientKey{}).(string)
	if need > s.mem.Size()/largeDecode {
		release, err := s.large.Acquire(ctx, client)
		if err != nil {
			return nil, decodeErr(err)
		}
		defer release()
	}
	release, err := s.decode.Acquire(ctx, client)
	if err != nil {
		return nil, decodeErr(err)
	}
	defer release()
	mem, err := s.mem.Acquire(ctx, need)
	if errors.Is(err, budget.ErrTooLarge) {
		return nil, &MemoryError{Need: need, Budget: s.mem.Size()}
	}
	if err != nil {
		return nil, err
	}
	defer mem.Release()
	span.AddEvent("decode slot taken")
	tensor := make([]float32, info.ImageSize())
	err = imageprep.Tensor(data, h, p, tensor)
	done()
	if err != nil {
		return nil, err
	}
	return tensor, nil
}

// largeDecode: an image needing more than 1/largeDecode of the decode
// budget is large (16 MiB of the default 128: a 5 MP PNG, or a JPEG of
// hundreds of megapixels at its DCT scale).
const largeDecode = 8

// decodeErr is a failed wait for a decode worker: ErrDecodeBusy when the
// queue is full.
func decodeErr(err error) error {
	if errors.Is(err, fairshare.ErrBusy) {
		return ErrDecodeBusy
	}
	return err
}

// releaser returns a function that releases lease once, however often it
// is called.
func releaser(lease *budget.Lease) func() {
	if lease == nil {
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(lease.Release) }
}

// cache is an LRU of scores bounded by entries and by bytes. Its mutex
// guards the LRU and the byte count.
type cache struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[string, []float32]
	bytes    int64
	maxBytes int64
}

func newCache(entries int, maxBytes int64) *cache {
	c := &cache{maxBytes: maxBytes}
	if entries <= 0 || maxBytes <= 0 {
		return c // disabled
	}
	c.lru, _ = simplelru.NewLRU(entries, func(k string, v []float32) { c.bytes -= entrySize(k, v) })
	return c
}

// entrySize is an entry's memory: the key, the scores and the LRU's
// bookkeeping. The scores are the entry's own (rtconn copies them out of
// the batch), so this is what it holds.
func entrySize(k string, v []float32) int64 { return int64(len(k) + 4*cap(v) + 128) }

func (c *cache) get(key string) ([]float32, bool) {
	if c.lru == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(key)
}

func (c *cache) add(key string, scores []float32) {
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
