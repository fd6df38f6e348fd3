package rtconn

// These tests run rtconn against an in-process runtime/server over a real
// unix socket, with a fake model. testing/synctest is not used: goroutines
// blocked on socket I/O are not durably blocked, so a bubble's clock would
// never advance. Timeouts are short and real; waits have generous limits
// and no test asserts an upper bound on how fast something happens.

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/server"
	"github.com/batchgate/batchgate/runtime/wire"
)

const classes = 3

// fakeModel echoes each image's two values as its first two scores and
// the batch size as the third, and records the batch sizes it ran. While
// block is set, each Run waits until block is closed.
type fakeModel struct {
	mu    sync.Mutex
	sizes []int
	block chan struct{}
}

func (m *fakeModel) Run(input []float32, n int) ([]float32, error) {
	m.mu.Lock()
	m.sizes = append(m.sizes, n)
	block := m.block
	m.mu.Unlock()
	if block != nil {
		<-block
	}
	out := make([]float32, 0, n*classes)
	for k := range n {
		out = append(out, input[2*k], input[2*k+1], float32(n))
	}
	return out, nil
}

func (m *fakeModel) batchSizes() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.sizes)
}

// blockRuns makes every later Run wait until the returned release is called
// (idempotent; also called at cleanup, before the server shuts down).
func (m *fakeModel) blockRuns(t *testing.T) (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			m.mu.Lock()
			m.block = nil
			m.mu.Unlock()
			close(ch)
		})
	}
	m.mu.Lock()
	m.block = ch
	m.mu.Unlock()
	t.Cleanup(release)
	return release
}

func testInfo(sha string, maxBatch int) wire.Info {
	return wire.Info{Model: "fake", ModelSHA256: sha, Channels: 1, Height: 1, Width: 2,
		Classes: classes, MaxBatchSize: maxBatch, Labels: make([]string, classes)}
}

var discard = slog.New(slog.DiscardHandler)

// serve starts a ready server for model on path; stop shuts it down (also
// at cleanup) and is idempotent.
func serve(t *testing.T, path string, model server.Model, info wire.Info) (stop func()) {
	t.Helper()
	ln, err := server.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(model, server.Config{Info: info, Logger: discard})
	s.SetReady(true)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			s.Shutdown(context.Background())
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func socketPath(t *testing.T) string { return filepath.Join(t.TempDir(), "rt.sock") }

// connect runs a Conn for cfg until the test ends.
func connect(t *testing.T, cfg Config) *Conn {
	t.Helper()
	rc := New(cfg, discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); rc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return rc
}

// waitFor polls cond until it holds; the limit only keeps a broken build
// from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitConnected(t *testing.T, rc *Conn, sha string) *wire.Client {
	t.Helper()
	var c *wire.Client
	waitFor(t, "a connection to a runtime serving "+sha, func() bool {
		var info wire.Info
		c, info = rc.Current()
		return c != nil && info.ModelSHA256 == sha
	})
	return c
}

func newRunner(rc *Conn) *Runner { return NewRunner(rc, stats.New(metrics.NewSet(), stats.Gauges{})) }

func item(v float32, sha string) *Item {
	return &Item{Tensor: []float32{v, -v}, ModelSHA: sha, Submitted: time.Now()}
}

func run(r *Runner, items []*Item) ([]batching.Result[*Result], error) {
	results := make([]batching.Result[*Result], len(items))
	err := r.RunBatch(context.Background(), items, results)
	return results, err
}

// checkScores checks that res is item v's own result from a batch of size.
func checkScores(t *testing.T, i int, res batching.Result[*Result], v float32, size int) {
	t.Helper()
	if res.Err != nil {
		t.Errorf("item %d: error %v, want scores", i, res.Err)
		return
	}
	if want := []float32{v, -v, float32(size)}; !slices.Equal(res.Value.Scores, want) || res.Value.BatchSize != size {
		t.Errorf("item %d: scores %v in a batch of %d; want %v in a batch of %d", i, res.Value.Scores, res.Value.BatchSize, want, size)
	}
}

