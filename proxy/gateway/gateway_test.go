package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/server"
	"github.com/batchgate/batchgate/runtime/wire"
)

// rtServer is a real runtime (ONNX Runtime, unix socket) in the test process.
type rtServer struct {
	*server.Server
	socket string
}

// testRuntimeInfo is the handshake of a test runtime serving the model mi.
func testRuntimeInfo(mi engine.Info, maxBatch int) wire.Info {
	labels := make([]string, mi.Classes)
	for i := range labels {
		labels[i] = "label" + strconv.Itoa(i)
	}
	return wire.Info{
		Model: "resnet50", ModelSHA256: mi.SHA256, InputName: mi.InputName, OutputName: mi.OutputName,
		Channels: mi.Channels, Height: mi.Height, Width: mi.Width, ResizeShorter: 256,
		Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225},
		Classes: mi.Classes, Labels: labels, MaxBatchSize: maxBatch, Generated: true, Variant: mi.Variant,
	}
}

func startRuntime(t testing.TB, model string, maxBatch int, socket string) *rtServer {
	t.Helper()
	eng, err := engine.Open(engine.Config{LibraryPath: testenv.ORTLibrary(t), ModelPath: model})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(eng, server.Config{Info: testRuntimeInfo(eng.Info(), maxBatch), Logger: slog.New(slog.DiscardHandler)})
	srv.SetReady(true)
	if socket == "" {
		socket = filepath.Join(t.TempDir(), "rt.sock")
	}
	ln, err := server.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		eng.Close()
	})
	return &rtServer{Server: srv, socket: socket}
}

// testProxy is a real proxy on a loopback port.
type testProxy struct {
	*Proxy
	url        string
	metricsURL string // the metrics port's
	log        *testenv.SyncBuffer
}

// testConfig is the defaults, with the runtime at socket and no drain delay.
func testConfig(socket string) Config { return Config{Socket: socket} }

func startProxy(t testing.TB, cfg Config) *testProxy {
	t.Helper()
	tp := startProxyNoWait(t, cfg)
	tp.waitReady(t, true)
	return tp
}

// startProxyNoWait starts the proxy without waiting for it to be ready.
func startProxyNoWait(t testing.TB, cfg Config) *testProxy {
	t.Helper()
	if cfg.DrainDelay == 0 {
		cfg.DrainDelay = -1 // tests drain at once unless they ask for a delay
	}
	logBuf := &testenv.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})) // fasthttp's own messages too
	p := New(cfg, log, metrics.NewSet())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	go p.ServeMetrics(mln)
	tp := &testProxy{Proxy: p, url: "http://" + ln.Addr().String(), metricsURL: "http://" + mln.Addr().String(), log: logBuf}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return tp
}

// waitReady polls /readyz until it answers as wanted (bounded: 60 s).
func (tp *testProxy) waitReady(t testing.TB, want bool) {
	t.Helper()
	for range 1200 {
		resp, err := http.Get(tp.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if (resp.StatusCode == 200) == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/readyz never became ready=%v", want)
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

// do sends req. It may run on any goroutine: failures are reported with
// t.Errorf (never t.Fatal) and give a zero status.
func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL.Path, err)
		return response{}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Errorf("response is not JSON: %v: %s", err, raw)
		}
	}
	return r
}

func multipartReq(t *testing.T, url, field string, data []byte) *http.Request {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile(field, "photo")
	fw.Write(data)
	mw.Close()
	req, _ := http.NewRequest("POST", url, &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return req
}

func rawReq(url, contentType string, data []byte) *http.Request {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(data))
	req.Header.Set("Content-Type", contentType)
	return req
}

func get(t *testing.T, url string) response {
	req, _ := http.NewRequest("GET", url, nil)
	return do(t, req)
}

// metricValue reads a series on /metrics: name with its labels, or a bare
// name for the sum of its series whatever their labels. A series /metrics
// lacks fails the test (at once: call it on the test's goroutine).
func metricValue(t *testing.T, url, name string) float64 {
	t.Helper()
	m := testenv.MustParseMetrics(t, get(t, url+"/metrics").raw)
	if _, ok := m.Lookup(name); ok || strings.Contains(name, "{") {
		return m.Value(t, name)
	}
	return m.Sum(t, name, "")
}

