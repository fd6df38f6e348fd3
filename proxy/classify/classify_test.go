package classify

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/fairshare"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
)

// testInfo is an ImageNet-style handshake: 256 then a 224x224 crop, 10
// classes.
var testInfo = wire.Info{
	Model: "resnet50", ModelSHA256: strings.Repeat("5a", 32),
	InputName: "data", OutputName: "scores",
	Channels: 3, Height: 224, Width: 224, ResizeShorter: 256,
	Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225},
	Classes: 10, Labels: []string{"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9"},
}

// fakeBackend is the runtime, with its behaviour set by the test: whether a
// model is ready or known, an error to return, a gate Infer waits on, and
// the capacity of the score slices it returns.
type fakeBackend struct {
	mu       sync.Mutex
	ready    bool
	known    bool
	err      error
	gate     chan struct{} // when set, Infer waits for it to close (or ctx)
	scoreCap int           // capacity of the returned scores; 0 means Classes

	calls   atomic.Int32 // Infer calls
	entered chan struct{}
}

func newFake() *fakeBackend { return &fakeBackend{ready: true, known: true} }

func (b *fakeBackend) set(ready, known bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready, b.known = ready, known
}

func (b *fakeBackend) Model() (wire.Info, bool, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return testInfo, b.ready, b.known
}

func (b *fakeBackend) Infer(ctx context.Context, tensor []float32, modelSHA string) (*Inference, error) {
	b.calls.Add(1)
	b.mu.Lock()
	gate, err, scoreCap := b.gate, b.err, b.scoreCap
	b.mu.Unlock()
	if modelSHA != testInfo.ModelSHA256 || len(tensor) != testInfo.ImageSize() {
		return nil, fmt.Errorf("fake: tensor of %d values for model %q", len(tensor), modelSHA)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	// Scores that depend on the image, in a slice of the backend's own.
	scores := make([]float32, testInfo.Classes, max(scoreCap, testInfo.Classes))
	for i := range scores {
		scores[i] = tensor[i*len(tensor)/len(scores)] + float32(i)
	}
	return &Inference{Scores: scores, BatchSize: 1, Exec: time.Millisecond}, nil
}

func newService(cfg Config, be Backend) (*Service, *stats.Metrics) {
	m := stats.New(metrics.NewSet(), stats.Gauges{})
	return New(cfg, be, m), m
}

// pngHeader is a PNG signature and IHDR with no image data: enough for
// imageprep.Inspect.
func pngHeader(w, h uint32, depth, ctype byte) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, depth, ctype, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, 13)
	chunk := append([]byte("IHDR"), ihdr...)
	b = append(b, chunk...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
}