// TestSplit: a batch larger than the runtime's max batch size goes in
// chunks of at most that size, in order, and each item gets its own scores.
func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		max, n int
		chunks []int
	}{
		{max: 2, n: 5, chunks: []int{2, 2, 1}},
		{max: 2, n: 4, chunks: []int{2, 2}},
		{max: 4, n: 3, chunks: []int{3}},
		{max: 1, n: 3, chunks: []int{1, 1, 1}},
	} {
		path := socketPath(t)
		m := &fakeModel{}
		serve(t, path, m, testInfo("sha", tc.max))
		rc := connect(t, Config{Socket: path})
		waitConnected(t, rc, "sha")
		items := make([]*Item, tc.n)
		for i := range items {
			items[i] = item(float32(i+1), "sha")
		}
		results, err := run(newRunner(rc), items)
		if err != nil {
			t.Fatalf("max %d, %d items: RunBatch: %v", tc.max, tc.n, err)
		}
		if got := m.batchSizes(); !slices.Equal(got, tc.chunks) {
			t.Errorf("max %d, %d items: the runtime ran batches of %v, want %v", tc.max, tc.n, got, tc.chunks)
		}
		i := 0
		for _, size := range tc.chunks {
			for range size {
				checkScores(t, i, results[i], float32(i+1), size)
				i++
			}
		}
	}
}

// TestModelChanged: items prepared for another model than the runtime's
// fail with ErrModelChanged and are never sent; the rest run.
func TestModelChanged(t *testing.T) {
	path := socketPath(t)
	m := &fakeModel{}
	serve(t, path, m, testInfo("new", 2))
	rc := connect(t, Config{Socket: path})
	waitConnected(t, rc, "new")
	items := []*Item{item(1, "old"), item(2, "new"), item(3, "old"), item(4, "new"), item(5, "new")}
	results, err := run(newRunner(rc), items)
	if err != nil {
		t.Fatalf("RunBatch: %v", err)
	}
	for _, i := range []int{0, 2} {
		if !errors.Is(results[i].Err, ErrModelChanged) || results[i].Value != nil {
			t.Errorf("item %d (old model): result %v, error %v; want no result and ErrModelChanged", i, results[i].Value, results[i].Err)
		}
	}
	checkScores(t, 1, results[1], 2, 2)
	checkScores(t, 3, results[3], 4, 2)
	checkScores(t, 4, results[4], 5, 1)
	if got, want := m.batchSizes(), []int{2, 1}; !slices.Equal(got, want) {
		t.Errorf("the runtime ran batches of %v, want %v (the 3 items of the current model)", got, want)
	}
}

// TestBatchTimeout: a batch that runs past BatchTimeout fails with
// ErrUnavailable, its connection is closed and Run redials.
func TestBatchTimeout(t *testing.T) {
	path := socketPath(t)
	m := &fakeModel{}
	serve(t, path, m, testInfo("sha", 2))
	const timeout = 100 * time.Millisecond
	// StallAfter is far off: the batch timeout alone must act.
	rc := connect(t, Config{Socket: path, BatchTimeout: timeout, StallAfter: time.Hour, Heartbeat: 20 * time.Millisecond})
	old := waitConnected(t, rc, "sha")
	r := newRunner(rc)

	release := m.blockRuns(t)
	results, err := run(r, []*Item{item(1, "sha"), item(2, "sha")})
	if err != nil {
		t.Fatalf("RunBatch: %v", err)
	}
	for i, res := range results {
		if !errors.Is(res.Err, ErrUnavailable) || !strings.Contains(res.Err.Error(), "took over "+timeout.String()) {
			t.Errorf("item %d: error %v, want ErrUnavailable for a batch that took over %v", i, res.Err, timeout)
		}
	}
	select {
	case <-old.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the connection of the batch that timed out is still open")
	}
	waitFor(t, "a new connection", func() bool {
		c, _ := rc.Current()
		return c != nil && c != old
	})

	release()
	results, err = run(r, []*Item{item(3, "sha")})
	if err != nil {
		t.Fatalf("RunBatch after the redial: %v", err)
	}
	checkScores(t, 0, results[0], 3, 1)
}