// waitIdle waits (at most 10 s) until the proxy holds no upload, no
// decode and no queued or running item: whatever a request left behind
// has reached the runtime or been dropped.
func waitIdle(t *testing.T, tp *testProxy) {
	t.Helper()
	waitFor(t, "the proxy idle", 1000, func() bool {
		return metricValue(t, tp.metricsURL, "inference_upload_bytes_reserved") == 0 &&
			metricValue(t, tp.metricsURL, "inference_decode_bytes_reserved") == 0 &&
			metricValue(t, tp.metricsURL, "inference_queue_depth") == 0
	})
}

func TestPredictFormats(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	for _, name := range []string{"grace_hopper.jpg", "small.png", "small.gif", "small.webp", "small_alpha.png"} {
		data := testenv.Image(t, name)
		for _, req := range []*http.Request{
			multipartReq(t, tp.url+"/predict?top_k=3", "file", data),
			rawReq(tp.url+"/predict?top_k=3", "image/anything", data),
		} {
			r := do(t, req)
			if r.status != 200 {
				t.Fatalf("%s: status %d: %s", name, r.status, r.raw)
			}
			preds, _ := r.body["predictions"].([]any)
			if len(preds) != 3 || r.body["model"] != "resnet50" || r.body["generated_weights"] != true {
				t.Fatalf("%s: body %s", name, r.raw)
			}
			p0 := preds[0].(map[string]any)
			if p0["label"] != "label"+strconv.Itoa(int(p0["class_id"].(float64))) || p0["probability"].(float64) <= 0 {
				t.Errorf("%s: first prediction %v", name, p0)
			}
			if r.header.Get("X-Request-Id") == "" {
				t.Errorf("%s: no X-Request-Id", name)
			}
		}
	}
	// The per-request log line is JSON with the request id.
	req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1))
	req.Header.Set("X-Request-Id", "abc-123")
	if r := do(t, req); r.header.Get("X-Request-Id") != "abc-123" {
		t.Errorf("X-Request-Id echoed as %q", r.header.Get("X-Request-Id"))
	}
	if !strings.Contains(tp.log.String(), `"request_id":"abc-123","method":"POST","route":"/predict","status":200`) {
		t.Errorf("no request log line for abc-123 in:\n%s", tp.log.String())
	}
}

func TestOtherEndpoints(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	for _, tc := range []struct {
		path   string
		status int
		check  func(response) bool
	}{
		{"/healthz", 200, func(r response) bool { return r.body["live"] == true }},
		{"/readyz", 200, func(r response) bool { return r.body["ready"] == true }},
		{"/v2", 200, func(r response) bool { return r.body["name"] == "batchgate" }},
		{"/v2/health/live", 200, nil},
		{"/v2/health/ready", 200, nil},
		{"/v2/models/resnet50", 200, func(r response) bool { return len(r.body["inputs"].([]any)) == 2 }},
		{"/v2/models/resnet50/versions/1", 200, nil},
		{"/v2/models/resnet50/ready", 200, func(r response) bool { return r.body["ready"] == true }},
		{"/v2/models/other", 404, func(r response) bool { return r.body["error"] != nil }},
		{"/nope", 404, func(r response) bool { return r.body["error"] != nil }},
		{"/docs", 200, func(r response) bool { return bytes.Contains(r.raw, []byte("/openapi.json")) }},
		{"/openapi.json", 200, func(r response) bool { return r.body["openapi"] == "3.0.3" }},
		{"/metrics", 404, func(r response) bool { return bytes.Contains(r.raw, []byte("METRICS_PORT")) }},
	} {
		r := get(t, tp.url+tc.path)
		if r.status != tc.status || (tc.check != nil && !tc.check(r)) {
			t.Errorf("GET %s = %d %s", tc.path, r.status, r.raw)
		}
	}
	// The metrics port serves /metrics and nothing else.
	for _, tc := range []struct {
		path   string
		status int
		want   string
	}{
		{"/metrics", 200, "inference_queue_depth 0"},
		{"/metrics", 200, "go_goroutines"},
		{"/predict", 404, "only /metrics"},
		{"/healthz", 404, "only /metrics"},
	} {
		r := get(t, tp.metricsURL+tc.path)
		if r.status != tc.status || !bytes.Contains(r.raw, []byte(tc.want)) {
			t.Errorf("GET metrics port %s = %d %.200s, want %d with %q", tc.path, r.status, r.raw, tc.status, tc.want)
		}
	}
}

