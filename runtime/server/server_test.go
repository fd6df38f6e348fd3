package server

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/wire"
)

// start serves model on a fresh socket and returns its path.
func start(t *testing.T, model Model, info wire.Info, ready bool) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rt.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := New(model, Config{Info: info})
	s.SetReady(ready)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, path
}

func openEngine(t *testing.T, model string) (*engine.Engine, wire.Info) {
	t.Helper()
	e, err := engine.Open(engine.Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: model})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	mi := e.Info()
	return e, wire.Info{
		Model: "test", ModelSHA256: mi.SHA256, Channels: mi.Channels, Height: mi.Height, Width: mi.Width,
		Classes: mi.Classes, MaxBatchSize: 4, Labels: make([]string, mi.Classes),
	}
}

func dial(t *testing.T, path string) *wire.Client {
	t.Helper()
	c, err := wire.Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func images(n, size int, seed float64) []float32 {
	x := make([]float32, n*size)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.0007+seed)) * 2
	}
	return x
}

func closeEnough(a, b float32) bool {
	return math.Abs(float64(a-b)) <= 1e-4*(1+math.Abs(float64(b)))
}

// TestBatchOverSocket runs both models through a real socket: shapes, batch
// versus singles, determinism, counters.
func TestBatchOverSocket(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model func(testing.TB) string
		n     int
	}{{"tiny", testenv.TinyModel, 4}, {"resnet50", testenv.ResNet50Model, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			eng, info := openEngine(t, tc.model(t))
			srv, path := start(t, eng, info, true)
			c := dial(t, path)
			if got := c.Info(); !got.Ready || got.Classes != 1000 || got.MaxBatchSize != 4 || got.ProtocolVersion != wire.Version {
				t.Fatalf("handshake = %+v, want ready, 1000 classes, max batch 4, version %d", got, wire.Version)
			}
			size := info.ImageSize()
			in := images(tc.n, size, 0)
			ctx := context.Background()
			batch, err := c.Run(ctx, tc.n, in)
			if err != nil {
				t.Fatal(err)
			}
			if len(batch.Scores) != tc.n*1000 || len(batch.Errors) != tc.n || batch.ExecNanos == 0 {
				t.Fatalf("result has %d scores, %d items, exec %d ns; want %d, %d, > 0", len(batch.Scores), len(batch.Errors), batch.ExecNanos, tc.n*1000, tc.n)
			}
			again, _ := c.Run(ctx, tc.n, in)
			for i := range tc.n {
				single, err := c.Run(ctx, 1, in[i*size:(i+1)*size])
				if err != nil {
					t.Fatal(err)
				}
				for j := range 1000 {
					if got, want := batch.Scores[i*1000+j], single.Scores[j]; !closeEnough(got, want) {
						t.Fatalf("image %d class %d: batch %g, single %g", i, j, got, want)
					}
					if again.Scores[i*1000+j] != batch.Scores[i*1000+j] {
						t.Fatalf("image %d class %d: not deterministic", i, j)
					}
				}
			}
			// The counters; the progress fields are time-dependent.
			counters := func(st wire.Stats) wire.Stats {
				return wire.Stats{Batches: st.Batches, Items: st.Items, Queued: st.Queued}
			}
			if got, want := counters(srv.Stats()), (wire.Stats{Batches: uint64(2 + tc.n), Items: uint64(3 * tc.n)}); got != want {
				t.Errorf("Stats = %+v, want %+v", got, want)
			}
			if st, err := c.Stats(ctx); err != nil || counters(st) != counters(srv.Stats()) || st.RunningMs != 0 {
				t.Errorf("Stats over the socket = %+v, %v; want %+v", st, err, srv.Stats())
			}
		})
	}
}

func TestSocketMode(t *testing.T) {
	eng, info := openEngine(t, testenv.TinyModel(t))
	_, path := start(t, eng, info, true)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o660 {
		t.Errorf("socket mode = %o, want 660", got)
	}
}

func TestPerItemError(t *testing.T) {
	eng, info := openEngine(t, testenv.TinyModel(t))
	_, path := start(t, eng, info, true)
	c := dial(t, path)
	size := info.ImageSize()
	in := images(3, size, 1)
	want, _ := c.Run(context.Background(), 3, in)
	in[size+10] = float32(math.NaN())
	got, err := c.Run(context.Background(), 3, in)
	if err != nil {
		t.Fatal(err)
	}
	if got.Errors[0] != "" || got.Errors[1] == "" || got.Errors[2] != "" {
		t.Fatalf("item errors = %q, want only item 1 to fail", got.Errors)
	}
	for _, i := range []int{0, 2} {
		for j := range 1000 {
			if !closeEnough(got.Scores[i*1000+j], want.Scores[i*1000+j]) {
				t.Fatalf("item %d class %d = %g, want %g", i, j, got.Scores[i*1000+j], want.Scores[i*1000+j])
			}
		}
	}
}