// TestStall: a runtime whose executor makes no progress is stalled: OnStall
// is called, Current reports no client and the batch on the connection
// fails; no connection is kept while the runtime stays stuck, and Run
// reconnects once it makes progress again.
func TestStall(t *testing.T) {
	path := socketPath(t)
	m := &fakeModel{}
	serve(t, path, m, testInfo("sha", 2))
	stalls := make(chan struct{}, 100)
	rc := connect(t, Config{Socket: path, StallAfter: 100 * time.Millisecond, Heartbeat: 20 * time.Millisecond,
		HeartbeatTimeout: 5 * time.Second, BatchTimeout: time.Hour,
		OnStall: func() { stalls <- struct{}{} }})
	old := waitConnected(t, rc, "sha")
	r := newRunner(rc)

	release := m.blockRuns(t)
	type outcome struct {
		results []batching.Result[*Result]
		err     error
	}
	done := make(chan outcome, 1)
	go func() {
		results, err := run(r, []*Item{item(1, "sha")})
		done <- outcome{results, err}
	}()
	select {
	case <-stalls:
	case <-time.After(30 * time.Second):
		t.Fatal("OnStall was not called")
	}
	waitFor(t, "Current to report no client", func() bool { c, _ := rc.Current(); return c == nil })
	select {
	case <-old.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled connection is still open")
	}
	select {
	case o := <-done:
		if o.err != nil || !errors.Is(o.results[0].Err, ErrUnavailable) {
			t.Errorf("batch on the stalled runtime: RunBatch %v, item error %v; want ErrUnavailable", o.err, o.results[0].Err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the batch on the stalled runtime did not fail")
	}
	// Still stuck: each dial finds no progress and keeps no connection.
	for range 10 {
		if c, _ := rc.Current(); c != nil {
			t.Fatal("Current reports a client while the runtime is still stalled")
		}
		if _, err := run(r, []*Item{item(2, "sha")}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("RunBatch while stalled: %v, want ErrUnavailable", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	release()
	waitConnected(t, rc, "sha")
	results, err := run(r, []*Item{item(3, "sha")})
	if err != nil {
		t.Fatalf("RunBatch after recovery: %v", err)
	}
	checkScores(t, 0, results[0], 3, 1)
}

// TestRestart: when the runtime restarts on the same socket, Run notices the
// lost connection, reports no client, and redials the new runtime; items
// prepared for the old model then fail with ErrModelChanged.
func TestRestart(t *testing.T) {
	path := socketPath(t)
	stop := serve(t, path, &fakeModel{}, testInfo("one", 2))
	rc := connect(t, Config{Socket: path})
	old := waitConnected(t, rc, "one")
	r := newRunner(rc)
	if results, err := run(r, []*Item{item(1, "one")}); err != nil || results[0].Err != nil {
		t.Fatalf("RunBatch before the restart: %v, %v", err, results[0].Err)
	}

	stop()
	waitFor(t, "Current to report no client", func() bool { c, _ := rc.Current(); return c == nil })
	if _, err := run(r, []*Item{item(2, "one")}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("RunBatch while the runtime is down: %v, want ErrUnavailable", err)
	}

	serve(t, path, &fakeModel{}, testInfo("two", 2))
	if c := waitConnected(t, rc, "two"); c == old {
		t.Fatal("Current still reports the old client")
	}
	if info, ok := rc.LastInfo(); !ok || info.ModelSHA256 != "two" {
		t.Errorf("LastInfo = %+v, %v; want model two", info, ok)
	}
	results, err := run(r, []*Item{item(3, "one"), item(4, "two")})
	if err != nil {
		t.Fatalf("RunBatch after the restart: %v", err)
	}
	if !errors.Is(results[0].Err, ErrModelChanged) {
		t.Errorf("item for the old model: error %v, want ErrModelChanged", results[0].Err)
	}
	checkScores(t, 1, results[1], 4, 1)
}
