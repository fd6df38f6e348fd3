package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/server"
)

// switchModel wraps the real engine: it fails every batch while fail is
// set, and holds every batch while hold is open (closed: released). The
// runtime, its socket and the wire protocol stay real; only the model's
// failure is injected, since ONNX Runtime cannot fail on demand.
type switchModel struct {
	server.Model
	fail atomic.Bool
	mu   sync.Mutex
	hold chan struct{}
}

func (m *switchModel) Run(input []float32, n int) ([]float32, error) {
	m.mu.Lock()
	hold := m.hold
	m.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if m.fail.Load() {
		return nil, errors.New("injected model failure")
	}
	return m.Model.Run(input, n)
}

func (m *switchModel) setHold(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case on && m.hold == nil:
		m.hold = make(chan struct{})
	case !on && m.hold != nil:
		close(m.hold)
		m.hold = nil
	}
}

// startVersion starts a real runtime on the tiny model at dir/name.sock.
func startVersion(t *testing.T, dir, name string) *switchModel {
	t.Helper()
	eng, err := engine.Open(engine.Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: testenv.TinyModel(t)})
	if err != nil {
		t.Fatal(err)
	}
	sm := &switchModel{Model: eng}
	srv := server.New(sm, server.Config{Info: testRuntimeInfo(eng.Info(), 4), Logger: slog.New(slog.DiscardHandler)})
	srv.SetReady(true)
	ln, err := server.Listen(filepath.Join(dir, name+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		sm.setHold(false)
		srv.Shutdown(context.Background())
		eng.Close()
	})
	return sm
}

// routingProxy writes the routing file (%s in it is dir) and starts a proxy
// on it, polling every 20 ms.
func routingProxy(t *testing.T, dir, file string, opts ...func(*Config)) *testProxy {
	t.Helper()
	cfg := routingConfig(t, dir, file)
	for _, o := range opts {
		o(&cfg)
	}
	tp := startProxy(t, cfg)
	// /readyz turns green with one weighted version ready; the tests
	// want every version connected.
	waitFor(t, "every version ready", 3000, func() bool {
		return !strings.Contains(string(get(t, tp.url+"/v2/models/resnet50").raw), `"ready":false`)
	})
	return tp
}

// routingConfig writes the routing file (%s in it is dir) and returns the
// proxy's configuration for it, polling every 20 ms.
func routingConfig(t *testing.T, dir, file string) Config {
	t.Helper()
	path := filepath.Join(dir, "routing.yaml")
	writeRouting(t, path, dir, file)
	f, sum, err := routing.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return Config{Routing: f, RoutingFile: path, RoutingPoll: 20 * time.Millisecond, RoutingSHA256: sum,
		Batch: testConfig("").Batch}
}