// lease reserves len(data) bytes of b for a Classify call. InUse counts
// them until the lease's last reference is released: with one reference,
// Classify's, it shows when Classify releases it (and a second release
// panics).
func lease(t *testing.T, b *budget.Budget, data []byte) *budget.Lease {
	t.Helper()
	l, err := b.Acquire(context.Background(), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// heldLease is lease with a second reference, the test's own: after
// Classify has released its reference exactly once, InUse still counts the
// bytes until the test releases its own (see checkReleasedOnce).
func heldLease(t *testing.T, b *budget.Budget, data []byte) *budget.Lease {
	t.Helper()
	l := lease(t, b, data)
	l.Retain()
	return l
}

// checkReleasedOnce checks that Classify released its reference of l, of
// size bytes, exactly once, while others bytes of b are held elsewhere: our
// own reference still holds the bytes, and releasing it frees them. (A
// second release by Classify would show as bytes missing here, or as a
// panic of budget.Lease.Release.)
func checkReleasedOnce(t *testing.T, what string, b *budget.Budget, l *budget.Lease, size, others int) {
	t.Helper()
	if got, want := b.InUse(), int64(size+others); got != want {
		t.Errorf("%s: %d bytes in use, want %d: the classifier's reference is released %s", what, got, want,
			map[bool]string{true: "twice", false: "late or never"}[got < want])
		return
	}
	l.Release()
	if got := b.InUse(); got != int64(others) {
		t.Errorf("%s: %d bytes in use after the test's release, want %d: the classifier never released its reference", what, got, others)
	}
}

func TestCoalescing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		be.gate = make(chan struct{})
		s, m := newService(Config{CacheEntries: 100, CacheBytes: 1 << 20}, be)
		data := testenv.Image(t, "small.png")
		const n = 8
		uploads := budget.New(n * int64(len(data)))
		type result struct {
			out *Outcome
			err error
		}
		results := make([]result, n)
		leases := make([]*budget.Lease, n)
		var wg sync.WaitGroup
		start := func(i int) {
			wg.Go(func() {
				out, err := s.Classify(context.Background(), data, leases[i], false)
				results[i] = result{out, err}
			})
		}
		leases[0] = lease(t, uploads, data) // Classify's reference only
		start(0)
		synctest.Wait() // the first call is decoded and waits in Infer
		// The first caller's bytes are released once decoded, while the
		// inference still runs.
		if got := uploads.InUse(); got != 0 {
			t.Errorf("while the inference runs: the first caller's %d bytes still reserved, want 0", got)
		}
		for i := 1; i < n; i++ {
			leases[i] = heldLease(t, uploads, data)
			start(i)
		}
		synctest.Wait() // the others have joined it
		close(be.gate)
		wg.Wait()
		for i := 1; i < n; i++ {
			checkReleasedOnce(t, "joiner "+strconv.Itoa(i), uploads, leases[i], len(data), (n-1-i)*len(data))
		}

		if got := be.calls.Load(); got != 1 {
			t.Errorf("%d identical concurrent calls ran the backend %d times, want 1", n, got)
		}
		coalesced, withInference := 0, 0
		for i, r := range results {
			if r.err != nil || r.out == nil {
				t.Fatalf("call %d: %v", i, r.err)
			}
			if fmt.Sprint(r.out.Scores) != fmt.Sprint(results[0].out.Scores) || r.out.Cached {
				t.Errorf("call %d: scores %v cached=%v; want %v, not cached", i, r.out.Scores, r.out.Cached, results[0].out.Scores)
			}
			if r.out.Coalesced {
				coalesced++
				if r.out.Inference != nil {
					t.Errorf("call %d is coalesced but reports the inference's timings", i)
				}
			}
			if r.out.Inference != nil {
				withInference++
			}
		}
		if coalesced != n-1 || withInference != 1 {
			t.Errorf("%d calls report Coalesced and %d the inference, want %d and 1", coalesced, withInference, n-1)
		}
		if got := m.CacheCoalesced.Get(); got != n-1 {
			t.Errorf("inference_cache_coalesced_total = %d, want %d", got, n-1)
		}
		if got := m.CacheMisses.Get(); got != n {
			t.Errorf("inference_cache_misses_total = %d, want %d", got, n)
		}
	})
}

func TestCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		s, m := newService(Config{CacheEntries: 100, CacheBytes: 1 << 20}, be)
		data := testenv.Image(t, "grace_hopper.jpg")
		ctx := context.Background()
		for _, step := range []struct {
			noCache    bool
			wantCached bool
			wantCalls  int32
		}{
			{false, false, 1}, // a miss runs the backend
			{false, true, 1},  // the same image again is a hit
			{true, false, 2},  // no-cache skips the read
			{false, true, 2},  // and the fresh answer is there for the next
		} {
			out, err := s.Classify(ctx, data, nil, step.noCache)
			if err != nil {
				t.Fatal(err)
			}
			if out.Cached != step.wantCached || be.calls.Load() != step.wantCalls {
				t.Errorf("noCache=%v: cached=%v after %d backend calls; want cached=%v after %d",
					step.noCache, out.Cached, be.calls.Load(), step.wantCached, step.wantCalls)
			}
			if out.Cached && (out.Inference != nil || out.Coalesced || out.Model.ModelSHA256 != testInfo.ModelSHA256) {
				t.Errorf("a cached outcome: %+v", out)
			}
			if !out.Cached && (out.Inference == nil || len(out.Scores) != testInfo.Classes) {
				t.Errorf("a fresh outcome: %+v", out)
			}
		}
		if h, mi := m.CacheHits.Get(), m.CacheMisses.Get(); h != 2 || mi != 2 {
			t.Errorf("hits %d, misses %d; want 2 and 2", h, mi)
		}

		// A disabled cache never answers.
		off, _ := newService(Config{}, be)
		for range 2 {
			if out, err := off.Classify(ctx, data, nil, false); err != nil || out.Cached {
				t.Errorf("disabled cache: cached=%v, %v", out != nil && out.Cached, err)
			}
		}
	})
}