func TestV2Infer(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	url := tp.url + "/v2/models/resnet50/infer"

	// Reference scores through /predict's path: the BYTES input must
	// agree with it.
	want := do(t, rawReq(tp.url+"/predict?top_k=1", "image/jpeg", jpeg)).body["predictions"].([]any)[0].(map[string]any)

	b64 := base64.StdEncoding.EncodeToString(jpeg)
	jsonReq := fmt.Sprintf(`{"id":"r1","inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":[%q,{"b64":%q}]}],
		"outputs":[{"name":"classification","parameters":{"classification":2}}]}`, b64, b64)
	r := do(t, rawReq(url, "application/json", []byte(jsonReq)))
	if r.status != 200 || r.body["id"] != "r1" {
		t.Fatalf("BYTES JSON infer = %d %s", r.status, r.raw)
	}
	out := r.body["outputs"].([]any)[0].(map[string]any)
	data := out["data"].([]any)
	wantPrefix := fmt.Sprintf(":%d:label%d", int(want["class_id"].(float64)), int(want["class_id"].(float64)))
	if out["datatype"] != "BYTES" || len(data) != 4 || !strings.Contains(data[0].(string), wantPrefix) || data[0] != data[2] {
		t.Errorf("classification output = %v, want 2x2 strings led by %q", out, wantPrefix)
	}

	// Binary-data extension: JSON header, then <u32 LE length><jpeg>.
	header := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}]}`, 4+len(jpeg))
	body := append([]byte(header), binary.LittleEndian.AppendUint32(nil, uint32(len(jpeg)))...)
	body = append(body, jpeg...)
	req := rawReq(url, "application/octet-stream", body)
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	r = do(t, req)
	if r.status != 200 {
		t.Fatalf("binary infer = %d %s", r.status, r.raw)
	}
	out = r.body["outputs"].([]any)[0].(map[string]any)
	if out["datatype"] != "FP32" || len(out["data"].([]any)) != 1000 {
		t.Errorf("binary infer output: datatype %v, %d values", out["datatype"], len(out["data"].([]any)))
	}

	// A preprocessed FP32 tensor, as JSON.
	tensor := make([]float32, 3*224*224)
	for i := range tensor {
		tensor[i] = float32(math.Sin(float64(i)))
	}
	tj, _ := json.Marshal(tensor)
	r = do(t, rawReq(url, "application/json", []byte(`{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","data":`+string(tj)+`}]}`)))
	if r.status != 200 || len(r.body["outputs"].([]any)[0].(map[string]any)["data"].([]any)) != 1000 {
		t.Errorf("FP32 infer = %d %.300s", r.status, r.raw)
	}
}