func writeRouting(t *testing.T, path, dir, file string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.ReplaceAll(file, "%s", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// predictVersion sends /predict and returns the status and model_version.
func predictVersion(t *testing.T, url string, img []byte, header ...string) (int, string) {
	req := rawReq(url+"/predict", "image/png", img)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	r := do(t, req)
	v, _ := r.body["model_version"].(string)
	if r.status != 200 {
		t.Logf("status %d: %s", r.status, r.raw)
	}
	return r.status, v
}

// waitFor polls cond every 10 ms, at most n times.
func waitFor(t *testing.T, what string, n int, cond func() bool) {
	t.Helper()
	for range n {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: never happened", what)
}

const twoVersions = `
models:
  - name: resnet50
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 90}
      - {name: v2, socket: %s/v2.sock, weight: 10}
`

// TestVersionSplit: over 10,000 /predict requests the 90/10 split is within
// 2 percentage points; an explicit version is always honoured on /predict
// and OIP; /v2/models/{name} lists the versions; the per-version metrics
// carry the model and version labels.
func TestVersionSplit(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v2")
	tp := routingProxy(t, dir, twoVersions)
	img := testenv.Image(t, "small.png")

	const n, workers = 10000, 4
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			local := map[string]int{}
			for range n / workers {
				status, v := predictVersion(t, tp.url, img)
				if status != 200 {
					t.Errorf("worker %d: status %d", w, status)
					return
				}
				local[v]++
			}
			mu.Lock()
			for k, c := range local {
				counts[k] += c
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if got := 100 * float64(counts["v2"]) / n; math.Abs(got-10) > 2 || counts["v1"]+counts["v2"] != n {
		t.Errorf("split over %d requests: %v (v2 %.2f%%); want 10%% ± 2", n, counts, got)
	}
	t.Logf("split over %d requests: v1 %d (%.2f%%), v2 %d (%.2f%%)", n, counts["v1"], 100*float64(counts["v1"])/n,
		counts["v2"], 100*float64(counts["v2"])/n)

	for i := range 50 {
		if status, v := predictVersion(t, tp.url, testenv.UniquePNG(i), "X-Model-Version", "v2"); status != 200 || v != "v2" {
			t.Fatalf("X-Model-Version v2: %d from %q", status, v)
		}
	}
	if status, _ := predictVersion(t, tp.url, img, "X-Model-Version", "v9"); status != 404 {
		t.Errorf("unknown X-Model-Version: %d, want 404", status)
	}
	body := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}],
		"outputs":[{"name":"classification","parameters":{"classification":1}}]}`, base64.StdEncoding.EncodeToString(testenv.UniquePNG(99)))
	for range 20 {
		r := do(t, rawReq(tp.url+"/v2/models/resnet50/versions/v2/infer", "application/json", []byte(body)))
		if r.status != 200 || r.body["model_version"] != "v2" {
			t.Fatalf("OIP versions/v2/infer: %d %s", r.status, r.raw)
		}
	}
	if r := do(t, rawReq(tp.url+"/v2/models/resnet50/versions/v7/infer", "application/json", []byte(body))); r.status != 404 {
		t.Errorf("OIP unknown version: %d %s", r.status, r.raw)
	}
	meta := get(t, tp.url+"/v2/models/resnet50")
	if vs, _ := meta.body["versions"].([]any); len(vs) != 2 || vs[0] != "v1" || vs[1] != "v2" {
		t.Errorf("/v2/models/resnet50 versions: %s", meta.raw)
	}
	if !strings.Contains(string(meta.raw), `"name":"v2","ready":true,"weight":10`) {
		t.Errorf("/v2/models/resnet50 parameters.versions: %s", meta.raw)
	}
	if r := get(t, tp.url+"/v2/models/resnet50/versions/v2/ready"); r.status != 200 {
		t.Errorf("versions/v2/ready: %d", r.status)
	}
	for _, series := range []string{
		`inference_version_requests_total{model="resnet50",version="v1",code="200"}`,
		`inference_version_requests_total{model="resnet50",version="v2",code="200"}`,
		`inference_version_latency_seconds_bucket{model="resnet50",version="v2",le="+Inf"}`,
		`inference_version_batch_size_count{model="resnet50",version="v1"}`,
		`inference_version_queue_depth{model="resnet50",version="v1"}`,
		`inference_version_weight{model="resnet50",version="v2"}`,
		`inference_version_runtime_connected{model="resnet50",version="v2"}`,
	} {
		if !bytes.Contains(get(t, tp.metricsURL+"/metrics").raw, []byte(series+" ")) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if v := metricValue(t, tp.metricsURL, `inference_version_requests_total{model="resnet50",version="v2",code="200"}`); v < float64(counts["v2"]) {
		t.Errorf("v2's requests_total %v < %d answered", v, counts["v2"])
	}
}

// TestVersionSticky: a sticky key keeps its version while the weights are
// unchanged, and distinct keys still split.
func TestVersionSticky(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v2")
	tp := routingProxy(t, dir, `
models:
  - name: resnet50
    sticky: {header: X-User-Id, salt: s1}
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 50}
      - {name: v2, socket: %s/v2.sock, weight: 50}
`)
	img := testenv.Image(t, "small.png")
	seen := map[string]string{}
	per := map[string]int{}
	for round := range 3 {
		for u := range 100 {
			user := fmt.Sprintf("user-%d", u)
			status, v := predictVersion(t, tp.url, img, "X-User-Id", user)
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			if round == 0 {
				seen[user] = v
				per[v]++
			} else if seen[user] != v {
				t.Fatalf("round %d: %s moved from %s to %s with the weights unchanged", round, user, seen[user], v)
			}
		}
	}
	if per["v1"] < 30 || per["v2"] < 30 {
		t.Errorf("100 sticky users split %v; want about 50/50", per)
	}
}

// TestShadow: mirrored requests' answers never reach clients; they are
// compared with the primary's; with the shadow stuck, shadow work is shed
// at max_queue and the primary keeps answering; shadow items are not in
// inference_queue_depth.
// shadowRouting serves v1 and mirrors all of its traffic to v3.
const shadowRouting = `
models:
  - name: resnet50
    shadow: {version: v3, percent: 100, max_queue: 2}
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 1}
      - {name: v3, socket: %s/v3.sock, weight: 0}