func TestNotReady(t *testing.T) {
	eng, info := openEngine(t, testenv.TinyModel(t))
	srv, path := start(t, eng, info, false)
	c := dial(t, path)
	if c.Info().Ready {
		t.Error("handshake says ready before SetReady")
	}
	_, err := c.Run(context.Background(), 1, images(1, info.ImageSize(), 0))
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeNotReady {
		t.Errorf("Run before ready = %v, want code %d", err, wire.CodeNotReady)
	}
	srv.SetReady(true)
	if !dial(t, path).Info().Ready {
		t.Error("handshake after SetReady says not ready")
	}
}

// rawConn speaks the protocol by hand, to send what the client never would.
type rawConn struct {
	t *testing.T
	net.Conn
	r *bufio.Reader
}

func rawDial(t *testing.T, path string, hello bool) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawConn{t: t, Conn: nc, r: bufio.NewReader(nc)}
	if hello {
		c.Write(wire.AppendHello(nil, wire.Version))
		if typ, _ := c.read(); typ != wire.TypeInfo {
			t.Fatalf("handshake answered with type %d", typ)
		}
	}
	return c
}

func (c *rawConn) read() (byte, []byte) {
	typ, body, err := wire.ReadFrame(c.r, 64<<20, nil)
	if err != nil {
		return 0, nil
	}
	return typ, body
}

func frame(typ byte, body []byte) []byte {
	return wire.AppendFrame(nil, typ, func(b []byte) []byte { return append(b, body...) })
}

func batchBody(id uint64, n int, dataBytes int) []byte {
	b := binary.BigEndian.AppendUint64(nil, id)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	return append(b, make([]byte, dataBytes)...)
}

// TestProtocolErrors sends malformed input and checks the reply code, and
// that a well-behaved client on another connection is still served.
func TestProtocolErrors(t *testing.T) {
	eng, info := openEngine(t, testenv.TinyModel(t))
	_, path := start(t, eng, info, true)
	good := dial(t, path)
	img := info.ImageSize() * 4
	for _, tc := range []struct {
		name     string
		hello    bool
		send     []byte
		wantCode uint16 // 0: the server just closes
		closes   bool
	}{
		{"wrong version", false, wire.AppendHello(nil, wire.Version+1), wire.CodeVersion, true},
		{"no hello", false, frame(wire.TypeBatch, batchBody(1, 1, img)), wire.CodeBadRequest, true},
		{"zero images", true, frame(wire.TypeBatch, batchBody(7, 0, 0)), wire.CodeBadRequest, false},
		{"too many images", true, frame(wire.TypeBatch, batchBody(7, 5, img)), wire.CodeTooLarge, false},
		{"frame over max batch", true, frame(wire.TypeBatch, batchBody(7, 5, 5*img)), wire.CodeTooLarge, true},
		{"short tensor data", true, frame(wire.TypeBatch, batchBody(7, 2, img)), wire.CodeBadRequest, false},
		{"short header", true, frame(wire.TypeBatch, []byte{1, 2, 3}), wire.CodeBadRequest, false},
		{"unknown type", true, frame(99, []byte("hello")), wire.CodeBadRequest, false},
		{"oversized frame", true, []byte{0x7f, 0xff, 0xff, 0xff, wire.TypeBatch}, wire.CodeTooLarge, true},
		{"truncated frame", true, []byte{0, 0, 1, 0, wire.TypeBatch, 1, 2}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, path, tc.hello)
			c.Write(tc.send)
			if tc.name == "truncated frame" {
				c.Conn.(*net.UnixConn).CloseWrite()
			}
			if tc.wantCode != 0 {
				typ, body := c.read()
				if typ != wire.TypeError {
					t.Fatalf("reply type = %d, want error", typ)
				}
				e, err := wire.ParseError(body)
				if err != nil || e.Code != tc.wantCode {
					t.Fatalf("error = %+v, %v; want code %d", e, err, tc.wantCode)
				}
				if tc.hello && !tc.closes && e.ID != 7 && tc.name != "short header" && tc.name != "unknown type" {
					t.Errorf("error id = %d, want the batch's id 7", e.ID)
				}
			}
			if tc.closes {
				if typ, _ := c.read(); typ != 0 {
					t.Errorf("connection still open: read type %d", typ)
				}
			} else {
				// The connection still works after the error.
				c.Write(wire.AppendBatch(nil, 8, 1, make([]float32, info.ImageSize()), wire.TraceContext{}))
				if typ, body := c.read(); typ != wire.TypeResult || binary.BigEndian.Uint64(body) != 8 {
					t.Errorf("after the error, reply type %d, want a result for batch 8", typ)
				}
			}
			if _, err := good.Run(context.Background(), 1, images(1, info.ImageSize(), 0)); err != nil {
				t.Errorf("other connection not served after %s: %v", tc.name, err)
			}
		})
	}
}