// TestBadInput sends each class of bad input and checks the status, the
// JSON error, and that the server still serves.
func TestBadInput(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.MaxBodyBytes, cfg.MaxPixels = 700_000, 1_000_000
	tp := startProxy(t, cfg)
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	big := image.NewGray(image.Rect(0, 0, 1100, 1000)) // 1.1 M pixels, a small file
	var bigPNG bytes.Buffer
	png.Encode(&bigPNG, big)
	nanTensor := make([]byte, 4*3*224*224)
	binary.LittleEndian.PutUint32(nanTensor[40:], math.Float32bits(float32(math.NaN())))
	nanHeader := `{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","parameters":{"binary_data_size":602112}}]}`
	nanReq := rawReq(tp.url+"/v2/models/resnet50/infer", "application/octet-stream", append([]byte(nanHeader), nanTensor...))
	nanReq.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(nanHeader)))
	// Cut inside a Huffman table: libjpeg fails in the header.
	cutInHeader := jpeg[:bytes.Index(jpeg, []byte{0xff, 0xc4})+10]
	badTimeout := rawReq(tp.url+"/predict", "image/jpeg", jpeg)
	badTimeout.Header.Set("X-Request-Timeout-Ms", "soon")
	infer := tp.url + "/v2/models/resnet50/infer"

	for n, tc := range []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"not an image", rawReq(tp.url+"/predict", "image/jpeg", []byte("hello")), 415},
		{"truncated jpeg", rawReq(tp.url+"/predict", "image/jpeg", jpeg[:len(jpeg)/3]), 400},
		{"jpeg cut in its header", rawReq(tp.url+"/predict", "image/jpeg", cutInHeader), 400},
		{"wrong content type", rawReq(tp.url+"/predict", "text/plain", jpeg), 415},
		{"missing file field", multipartReq(t, tp.url+"/predict", "image", jpeg), 400},
		{"body too large", rawReq(tp.url+"/predict", "image/jpeg", make([]byte, 750_000)), 413},
		{"body far too large", rawReq(tp.url+"/predict", "image/jpeg", make([]byte, 3_000_000)), 413},
		{"too many pixels", rawReq(tp.url+"/predict", "image/png", bigPNG.Bytes()), 413},
		{"top_k zero", rawReq(tp.url+"/predict?top_k=0", "image/jpeg", jpeg), 400},
		{"top_k text", rawReq(tp.url+"/predict?top_k=abc", "image/jpeg", jpeg), 400},
		{"top_k above classes", rawReq(tp.url+"/predict?top_k=1001", "image/jpeg", jpeg), 400},
		{"bad timeout header", badTimeout, 400},
		{"GET predict", func() *http.Request { r, _ := http.NewRequest("GET", tp.url+"/predict", nil); return r }(), 405},
		{"v2 not JSON", rawReq(infer, "application/json", []byte("{")), 400},
		{"v2 no inputs", rawReq(infer, "application/json", []byte(`{"inputs":[]}`)), 400},
		{"v2 bad datatype", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}`)), 400},
		{"v2 bad base64", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["***"]}]}`)), 400},
		{"v2 shape mismatch", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","data":["aGk="]}]}`)), 400},
		{"v2 FP32 wrong shape", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[1,2,3]}]}`)), 400},
		{"v2 FP32 NaN", nanReq, 400},
		{"v2 bad classification", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"classification","parameters":{"classification":0}}]}`)), 400},
		{"v2 unknown output", rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"what"}]}`)), 400},
	} {
		r := do(t, tc.req)
		if r.status != tc.status || r.body["error"] == nil || r.body["error"] == "" {
			t.Errorf("%s: %d %s; want %d with a JSON error", tc.name, r.status, r.raw, tc.status)
		}
		if ok := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(7))); ok.status != 200 {
			t.Fatalf("after %s, a good request got %d", tc.name, ok.status)
		}
		// A JPEG the cache has not seen, so that it is decoded.
		for i := range 2 {
			if ok := do(t, rawReq(tp.url+"/predict", "image/jpeg", testenv.UniqueJPEG(2*n+i))); ok.status != 200 {
				t.Fatalf("after %s, a good JPEG got %d %s", tc.name, ok.status, ok.raw)
			}
		}
	}
	if got := metricValue(t, tp.metricsURL, "inference_rejections_total"); got < 15 {
		t.Errorf("inference_rejections_total = %v, want the rejections counted", got)
	}
}

// TestCacheAndCoalescing runs the ResNet50-architecture model: slow enough
// that identical concurrent requests overlap.
func TestCacheAndCoalescing(t *testing.T) {
	rt := startRuntime(t, testenv.ResNet50Model(t), 4, "")
	tp := startProxy(t, testConfig(rt.socket))
	img := testenv.UniquePNG(42)
	const n = 8
	before := rt.Stats().Items
	results := make([]response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = do(t, rawReq(tp.url+"/predict", "image/png", img)) })
	}
	wg.Wait()
	if got := rt.Stats().Items - before; got != 1 {
		t.Fatalf("%d identical concurrent requests ran %d inferences, want 1", n, got)
	}
	first := string(mustJSON(results[0].body["predictions"]))
	shared := 0
	for i, r := range results {
		if r.status != 200 || string(mustJSON(r.body["predictions"])) != first {
			t.Fatalf("request %d: %d %s", i, r.status, r.raw)
		}
		if r.body["coalesced"] == true || r.body["cached"] == true {
			shared++
		}
	}
	if shared != n-1 {
		t.Errorf("%d responses say cached or coalesced, want %d", shared, n-1)
	}
	hits, coalesced := metricValue(t, tp.metricsURL, "inference_cache_hits_total"), metricValue(t, tp.metricsURL, "inference_cache_coalesced_total")
	if hits+coalesced != n-1 {
		t.Errorf("metrics: %v hits + %v coalesced, want %d", hits, coalesced, n-1)
	}
	// The requests overlap (a ResNet50 inference takes ~50 ms): most must
	// have joined the one in flight rather than found it cached.
	if coalesced == 0 {
		t.Errorf("no request was coalesced (%v cache hits): coalescing did not happen", hits)
	}

	// A cache hit: same answer, no inference.
	r := do(t, rawReq(tp.url+"/predict", "image/png", img))
	if r.body["cached"] != true || rt.Stats().Items-before != 1 || string(mustJSON(r.body["predictions"])) != first {
		t.Errorf("repeat: cached=%v, inferences %d", r.body["cached"], rt.Stats().Items-before)
	}
	// Cache-Control: no-cache runs the model again.
	req := rawReq(tp.url+"/predict", "image/png", img)
	req.Header.Set("Cache-Control", "no-cache")
	if r := do(t, req); r.body["cached"] != false || rt.Stats().Items-before != 2 {
		t.Errorf("no-cache: cached=%v, inferences %d; want a fresh inference", r.body["cached"], rt.Stats().Items-before)
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func TestBatchesUnderLoad(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.Batch.Window = 50 * time.Millisecond
	tp := startProxy(t, cfg)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1000+i))); r.status != 200 {
				t.Errorf("status %d %s", r.status, r.raw)
			}
		})
	}
	wg.Wait()
	count := metricValue(t, tp.metricsURL, "inference_batch_size_count")
	sum := metricValue(t, tp.metricsURL, "inference_batch_size_sum")
	st := rt.Stats()
	if sum != 24 || count >= 24 || st.Items != 24 || st.Batches >= 24 {
		t.Errorf("24 requests: %v items in %v batches (metrics), %d in %d (runtime); want batches > 1", sum, count, st.Items, st.Batches)
	}
	t.Logf("mean batch size %.2f", sum/count)
}

// TestDecodeOverload floods decoding: requests beyond the decode queue get
// 429 at once instead of waiting for their deadline.
func TestDecodeOverload(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	// A roomy batch queue and a decode queue of 2, no bound per client:
	// what rejects must be the decode limit.
	cfg.Batch.QueueCapacity, cfg.DecodeQueue, cfg.ImagesPerClient = 64, 2, -1
	// 24 uploads of 3 MB from one address: no bound on its uploads at
	// once or its share of the upload memory either.
	cfg.UploadsPerClient, cfg.UploadMemoryPerClient = -1, -1
	// Full-size decodes of a 3 MP photo of noise (tens of ms each, not
	// a few): 24 requests at once always find the two places taken,
	// with or without the race detector slowing the clients. (The
	// committed 512x600 photo decoded too fast without it: all 24 passed
	// one at a time often enough to fail the test.)
	cfg.FullSizeJPEG = true
	tp := startProxy(t, cfg)
	big := noiseJPEG(t, 2000, 1500)
	const n = 24
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Bytes after the end-of-image marker make each body distinct
			// (no coalescing) without changing the picture.
			body := append(append([]byte(nil), big...), fmt.Sprintf("trailer %d", i)...)
			r := do(t, rawReq(tp.url+"/predict", "image/jpeg", body))
			statuses[i] = r.status
			if r.status == 429 && r.header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		})
	}
	wg.Wait()
	count := map[int]int{}
	for _, s := range statuses {
		count[s]++
	}
	if count[429] == 0 || count[200] == 0 || count[200]+count[429] != n {
		t.Errorf("statuses %v: want some 200 and some 429, nothing else", count)
	}
	decode := metricValue(t, tp.metricsURL, `inference_rejections_total{reason="decode_queue_full"}`)
	batch := metricValue(t, tp.metricsURL, `inference_rejections_total{reason="queue_full"}`)
	if decode != float64(count[429]) || batch != 0 {
		t.Errorf("rejections: %v decode_queue_full, %v queue_full; want all %d from the decode queue (all reasons: %v)", decode, batch, count[429],
			metricValue(t, tp.metricsURL, "inference_rejections_total"))
	}
}

func TestDeadlineAndQueueFull(t *testing.T) {
	rt := startRuntime(t, testenv.ResNet50Model(t), 1, "")
	cfg := testConfig(rt.socket)
	cfg.Batch.MaxBatchSize, cfg.Batch.QueueCapacity = 1, 1
	tp := startProxy(t, cfg)

	// A deadline shorter than decoding: 504, and nothing reaches the runtime.
	before := rt.Stats().Items
	req := rawReq(tp.url+"/predict", "image/jpeg", testenv.Image(t, "grace_hopper.jpg"))
	req.Header.Set("X-Request-Timeout-Ms", "1")
	if r := do(t, req); r.status != 504 || r.body["error"] == nil {
		t.Errorf("1ms deadline: %d %s, want 504", r.status, r.raw)
	}
	// Once the proxy is idle, a wrongly surviving inference has reached
	// the runtime; a request after it (the runtime runs batches in order)
	// is then the only one counted.
	waitIdle(t, tp)
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1999))); r.status != 200 {
		t.Fatalf("the request after the expired one: %d %s", r.status, r.raw)
	}
	if got := rt.Stats().Items - before; got != 1 {
		t.Errorf("an expired request reached the runtime: %d inferences, want 1 (the request sent after it)", got)
	}

	// One running and one queued (~53 ms each): the others get 429.
	const n = 8
	results := make([]response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(2000+i))) })
	}
	wg.Wait()
	full := 0
	for _, r := range results {
		switch r.status {
		case 200:
		case 429:
			full++
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || r.body["error"] == nil {
				t.Errorf("429 with Retry-After %q, body %s", r.header.Get("Retry-After"), r.raw)
			}
		default:
			t.Errorf("status %d %s", r.status, r.raw)
		}
	}
	if full == 0 {
		t.Errorf("no 429 from %d concurrent requests on a queue of 1", n)
	}
}

// TestRuntimeRestart kills the runtime process with SIGKILL and restarts it.
func TestRuntimeRestart(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "runtime")
	if out, err := runCmd("go", "build", "-o", bin, "../../runtime"); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	socket := filepath.Join(t.TempDir(), "rt.sock")
	start := func() *os.Process {
		p, err := os.StartProcess(bin, []string{bin, "serve", "-socket", socket, "-model", testenv.TinyModel(t),
			"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", "off", "-max-batch-size", "4"},
			&os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	proc := start()
	defer func() { proc.Kill(); proc.Wait() }()
	tp := startProxy(t, testConfig(socket))
	img := testenv.Image(t, "small.png")
	if r := do(t, rawReq(tp.url+"/predict", "image/png", img)); r.status != 200 {
		t.Fatalf("before the kill: %d %s", r.status, r.raw)
	}
	proc.Kill()
	proc.Wait()
	tp.waitReady(t, false)
	r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(3)))
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("runtime down: %d %s, want 503 with Retry-After", r.status, r.raw)
	}
	proc = start() // the stale socket file is taken over
	tp.waitReady(t, true)
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(4))); r.status != 200 {
		t.Errorf("after restart: %d %s", r.status, r.raw)
	}
	if got := metricValue(t, tp.metricsURL, "inference_runtime_connected"); got != 1 {
		t.Errorf("inference_runtime_connected = %v", got)
	}
}

func runCmd(name string, args ...string) ([]byte, error) {
	return execCommand(name, args...).CombinedOutput()
}

// TestDrain: shutdown fails readiness at once, keeps serving for the drain
// delay, and completes every accepted request.
func TestDrain(t *testing.T) {
	rt := startRuntime(t, testenv.ResNet50Model(t), 2, "")
	cfg := testConfig(rt.socket)
	cfg.DrainDelay = 300 * time.Millisecond
	tp := startProxy(t, cfg)
	const n = 6
	results := make([]response, n)
	var wg, sent sync.WaitGroup
	sent.Add(n)
	for i := range n {
		wg.Go(func() {
			req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(3000+i))
			req.Body = &eofSignal{r: req.Body, done: sent.Done}
			results[i] = do(t, req)
		})
	}
	// The requests are accepted: each is on the wire, body and all,
	// before the drain starts.
	allSent := make(chan struct{})
	go func() { sent.Wait(); close(allSent) }()
	select {
	case <-allSent:
	case <-time.After(10 * time.Second):
		t.Fatal("the requests were not all sent in 10 s")
	}
	done := make(chan error, 1)
	go func() { done <- tp.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	if r := get(t, tp.url+"/readyz"); r.status != 503 {
		t.Errorf("/readyz while draining = %d, want 503", r.status)
	}
	wg.Wait()
	for i, r := range results {
		if r.status != 200 {
			t.Errorf("accepted request %d lost in drain: %d %s", i, r.status, r.raw)
		}
	}
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if _, err := http.Get(tp.url + "/healthz"); err == nil {
		t.Error("still accepting connections after shutdown")
	}
}

var execCommand = exec.Command

// eofSignal is a request body that calls done once the client has read
// all of it.
type eofSignal struct {
	r    io.ReadCloser
	once sync.Once
	done func()
}

func (e *eofSignal) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.once.Do(e.done)
	}
	return n, err
}

func (e *eofSignal) Close() error { return e.r.Close() }

// TestHostileRequests: requests an attacker would send get a clean JSON
// error, and the server keeps serving with nothing leaked to the runtime.
func TestHostileRequests(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	infer := tp.url + "/v2/models/resnet50/infer"
	good := func(what string) {
		t.Helper()
		if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(len(what)))); r.status != 200 {
			t.Fatalf("after %s, a good request got %d %s", what, r.status, r.raw)
		}
	}

	// The request that killed the proxy: an out-of-range binary_data_size.
	header := `{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":1e300}}]}`
	req := rawReq(infer, "application/octet-stream", append([]byte(header), "\x05\x00\x00\x00hello"...))
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	if r := do(t, req); r.status != 400 || r.body["error"] == nil {
		t.Errorf("binary_data_size 1e300: %d %s, want 400 with a JSON error", r.status, r.raw)
	}
	good("binary_data_size 1e300")
	if p := metricValue(t, tp.metricsURL, "inference_panics_total"); p != 0 {
		t.Errorf("inference_panics_total = %v: a handler panicked", p)
	}

	// top_k is checked before any work: nothing reaches the runtime.
	before := rt.Stats().Items
	if r := do(t, rawReq(tp.url+"/predict?top_k=1001", "image/png", testenv.UniquePNG(77))); r.status != 400 {
		t.Errorf("top_k=1001: %d, want 400", r.status)
	}
	if got := rt.Stats().Items - before; got != 0 {
		t.Errorf("a request with a bad top_k ran %d inferences", got)
	}

	// Chunked uploads have no length to reserve memory for: 411.
	creq, _ := http.NewRequest("POST", tp.url+"/predict", io.MultiReader(bytes.NewReader(testenv.UniquePNG(5))))
	creq.Header.Set("Content-Type", "image/png")
	creq.ContentLength = -1 // chunked
	if r := do(t, creq); r.status != 411 || r.body["error"] == nil {
		t.Errorf("chunked upload: %d %s, want 411", r.status, r.raw)
	}
	good("a chunked upload")

	// An X-Request-Id outside the safe charset is neither echoed nor logged.
	ireq := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(6))
	ireq.Header.Set("X-Request-Id", `"><script>alert(1)</script>`)
	r := do(t, ireq)
	if id := r.header.Get("X-Request-Id"); strings.Contains(id, "<") || len(id) != 16 {
		t.Errorf("X-Request-Id answered as %q, want a generated 16-hex id", id)
	}
	if strings.Contains(tp.log.String(), "<script>") {
		t.Error("the hostile request id reached the log")
	}

	// More images in one OIP request than a quarter of the queue: 400.
	elems := strings.TrimSuffix(strings.Repeat(`"aGk=",`, 17), ",")
	if r := do(t, rawReq(infer, "application/json", []byte(`{"inputs":[{"name":"image","shape":[17],"datatype":"BYTES","data":[`+elems+`]}]}`))); r.status != 400 {
		t.Errorf("17 images in one OIP request: %d %s, want 400 (the cap is 16)", r.status, r.raw)
	}
	good("an oversized OIP request")
}