`

func TestShadow(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	shadow := startVersion(t, dir, "v3")
	tp := routingProxy(t, dir, shadowRouting)
	shed := `inference_shadow_requests_total{model="resnet50",version="v3",outcome="shed"}`
	for i := range 20 {
		if status, v := predictVersion(t, tp.url, testenv.UniquePNG(i)); status != 200 || v != "v1" {
			t.Fatalf("request %d: %d from %q; only v1 may answer", i, status, v)
		}
	}
	// Same model on both: every comparison agrees. A copy finding two
	// shadows still running is shed (a loaded machine can lag so), but
	// every copy has an outcome, and none disagrees or fails.
	outcome := func(o string) float64 {
		return metricValue(t, tp.metricsURL, `inference_shadow_requests_total{model="resnet50",version="v3",outcome="`+o+`"}`)
	}
	waitFor(t, "20 shadow outcomes", 500, func() bool {
		return outcome("agree")+outcome("shed")+outcome("disagree")+outcome("error") == 20
	})
	if a, d, e := outcome("agree"), outcome("disagree"), outcome("error"); a == 0 || d != 0 || e != 0 {
		t.Errorf("shadow outcomes: %v agree, %v disagree, %v errors; want only agreements (and sheds)", a, d, e)
	}

	// Overload: the shadow's runtime holds every batch. Primary requests
	// still answer at once; shadow work beyond max_queue is shed.
	shadow.setHold(true)
	for i := range 30 {
		if status, v := predictVersion(t, tp.url, testenv.UniquePNG(100+i)); status != 200 || v != "v1" {
			t.Fatalf("overload request %d: %d from %q", i, status, v)
		}
	}
	if s := metricValue(t, tp.metricsURL, shed); s < 28 {
		t.Errorf("shed %v shadow items with max_queue 2; want at least 28 of 30", s)
	}
	if d := metricValue(t, tp.metricsURL, "inference_queue_depth"); d != 0 {
		t.Errorf("inference_queue_depth %v with only shadow work queued; want 0", d)
	}
	if d := metricValue(t, tp.metricsURL, `inference_version_shadow_queue_depth{model="resnet50",version="v3"}`); d != 2 {
		t.Errorf("shadow queue depth %v, want 2", d)
	}
	shadow.setHold(false)
}

// TestRollback: a canary whose runtime starts failing is rolled back (weight
// 0, logged, counted), all traffic returns to v1, and a change to the
// routing file brings it back.
func TestRollback(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	canary := startVersion(t, dir, "v2")
	file := `
models:
  - name: resnet50
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 50}
      - name: v2
        socket: %s/v2.sock
        weight: 50
        rollback: {window: 1m, min_requests: 10, max_error_rate: 0.2}
`
	tp := routingProxy(t, dir, file)
	canary.fail.Store(true)
	failures := 0
	for i := range 200 {
		status, _ := predictVersion(t, tp.url, testenv.UniquePNG(i))
		if status != 200 {
			failures++
		}
		if metricValue(t, tp.metricsURL, `inference_version_rolled_back{model="resnet50",version="v2"}`) == 1 {
			break
		}
	}
	if metricValue(t, tp.metricsURL, `inference_rollbacks_total{model="resnet50",version="v2"}`) != 1 {
		t.Fatalf("no rollback after %d failures", failures)
	}
	t.Logf("rolled back after %d failed requests", failures)
	if !strings.Contains(tp.log.String(), "version rolled back") {
		t.Error("the rollback is not logged")
	}
	for i := range 50 {
		if status, v := predictVersion(t, tp.url, testenv.UniquePNG(1000+i)); status != 200 || v != "v1" {
			t.Fatalf("after the rollback: %d from %q", status, v)
		}
	}
	if r := get(t, tp.url+"/v2/models/resnet50"); !strings.Contains(string(r.raw), `"name":"v2","ready":true,"weight":0,"rolled_back":true`) {
		t.Errorf("metadata after the rollback: %s", r.raw)
	}
	// An explicit request still reaches it (and fails: it is broken).
	if status, _ := predictVersion(t, tp.url, testenv.UniquePNG(5000), "X-Model-Version", "v2"); status != 500 {
		t.Errorf("explicit v2 after the rollback: %d, want its failure", status)
	}
	// Fixed and re-announced: the model's entry changes, v2 is back.
	canary.fail.Store(false)
	writeRouting(t, filepath.Join(dir, "routing.yaml"), dir, strings.Replace(file, "weight: 50\n        rollback", "weight: 40\n        rollback", 1))
	waitFor(t, "v2 back after the reload", 500, func() bool {
		return metricValue(t, tp.metricsURL, `inference_version_weight{model="resnet50",version="v2"}`) == 40
	})
}

// TestReloadUnderLoad: while clients send requests, the routing file adds a
// version, removes the first, and then turns invalid: no request fails,
// requests follow the new versions, and the invalid file is rejected with
// the last good routing kept.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v2")
	path := filepath.Join(dir, "routing.yaml")
	tp := routingProxy(t, dir, `