// keyLen is the length of a cache key for testInfo: hex sha256, the model's
// sha256, the preprocessing version.
var keyLen = 64 + 1 + len(testInfo.ModelSHA256) + 1 + len(strconv.Itoa(imageprep.Version))

// checkAccounting checks the cache's byte count against its entries.
func checkAccounting(t *testing.T, c *cache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum int64
	for _, k := range c.lru.Keys() {
		v, _ := c.lru.Peek(k)
		sum += entrySize(k, v)
	}
	if c.bytes != sum || c.bytes > c.maxBytes {
		t.Errorf("cache counts %d bytes; its %d entries hold %d, bound %d", c.bytes, c.lru.Len(), sum, c.maxBytes)
	}
}

// The byte bound holds, and the byte count is what the entries hold, scores
// counted by capacity.
func TestCacheBytes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		scoreCap int
		entries  int
		maxBytes func(entry int64) int64
		want     int // entries left of 6
	}{
		{"bytes bound 3.5 entries", 0, 100, func(e int64) int64 { return 3*e + e/2 }, 3},
		{"bytes bound exactly 2", 0, 100, func(e int64) int64 { return 2 * e }, 2},
		{"entries bound", 0, 4, func(e int64) int64 { return 1 << 20 }, 4},
		// Scores that are a view of a bigger buffer hold all of it.
		{"scores with spare capacity", 1000, 100, func(e int64) int64 { return 2*e + 1 }, 2},
		{"one entry larger than the cache", 1000, 100, func(e int64) int64 { return e - 1 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				be := newFake()
				be.scoreCap = tc.scoreCap
				entry := int64(keyLen + 4*max(tc.scoreCap, testInfo.Classes) + 128)
				s, _ := newService(Config{CacheEntries: tc.entries, CacheBytes: tc.maxBytes(entry)}, be)
				const n = 6
				imgs := make([][]byte, n)
				for i := range imgs {
					imgs[i] = testenv.UniquePNG(i)
					if _, err := s.Classify(context.Background(), imgs[i], nil, false); err != nil {
						t.Fatal(err)
					}
					checkAccounting(t, s.cache)
				}
				if got := s.cache.lru.Len(); got != tc.want {
					t.Errorf("%d entries left, want %d", got, tc.want)
				}
				if got, want := s.cache.bytes, int64(tc.want)*entry; got != want {
					t.Errorf("cache counts %d bytes, want %d (%d entries of %d)", got, want, tc.want, entry)
				}
				// The most recent ones are what remains.
				for i := n - tc.want; i < n; i++ {
					if out, _ := s.Classify(context.Background(), imgs[i], nil, false); !out.Cached {
						t.Errorf("image %d of %d, among the last %d, is not cached", i, n, tc.want)
					}
				}
				if tc.want < n {
					calls := be.calls.Load()
					if out, _ := s.Classify(context.Background(), imgs[0], nil, false); out.Cached || be.calls.Load() != calls+1 {
						t.Errorf("the oldest image is still cached")
					}
				}
			})
		})
	}
}