// TestConcurrentClients checks that several connections are served at
// once and each gets its own results.
func TestConcurrentClients(t *testing.T) {
	eng, info := openEngine(t, testenv.TinyModel(t))
	_, path := start(t, eng, info, true)
	size := info.ImageSize()
	ref := dial(t, path)
	var wg sync.WaitGroup
	for k := range 4 {
		c := dial(t, path)
		wg.Go(func() {
			for i := range 5 {
				in := images(2, size, float64(k*10+i))
				got, err := c.Run(context.Background(), 2, in)
				if err != nil {
					t.Error(err)
					return
				}
				want, _ := ref.Run(context.Background(), 2, in)
				for j := range got.Scores {
					if !closeEnough(got.Scores[j], want.Scores[j]) {
						t.Errorf("client %d batch %d score %d = %g, want %g", k, i, j, got.Scores[j], want.Scores[j])
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestListenStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // leaves the file, like a runtime killed with SIGKILL
	ln2, err := Listen(stale)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	defer ln2.Close()
	if _, err := Listen(stale); err == nil {
		t.Error("Listen stole a live socket")
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o644)
	if _, err := Listen(regular); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

// gate is a model that blocks each batch until released: it holds a batch
// in flight, which the real engine cannot do on demand.
type gate struct {
	started chan int
	release chan struct{}
	classes int
}

func (g *gate) Run(in []float32, n int) ([]float32, error) {
	g.started <- n
	<-g.release
	return make([]float32, n*g.classes), nil
}

func TestShutdown(t *testing.T) {
	g := &gate{started: make(chan int, 4), release: make(chan struct{}), classes: 10}
	info := wire.Info{Channels: 1, Height: 2, Width: 2, Classes: 10, MaxBatchSize: 4}
	path := filepath.Join(t.TempDir(), "rt.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := New(g, Config{Info: info})
	s.SetReady(true)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := dial(t, path)

	inFlight := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), 1, make([]float32, 4))
		inFlight <- err
	}()
	<-g.started // batch 1 runs
	queued := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), 2, make([]float32, 8))
		queued <- err
	}()
	for len(s.jobs) == 0 { // wait until batch 2 is queued
		time.Sleep(time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			break // listener closed while the batch still runs
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	if err := <-inFlight; err != nil {
		t.Errorf("batch in flight: %v, want its result", err)
	}
	var we *wire.Error
	if err := <-queued; !errors.As(err, &we) || we.Code != wire.CodeShuttingDown {
		t.Errorf("queued batch: %v, want code %d", err, wire.CodeShuttingDown)
	}
	if err := <-shut; err != nil {
		t.Error(err)
	}
	if err := <-served; err != nil {
		t.Error(err)
	}
}

// TestProgress: the reader reports the executor's progress, so a batch
// stuck in the model shows as stalled while the connection still answers.
func TestProgress(t *testing.T) {
	g := &gate{started: make(chan int, 4), release: make(chan struct{}), classes: 10}
	info := wire.Info{Channels: 1, Height: 2, Width: 2, Classes: 10, MaxBatchSize: 4}
	s, path := start(t, g, info, true)
	c := dial(t, path)
	ctx := context.Background()
	if st, err := c.Stats(ctx); err != nil || st.RunningMs != 0 || st.Queued != 0 || st.Stalled(time.Second) {
		t.Fatalf("idle: %+v, %v", st, err)
	}
	done := make(chan error, 2)
	go func() { _, err := c.Run(ctx, 1, make([]float32, 4)); done <- err }()
	<-g.started
	go func() { _, err := c.Run(ctx, 1, make([]float32, 4)); done <- err }()
	for len(s.jobs) == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(60 * time.Millisecond)
	st, err := c.Stats(ctx)
	if err != nil || st.RunningMs < 50 || st.Queued != 1 {
		t.Fatalf("one batch stuck in the model, one queued: %+v, %v", st, err)
	}
	if !st.Stalled(50*time.Millisecond) || st.Stalled(time.Minute) {
		t.Errorf("Stalled: %v after 50ms, %v after 1m; want true, false", st.Stalled(50*time.Millisecond), st.Stalled(time.Minute))
	}
	close(g.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if st, err := c.Stats(ctx); err != nil || st.RunningMs != 0 || st.Queued != 0 || st.Batches != 2 || st.IdleMs > 1000 {
		t.Errorf("after both batches: %+v, %v", st, err)
	}
}

func TestStalled(t *testing.T) {
	for _, tc := range []struct {
		st   wire.Stats
		want bool
	}{
		{wire.Stats{}, false},
		{wire.Stats{IdleMs: 60_000}, false},                          // idle with nothing to do
		{wire.Stats{RunningMs: 3000}, false},                         // a batch within the limit
		{wire.Stats{RunningMs: 5000}, true},                          // stuck in the model
		{wire.Stats{Queued: 2, IdleMs: 5000}, true},                  // work waits, nothing runs
		{wire.Stats{Queued: 2, IdleMs: 100}, false},                  // between batches
		{wire.Stats{Queued: 1, RunningMs: 100, IdleMs: 9000}, false}, // slow start, now running
	} {
		if got := tc.st.Stalled(4 * time.Second); got != tc.want {
			t.Errorf("%+v: Stalled(4s) = %v, want %v", tc.st, got, tc.want)
		}
	}
}