// TestCachedWhileRuntimeAway: cached answers are still given while the
// runtime is gone (degraded but useful); others get 503.
func TestCachedWhileRuntimeAway(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	img := testenv.UniquePNG(99)
	if r := do(t, rawReq(tp.url+"/predict", "image/png", img)); r.status != 200 || r.body["cached"] != false {
		t.Fatalf("first request: %d %s", r.status, r.raw)
	}
	rt.Shutdown(context.Background())
	tp.waitReady(t, false)
	if r := do(t, rawReq(tp.url+"/predict", "image/png", img)); r.status != 200 || r.body["cached"] != true {
		t.Errorf("cached image while the runtime is away: %d %s, want 200 cached", r.status, r.raw)
	}
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(100))); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("new image while the runtime is away: %d %s, want 503 with Retry-After", r.status, r.raw)
	}
}

// TestRuntimeStall stops the runtime process (SIGSTOP): between healthy and
// dead. The proxy must notice, fail readiness and answer new requests 503
// instead of letting them wait for their deadline, then recover on SIGCONT.
func TestRuntimeStall(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "runtime")
	if out, err := runCmd("go", "build", "-o", bin, "../../runtime"); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	socket := filepath.Join(t.TempDir(), "rt.sock")
	proc, err := os.StartProcess(bin, []string{bin, "serve", "-socket", socket, "-model", testenv.TinyModel(t),
		"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", "off", "-max-batch-size", "4"},
		&os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { proc.Signal(syscall.SIGCONT); proc.Kill(); proc.Wait() }()
	tp := startProxy(t, testConfig(socket))
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1))); r.status != 200 {
		t.Fatalf("before the stall: %d %s", r.status, r.raw)
	}

	proc.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	tp.waitReady(t, false)
	t.Logf("stall detected after %v", time.Since(stopped).Round(10*time.Millisecond))
	req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(2))
	req.Header.Set("X-Request-Timeout-Ms", "20000")
	if r := do(t, req); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("while stalled: %d %s, want 503 with Retry-After at once, not a wait for the deadline", r.status, r.raw)
	}
	if got := metricValue(t, tp.metricsURL, "inference_runtime_stalls_total"); got < 1 {
		t.Errorf("inference_runtime_stalls_total = %v", got)
	}

	proc.Signal(syscall.SIGCONT)
	resumed := time.Now()
	tp.waitReady(t, true)
	t.Logf("recovered %v after SIGCONT", time.Since(resumed).Round(10*time.Millisecond))
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(3))); r.status != 200 {
		t.Errorf("after SIGCONT: %d %s", r.status, r.raw)
	}
}