func TestCacheAdd(t *testing.T) {
	key := func(i int) string { return fmt.Sprintf("%0*d", keyLen, i) }
	entry := entrySize(key(0), make([]float32, 10))
	big := entrySize(key(0), make([]float32, 1000))
	type add struct{ key, scores int }
	for _, tc := range []struct {
		name      string
		entries   int
		maxBytes  int64
		adds      []add
		wantKeys  []int // of 1 to 4, those cached
		wantBytes int64
	}{
		{"disabled by entries", 0, 1 << 20, []add{{1, 10}}, nil, 0},
		{"disabled by bytes", 10, 0, []add{{1, 10}}, nil, 0},
		{"a key added twice counts once", 10, 1 << 20, []add{{1, 10}, {1, 10}, {2, 10}}, []int{1, 2}, 2 * entry},
		{"oldest out by bytes", 10, 2 * entry, []add{{1, 10}, {2, 10}, {3, 10}}, []int{2, 3}, 2 * entry},
		{"oldest out by count", 2, 1 << 20, []add{{1, 10}, {2, 10}, {3, 10}}, []int{2, 3}, 2 * entry},
		{"a big one pushes out several", 10, big + entry, []add{{1, 10}, {2, 10}, {3, 10}, {4, 1000}}, []int{3, 4}, big + entry},
		// An entry that cannot fit is not added: it would flush the
		// cache for nothing.
		{"too large alone", 10, big - 1, []add{{1, 10}, {2, 10}, {4, 1000}}, []int{1, 2}, 2 * entry},
	} {
		c := newCache(tc.entries, tc.maxBytes)
		for _, a := range tc.adds {
			c.add(key(a.key), make([]float32, a.scores))
		}
		var got []int
		for k := 1; k <= 4; k++ {
			if _, ok := c.get(key(k)); ok {
				got = append(got, k)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.wantKeys) || c.bytes != tc.wantBytes {
			t.Errorf("%s: keys %v, %d bytes; want %v, %d bytes", tc.name, got, c.bytes, tc.wantKeys, tc.wantBytes)
		}
	}
}

// The upload lease handed to Classify is released exactly once on every
// path.
func TestLeaseReleasedOnce(t *testing.T) {
	img := testenv.Image(t, "small.png")
	boom := errors.New("runtime exploded")
	for _, tc := range []struct {
		name    string
		cfg     Config
		prepare func(s *Service, be *fakeBackend) // before the call
		data    []byte
		noCache bool
		wantErr error // nil: success
	}{
		{name: "miss", data: img},
		{name: "hit", data: img, prepare: func(s *Service, _ *fakeBackend) {
			s.Classify(context.Background(), img, nil, false)
		}},
		{name: "no-cache", data: img, noCache: true, prepare: func(s *Service, _ *fakeBackend) {
			s.Classify(context.Background(), img, nil, false)
		}},
		{name: "unknown model", data: img, wantErr: ErrUnavailable, prepare: func(_ *Service, be *fakeBackend) { be.set(false, false) }},
		{name: "not ready", data: img, wantErr: ErrUnavailable, prepare: func(_ *Service, be *fakeBackend) { be.set(false, true) }},
		{name: "not an image", data: []byte("hello"), wantErr: imageprep.ErrFormat},
		{name: "truncated image", data: img[:len(img)/2], wantErr: imageprep.ErrCorrupt},
		{name: "too many pixels", data: pngHeader(5000, 5000, 8, 2), wantErr: imageprep.ErrTooLarge,
			cfg: Config{Limits: imageprep.Limits{MaxPixels: 1 << 20}}},
		{name: "decode memory", data: pngHeader(6000, 6000, 8, 6), wantErr: &MemoryError{},
			cfg: Config{Limits: imageprep.Limits{MaxPixelsPerByte: -1}}}, // a header alone: past the per-byte cap
		{name: "backend error", data: img, wantErr: boom, prepare: func(_ *Service, be *fakeBackend) { be.err = boom }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				be := newFake()
				cfg := tc.cfg
				cfg.CacheEntries, cfg.CacheBytes = 10, 1<<20
				s, _ := newService(cfg, be)
				if tc.prepare != nil {
					tc.prepare(s, be)
				}
				uploads := budget.New(1 << 20)
				l := heldLease(t, uploads, tc.data)
				out, err := s.Classify(context.Background(), tc.data, l, tc.noCache)
				var me *MemoryError
				switch {
				case tc.wantErr == nil && (err != nil || out == nil):
					t.Errorf("got %v, want success", err)
				case errors.As(tc.wantErr, &me) && !errors.As(err, &me):
					t.Errorf("got %v, want a *MemoryError", err)
				case tc.wantErr != nil && !errors.As(tc.wantErr, &me) && !errors.Is(err, tc.wantErr):
					t.Errorf("got %v, want %v", err, tc.wantErr)
				}
				synctest.Wait() // any work left running is done
				checkReleasedOnce(t, tc.name, uploads, l, len(tc.data), 0)
				if got := s.DecodeBytes(); got != 0 {
					t.Errorf("%d bytes of the decode budget still reserved", got)
				}
			})
		})
	}
}