models:
  - name: resnet50
    versions: [{name: v1, socket: %s/v1.sock, weight: 1}]
`)
	var (
		stop   atomic.Bool
		sent   atomic.Int64
		mu     sync.Mutex
		served = map[string]int{}
		wg     sync.WaitGroup
	)
	for w := range 3 {
		wg.Go(func() {
			for i := 0; i < 3000 && !stop.Load(); i++ { // bounded
				status, v := predictVersion(t, tp.url, testenv.UniquePNG(w*10000+i))
				sent.Add(1)
				if status != 200 {
					t.Errorf("a request failed during the reloads: %d", status)
					return
				}
				mu.Lock()
				served[v]++
				mu.Unlock()
			}
		})
	}
	gen := func() float64 { return metricValue(t, tp.metricsURL, "inference_routing_generation") }
	step := func(what, file string, wantGen float64) {
		before := sent.Load()
		writeRouting(t, path, dir, file)
		waitFor(t, what, 1000, func() bool { return gen() == wantGen })
		waitFor(t, what+": requests after it", 1000, func() bool { return sent.Load() > before+30 })
	}
	step("add v2", `
models:
  - name: resnet50
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 1}
      - {name: v2, socket: %s/v2.sock, weight: 1}
`, 2)
	step("remove v1", `
models:
  - name: resnet50
    versions: [{name: v2, socket: %s/v2.sock, weight: 1}]
`, 3)
	mu.Lock()
	atV2 := served["v2"]
	mu.Unlock()
	writeRouting(t, path, dir, "models: [{name: resnet50, versions: [{name: v3, weight: 1}]}]\n")
	waitFor(t, "the bad file rejected", 1000, func() bool {
		return metricValue(t, tp.metricsURL, `inference_routing_reloads_total{result="rejected"}`) == 1
	})
	before := sent.Load()
	waitFor(t, "requests after the bad file", 1000, func() bool { return sent.Load() > before+30 })
	stop.Store(true)
	wg.Wait()
	if gen() != 3 {
		t.Errorf("generation %v after the bad file; want 3 (kept)", gen())
	}
	mu.Lock()
	defer mu.Unlock()
	if served["v2"] <= atV2 || served["v1"] == 0 {
		t.Errorf("served %v; want v2 serving after v1's removal", served)
	}
	if !strings.Contains(tp.log.String(), "socket is required") {
		t.Error("the rejection's reason is not logged")
	}
	t.Logf("%d requests during three reloads, all answered: %v", sent.Load(), served)
	// v1 was retired: its series are gone.
	if bytes.Contains(get(t, tp.metricsURL+"/metrics").raw, []byte(`version="v1"`)) {
		t.Error("the retired version's series are still exported")
	}
}

// TestCanaryNeverTakesPrimaryShare: while the 90% version is still starting
// (its runtime not up), the model is not ready and its traffic gets 503,
// never the 10% canary's answer; a canary that never comes up blocks
// nothing.
func TestCanaryNeverTakesPrimaryShare(t *testing.T) {
	t.Run("primary starting", func(t *testing.T) {
		dir := t.TempDir()
		startVersion(t, dir, "v2") // the canary only
		tp := startProxyNoWait(t, routingConfig(t, dir, twoVersions))
		waitFor(t, "the canary connected", 3000, func() bool {
			return strings.Contains(string(get(t, tp.url+"/v2/models/resnet50").raw), `"name":"v2","ready":true`)
		})
		if r := get(t, tp.url+"/readyz"); r.status != 503 {
			t.Errorf("/readyz with only the 10%% canary ready: %d, want 503", r.status)
		}
		img := testenv.Image(t, "small.png")
		for i := range 20 {
			if status, v := predictVersion(t, tp.url, img); status != 503 {
				t.Fatalf("request %d with the primary down: %d from %q, want 503", i, status, v)
			}
		}
		startVersion(t, dir, "v1")
		tp.waitReady(t, true)
		if status, _ := predictVersion(t, tp.url, img); status != 200 {
			t.Errorf("once the primary is up: %d, want 200", status)
		}
	})
	t.Run("canary down", func(t *testing.T) {
		dir := t.TempDir()
		startVersion(t, dir, "v1") // the canary (v2) never starts
		tp := startProxy(t, routingConfig(t, dir, twoVersions))
		for i := range 20 {
			if status, v := predictVersion(t, tp.url, testenv.UniquePNG(i)); status != 200 || v != "v1" {
				t.Fatalf("request %d with the canary down: %d from %q, want 200 from v1", i, status, v)
			}
		}
	})
}