// TestDrainKeepAlive: during drain every response closes its connection, so
// keep-alive clients move to another proxy (as behind a load balancer) and
// no request is lost.
func TestDrainKeepAlive(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.DrainDelay = time.Second
	a, b := startProxy(t, cfg), startProxy(t, testConfig(rt.socket))
	const clients, perClient = 4, 40
	var (
		mu        sync.Mutex
		statuses  = map[int]int{}
		lost      []string
		movedAt   []int
		shutdown  = make(chan struct{})
		shutdownF sync.Once
	)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 30 * time.Second}
			target := a.url
			for i := range perClient {
				if i == 10 {
					shutdownF.Do(func() { close(shutdown) })
				}
				resp, err := client.Do(rawReq(target+"/predict", "image/png", testenv.UniquePNG(10000+c*1000+i)))
				if err != nil {
					if target == a.url && strings.Contains(err.Error(), "connection refused") {
						target = b.url // never accepted: not lost; the balancer moves it
						continue
					}
					mu.Lock()
					lost = append(lost, err.Error())
					mu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				if resp.Close && target == a.url {
					movedAt = append(movedAt, i)
				}
				mu.Unlock()
				if resp.Close {
					target = b.url // the draining proxy asked us to leave
				}
			}
		})
	}
	<-shutdown
	done := make(chan error, 1)
	go func() { done <- a.Shutdown(context.Background()) }()
	wg.Wait()
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if len(lost) > 0 || statuses[200] == 0 || len(statuses) != 1 {
		t.Errorf("statuses %v, %d lost requests: %v", statuses, len(lost), lost)
	}
	if len(movedAt) == 0 {
		t.Error("no response from the draining proxy said Connection: close")
	}
}