// A caller that gives up before its image is decoded gets its error at once;
// its lease is released when the decode, which another caller still waits
// for, has finished.
func TestLeaseOfCancelledCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		s, _ := newService(Config{DecodeWorkers: 1, CacheEntries: 10, CacheBytes: 1 << 20}, be)
		data := testenv.Image(t, "small.png")
		uploads := budget.New(1 << 20)
		busy, err := s.decode.Acquire(context.Background(), "other") // the only decode worker is busy
		if err != nil {
			t.Fatal(err)
		}

		ctx, cancel := context.WithCancel(context.Background())
		first := lease(t, uploads, data)
		firstErr := make(chan error, 1)
		go func() { _, err := s.Classify(ctx, data, first, false); firstErr <- err }()
		synctest.Wait()
		second := heldLease(t, uploads, data)
		secondOut := make(chan *Outcome, 1)
		go func() {
			out, err := s.Classify(context.Background(), data, second, false)
			if err != nil {
				t.Errorf("the caller that stayed: %v", err)
			}
			secondOut <- out
		}()
		synctest.Wait()

		cancel()
		if err := <-firstErr; !errors.Is(err, context.Canceled) {
			t.Errorf("the caller that left: %v, want context.Canceled", err)
		}
		synctest.Wait()
		// The first caller's lease is not released: its bytes are still to
		// be decoded for the second (whose lease the test holds too).
		if got, want := uploads.InUse(), int64(2*len(data)); got != want {
			t.Errorf("before the decode: %d bytes in use, want %d: the first caller's lease was released while its bytes were still needed", got, want)
		}
		busy() // the worker is free: the decode runs
		out := <-secondOut
		if out == nil || !out.Coalesced || be.calls.Load() != 1 {
			t.Errorf("the caller that stayed got %+v after %d inferences, want the shared one", out, be.calls.Load())
		}
		synctest.Wait()
		// The first caller's lease is released now, the second's once.
		checkReleasedOnce(t, "after the decode", uploads, second, len(data), 0)
	})
}

// While the runtime reconnects, cached answers are still given; anything
// else is unavailable.
func TestNotReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		s, m := newService(Config{CacheEntries: 10, CacheBytes: 1 << 20}, be)
		cached, uncached := testenv.Image(t, "small.png"), testenv.Image(t, "grace_hopper.jpg")
		ctx := context.Background()
		want, err := s.Classify(ctx, cached, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		be.set(false, true) // reconnecting: the last handshake is known
		if info, ok := s.Model(); ok || info.Model != testInfo.Model {
			t.Errorf("Model() = %q, %v; want the last model, not ready", info.Model, ok)
		}
		if info, ok := s.LastModel(); !ok || info.ModelSHA256 != testInfo.ModelSHA256 {
			t.Errorf("LastModel() = %q, %v; want the last model", info.ModelSHA256, ok)
		}
		for _, tc := range []struct {
			name    string
			data    []byte
			noCache bool
			wantErr error
		}{
			{"cached", cached, false, nil},
			{"cached, no-cache", cached, true, ErrUnavailable},
			{"uncached", uncached, false, ErrUnavailable},
		} {
			out, err := s.Classify(ctx, tc.data, nil, tc.noCache)
			switch {
			case !errors.Is(err, tc.wantErr):
				t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
			case err == nil && (!out.Cached || fmt.Sprint(out.Scores) != fmt.Sprint(want.Scores) || out.Model.Model != testInfo.Model):
				t.Errorf("%s: %+v, want the cached answer", tc.name, out)
			}
		}
		if _, err := s.InferTensor(ctx, make([]float32, testInfo.ImageSize())); !errors.Is(err, ErrUnavailable) {
			t.Errorf("InferTensor while not ready: %v, want ErrUnavailable", err)
		}
		be.set(false, false) // no handshake ever: nothing, not even the cache
		if _, err := s.Classify(ctx, cached, nil, false); !errors.Is(err, ErrUnavailable) {
			t.Errorf("unknown model, cached image: %v, want ErrUnavailable", err)
		}
		if _, ok := s.LastModel(); ok {
			t.Error("LastModel() known with no handshake")
		}
		if got := be.calls.Load(); got != 1 {
			t.Errorf("the backend ran %d times, want 1 (before it went away)", got)
		}
		if got := m.CacheHits.Get(); got != 1 {
			t.Errorf("inference_cache_hits_total = %d, want 1", got)
		}
	})
}

// An image whose decode would need more than the whole decode budget is a
// *MemoryError, told from its header; one that needs exactly the budget is
// decoded.
func TestDecodeMemory(t *testing.T) {
	data := testenv.Image(t, "small.png")
	h, err := imageprep.Inspect(data, imageprep.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	need := h.MemoryBytes(imageprep.Params{ResizeShorter: testInfo.ResizeShorter, Height: testInfo.Height,
		Width: testInfo.Width, Mean: testInfo.Mean, Std: testInfo.Std})
	// 8000x5000 RGBA: 40 M pixels, within the default MaxPixels, 160 MB
	// decoded: over the default 128 MiB decode budget.
	huge := pngHeader(8000, 5000, 8, 6)
	for _, tc := range []struct {
		name     string
		data     []byte
		budget   int64
		wantNeed int64 // 0: decoded
	}{
		{"fits exactly", data, need, 0},
		{"one byte short", data, need - 1, need},
		{"40 Mpx RGBA, default budget", huge, 0, 1},
	} {
		synctest.Test(t, func(t *testing.T) {
			be := newFake()
			// The images are headers alone: past the per-byte cap.
			s, _ := newService(Config{DecodeMemory: tc.budget, Limits: imageprep.Limits{MaxPixelsPerByte: -1}}, be)
			_, err := s.Classify(context.Background(), tc.data, nil, false)
			var me *MemoryError
			switch {
			case tc.wantNeed == 0 && err != nil:
				t.Errorf("%s: %v, want it decoded", tc.name, err)
			case tc.wantNeed != 0 && !errors.As(err, &me):
				t.Errorf("%s: %v, want a *MemoryError", tc.name, err)
			case tc.wantNeed != 0 && (me.Budget != s.cfg.DecodeMemory || me.Need <= me.Budget || (tc.wantNeed > 1 && me.Need != tc.wantNeed)):
				t.Errorf("%s: %+v, want need %d over budget %d", tc.name, me, tc.wantNeed, s.cfg.DecodeMemory)
			case tc.wantNeed != 0 && be.calls.Load() != 0:
				t.Errorf("%s: refused, but the backend ran", tc.name)
			}
			if s.DecodeBytes() != 0 {
				t.Errorf("%s: %d decode bytes still reserved", tc.name, s.DecodeBytes())
			}
		})
	}
}

// Beyond DecodeQueue requests waiting for or holding a decode worker, the
// next one is refused at once.
func TestDecodeBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		s, _ := newService(Config{DecodeWorkers: 1, DecodeQueue: 2, ImagesPerClient: -1}, be)
		hold, err := s.decode.Acquire(context.Background(), "other") // the only worker, one place of two
		if err != nil {
			t.Fatal(err)
		}
		uploads := budget.New(1 << 20)

		a := testenv.UniquePNG(1)
		la := lease(t, uploads, a)
		aDone := make(chan error, 1)
		go func() { _, err := s.Classify(context.Background(), a, la, false); aDone <- err }()
		synctest.Wait() // a waits for the worker: the queue is full

		b := testenv.UniquePNG(2)
		lb := heldLease(t, uploads, b)
		if _, err := s.Classify(context.Background(), b, lb, false); !errors.Is(err, ErrDecodeBusy) {
			t.Errorf("a second image with a queue of 1 taken: %v, want ErrDecodeBusy", err)
		}
		checkReleasedOnce(t, "refused", uploads, lb, len(b), len(a)) // a's is held

		hold() // let a decode
		if err := <-aDone; err != nil {
			t.Errorf("the queued image: %v", err)
		}
		if got := uploads.InUse(); got != 0 {
			t.Errorf("after the queued image was decoded: %d bytes in use, want 0", got)
		}
		if _, err := s.Classify(context.Background(), b, nil, false); err != nil {
			t.Errorf("once the queue emptied: %v", err)
		}
		if got := s.decode.Stats(); got != (fairshare.Stats{}) {
			t.Errorf("still counted in the decode queue: %+v", got)
		}
	})
}