// Cost guard of the autoscaling signal: cache hits send nothing to the
// runtime, so they add no runtime demand and cannot scale the deployment
// up; a miss does. The expected wait is 0 when idle.
func TestCacheHitsAddNoDemand(t *testing.T) {
	rt := startRuntime(t, testenv.ResNet50Model(t), 4, "")
	tp := startProxy(t, testConfig(rt.socket))
	demand := func() float64 { return metricValue(t, tp.metricsURL, "inference_runtime_demand_seconds_total") }
	img := testenv.UniquePNG(4242)
	do(t, rawReq(tp.url+"/predict", "image/png", img)) // a miss: the batcher learns the time per item
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(4243))); r.status != 200 {
		t.Fatalf("second miss: %d %s", r.status, r.raw)
	}
	d0 := demand()
	if d0 <= 0 {
		t.Fatalf("inference_runtime_demand_seconds_total %v after two misses, want > 0", d0)
	}
	for i := range 20 {
		if r := do(t, rawReq(tp.url+"/predict", "image/png", img)); r.body["cached"] != true {
			t.Fatalf("request %d: not a cache hit: %d %s", i, r.status, r.raw)
		}
	}
	if d := demand(); d != d0 {
		t.Errorf("20 cache hits moved inference_runtime_demand_seconds_total from %v to %v; want no change", d0, d)
	}
	if b := metricValue(t, tp.metricsURL, "inference_runtime_busy_seconds_total"); b <= 0 {
		t.Errorf("inference_runtime_busy_seconds_total %v after two inferences, want > 0", b)
	}
	if w := metricValue(t, tp.metricsURL, "inference_expected_wait_seconds"); w != 0 {
		t.Errorf("inference_expected_wait_seconds %v when idle, want 0", w)
	}
}

// noiseJPEG is a w x h JPEG of random pixels: as slow to decode as a photo
// of its size can be.
func noiseJPEG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(uint64(w), uint64(h)))
	for i := range img.Pix {
		img.Pix[i] = uint8(rng.Uint32())
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