// recorder is a backend that notes which client each inference was for.
type recorder struct {
	*fakeBackend
	mu      sync.Mutex
	clients []string
}

func (r *recorder) Infer(ctx context.Context, tensor []float32, modelSHA string) (*Inference, error) {
	c, _ := ctx.Value(clientKey{}).(string)
	r.mu.Lock()
	r.clients = append(r.clients, c)
	r.mu.Unlock()
	return r.fakeBackend.Infer(ctx, tensor, modelSHA)
}

// A client with many images queued for the decode worker does not make
// another client's image wait behind all of them: the worker takes turns.
func TestDecodeWorkersSharedBetweenClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := &recorder{fakeBackend: newFake()}
		s, _ := newService(Config{DecodeWorkers: 1, ImagesPerClient: -1}, be)
		hold, err := s.decode.Acquire(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		send := func(client string, i int) {
			wg.Go(func() {
				ctx := WithClient(context.Background(), client)
				if _, err := s.Classify(ctx, testenv.UniquePNG(i), nil, false); err != nil {
					t.Errorf("%s: %v", client, err)
				}
			})
			synctest.Wait()
		}
		for i := range 5 {
			send("flood", i)
		}
		send("honest", 99)
		hold()
		wg.Wait()
		want := []string{"flood", "honest", "flood", "flood", "flood", "flood"}
		if !slices.Equal(be.clients, want) {
			t.Errorf("inference order %q, want %q: the honest image waited behind the flood's queue", be.clients, want)
		}
	})
}

// While another client is present, a client with its part in progress is
// refused, and the other is not; alone, a client may take more.
func TestImagesPerClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		be.gate = make(chan struct{}) // inferences wait
		s, _ := newService(Config{DecodeWorkers: 2, DecodeQueue: 16, ImagesPerClient: 2}, be)
		results := make(chan error, 16)
		send := func(client string, i int) {
			go func() {
				_, err := s.Classify(WithClient(context.Background(), client), testenv.UniquePNG(i), nil, false)
				results <- err
			}()
			synctest.Wait()
		}
		for i := range 6 { // alone: all six, past its part of 2
			send("flood", i)
		}
		if len(results) != 0 {
			t.Fatalf("a client alone refused: %v", <-results)
		}
		send("honest", 100)
		if len(results) != 0 {
			t.Fatalf("another client refused: %v", <-results)
		}
		send("flood", 7)
		if err := <-results; !errors.Is(err, ErrClientBusy) {
			t.Errorf("the flood's 7th with another client present: %v, want ErrClientBusy", err)
		}
		close(be.gate)
		for range 7 {
			if err := <-results; err != nil {
				t.Errorf("admitted image: %v", err)
			}
		}
		if got := s.quota.Total(); got != 0 {
			t.Errorf("%d images still counted in progress", got)
		}
	})
}

// Large images never take the last decode worker: a photo sent while one
// is decoded and another waits is decoded at once.
func TestLargeImagesLeaveAWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := newService(Config{DecodeWorkers: 2, Limits: imageprep.Limits{MaxPixelsPerByte: -1}}, newFake())
		hold, err := s.large.Acquire(context.Background(), "bombs") // one large image decoding
		if err != nil {
			t.Fatal(err)
		}
		large := make(chan error, 1)
		go func() {
			_, err := s.Classify(context.Background(), pngHeader(4000, 4000, 8, 2), nil, false) // 48 MB decoded
			large <- err
		}()
		synctest.Wait()
		if len(large) != 0 {
			t.Fatalf("a second large image did not wait: %v", <-large)
		}
		if _, err := s.Classify(context.Background(), testenv.UniquePNG(1), nil, false); err != nil {
			t.Errorf("a photo while large images hold the rest: %v", err)
		}
		if st := s.decode.Stats(); st.Held != 0 {
			t.Errorf("the waiting large image holds a worker: %+v", st)
		}
		hold()
		if err := <-large; !errors.Is(err, imageprep.ErrCorrupt) {
			t.Errorf("the large image, once its turn came: %v, want it decoded (a corrupt header-only PNG)", err)
		}
	})
}

// The images the proxy accepts decode to the model's input.
func TestClassifyFormats(t *testing.T) {
	for _, name := range []string{"grace_hopper.jpg", "small.png", "small_alpha.png", "small.gif", "small.webp", "small_gray.jpg", "small_progressive.jpg"} {
		synctest.Test(t, func(t *testing.T) {
			be := newFake()
			s, _ := newService(Config{}, be)
			out, err := s.Classify(context.Background(), testenv.Image(t, name), nil, false)
			if err != nil || len(out.Scores) != testInfo.Classes || out.Inference == nil || out.Model.Model != testInfo.Model {
				t.Errorf("%s: %+v, %v", name, out, err)
			}
		})
	}
}

// ExampleService_Classify classifies the same image twice: the second
// answer comes from the cache.
func ExampleService_Classify() {
	data, err := os.ReadFile("../testdata/grace_hopper.jpg")
	if err != nil {
		panic(err)
	}
	s := New(Config{CacheEntries: 1000, CacheBytes: 1 << 20}, newFake(), stats.New(metrics.NewSet(), stats.Gauges{}))
	for range 2 {
		out, err := s.Classify(context.Background(), data, nil, false)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%d scores, cached=%v\n", len(out.Scores), out.Cached)
	}
	// Output:
	// 10 scores, cached=false
	// 10 scores, cached=true
}

// A caller that joins a call in flight needs its bytes no more (the call
// decodes the first caller's copy): its lease should be released when it
// joins, not when the shared inference ends. See the report on
// Service.Classify: flight.Group.Do gives no signal on joining.
func TestJoinerLeaseReleasedOnJoin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		be := newFake()
		be.gate = make(chan struct{})
		s, _ := newService(Config{}, be)
		data := testenv.Image(t, "small.png")
		uploads := budget.New(1 << 20)
		var wg sync.WaitGroup
		wg.Go(func() { s.Classify(context.Background(), data, nil, false) })
		synctest.Wait() // the first call waits in Infer
		l := lease(t, uploads, data)
		wg.Go(func() { s.Classify(context.Background(), data, l, false) })
		synctest.Wait() // the second has joined it
		got := uploads.InUse()
		close(be.gate)
		wg.Wait()
		if got != 0 {
			t.Errorf("a joiner holds its %d upload bytes for the whole shared inference, want them released on joining", got)
		}
	})
}

// panicBackend panics in Infer, which runs on the flight's goroutine.
type panicBackend struct{ *fakeBackend }

func (panicBackend) Infer(context.Context, []float32, string) (*Inference, error) {
	panic("backend exploded")
}

// A panic in the shared work (decoding, preprocessing, the backend) runs on
// flight's goroutine, out of reach of the HTTP handler's recover: it must
// come back to the callers as an error, not end the process.
func TestPanicInSharedWork(t *testing.T) {
	s, _ := newService(Config{}, panicBackend{newFake()})
	uploads := budget.New(1 << 20)
	data := testenv.Image(t, "small.png")
	l := heldLease(t, uploads, data)
	if _, err := s.Classify(context.Background(), data, l, false); err == nil {
		t.Error("a panicking backend gave no error")
	}
	checkReleasedOnce(t, "after the panic", uploads, l, len(data), 0)
}
