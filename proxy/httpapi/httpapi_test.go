package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/oip"
	"github.com/batchgate/batchgate/proxy/rtconn"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
)

// testInfo is the model the fake serves: 10 classes.
var testInfo = wire.Info{
	Model: "resnet50", ModelSHA256: strings.Repeat("5a", 32), InputName: "data", OutputName: "scores",
	Channels: 3, Height: 224, Width: 224, ResizeShorter: 256, Classes: 10, MaxBatchSize: 8,
	Labels: []string{"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9"},
}

// fakeClassifier answers as the test says: an outcome, an error, a panic,
// or waiting for the request's deadline. It records the calls it got, and
// releases the lease it takes over, as classify.Service does.
type fakeClassifier struct {
	mu       sync.Mutex
	info     wire.Info
	known    bool
	ready    bool
	err      error
	panicMsg string
	wait     bool // wait for ctx to end, then return its error
	cached   bool

	calls     int
	data      [][]byte
	noCache   []bool
	remaining []time.Duration // time to the deadline at each call
}

func newFake() *fakeClassifier { return &fakeClassifier{info: testInfo, known: true, ready: true} }

func (f *fakeClassifier) Model() (wire.Info, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info, f.ready
}

func (f *fakeClassifier) LastModel() (wire.Info, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info, f.known
}

func (f *fakeClassifier) Classify(ctx context.Context, data []byte, lease *budget.Lease, noCache bool) (*classify.Outcome, error) {
	lease.Release()
	f.mu.Lock()
	f.calls++
	f.data = append(f.data, bytes.Clone(data))
	f.noCache = append(f.noCache, noCache)
	if dl, ok := ctx.Deadline(); ok {
		f.remaining = append(f.remaining, time.Until(dl))
	}
	err, panicMsg, wait, cached, info := f.err, f.panicMsg, f.wait, f.cached, f.info
	f.mu.Unlock()
	if panicMsg != "" {
		panic(panicMsg)
	}
	if wait {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	return f.outcome(info, cached), nil
}

func (f *fakeClassifier) InferTensor(ctx context.Context, tensor []float32) (*classify.Outcome, error) {
	f.mu.Lock()
	f.calls++
	err, info := f.err, f.info
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.outcome(info, false), nil
}

// outcome scores class i as i: the best class is the last.
func (f *fakeClassifier) outcome(info wire.Info, cached bool) *classify.Outcome {
	scores := make([]float32, info.Classes)
	for i := range scores {
		scores[i] = float32(i)
	}
	out := &classify.Outcome{Scores: scores, Model: info, Cached: cached}
	if !cached {
		out.Prep = 2 * time.Millisecond
		out.Inference = &classify.Inference{Scores: scores, BatchSize: 3, QueueWait: time.Millisecond, Exec: 4 * time.Millisecond}
	}
	return out
}

func (f *fakeClassifier) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeClassifier) set(fn func(f *fakeClassifier)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// logLines returns the JSON log records written to s.
func logLines(s *testenv.SyncBuffer) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// oneRuntime is the Router of one runtime (Declared false), as
// proxy/versions' table of routing.Single: every request goes to cls.
type oneRuntime struct{ cls Classifier }

func (oneRuntime) Declared() bool                               { return false }
func (r oneRuntime) LastModel(string, string) (wire.Info, bool) { return r.cls.LastModel() }
func (oneRuntime) Versions(string) ([]VersionStatus, bool)      { return nil, false }

func (r oneRuntime) Route(string, string, RouteKeys) (*Routed, error) {
	return &Routed{Classifier: r.cls, Done: func(int, time.Duration) {}}, nil
}

// testServer is a Server on a loopback port, on a fasthttp.Server built as
// gateway builds it.
type testServer struct {
	api     *Server
	fc      *fakeClassifier
	cfg     Config
	addr    string
	url     string
	set     *metrics.Set
	log     *testenv.SyncBuffer
	client  *http.Client
	uploads *budget.Budget
}

const testMaxBody = 100_000

func startServer(t *testing.T, change func(*Config)) *testServer {
	t.Helper()
	fc := newFake()
	logBuf := &testenv.SyncBuffer{}
	set := metrics.NewSet()
	cfg := Config{
		Router: oneRuntime{fc}, Metrics: stats.New(set, stats.Gauges{}),
		Log:            slog.New(slog.NewJSONHandler(logBuf, nil)),
		Ready:          func() bool { _, ready := fc.Model(); return ready },
		Version:        "test",
		RequestTimeout: 5 * time.Second,
		MaxBodyBytes:   testMaxBody,
		Uploads:        budget.New(1 << 20),
		UploadWait:     50 * time.Millisecond,
		MaxElements:    2,
	}
	if change != nil {
		change(&cfg)
	}
	api := New(cfg)
	srv := &fasthttp.Server{
		Handler:                      api.Handler,
		ErrorHandler:                 api.ErrorHandler,
		ExpectHandler:                api.ExpectHandler,
		HeaderReceived:               api.HeaderReceived,
		ConnState:                    api.ConnState,
		Name:                         "batchgate",
		Logger:                       fasthttpLogger{cfg.Log},
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		MaxRequestBodySize:           api.MaxRequestBody(),
		ReduceMemoryUsage:            true,
		ReadTimeout:                  cfg.RequestTimeout + 10*time.Second,
		WriteTimeout:                 cfg.RequestTimeout + 10*time.Second,
		IdleTimeout:                  2 * time.Minute,
		NoDefaultDate:                true,
		CloseOnShutdown:              true,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	ts := &testServer{api: api, fc: fc, cfg: cfg, addr: ln.Addr().String(), url: "http://" + ln.Addr().String(),
		set: set, log: logBuf, client: &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}, uploads: cfg.Uploads}
	t.Cleanup(func() {
		ts.client.CloseIdleConnections()
		srv.Shutdown()
		<-served
	})
	return ts
}

// fasthttpLogger sends fasthttp's own messages to slog, as gateway's does.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp", "message", fmt.Sprintf(format, args...))
}

// counter is the value of a series of the server's set, by its full name
// with labels; a series the set lacks fails the test.
func (ts *testServer) counter(t *testing.T, name string) float64 {
	t.Helper()
	return testenv.SetMetrics(t, ts.set).Value(t, name)
}

func (ts *testServer) rejections(t *testing.T, reason string) float64 {
	t.Helper()
	return ts.counter(t, `inference_rejections_total{reason="`+reason+`"}`)
}

type response struct {
	status int
	header http.Header
	close  bool // the server closes the connection
	body   map[string]any
	raw    []byte
}

// do sends req; failures are t.Errorf (it may run on any goroutine).
func (ts *testServer) do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL.Path, err)
		return response{}
	}
	defer resp.Body.Close()
	return readResponse(t, resp)
}

func readResponse(t *testing.T, resp *http.Response) response {
	t.Helper()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw,
		close: resp.Close || strings.EqualFold(resp.Header.Get("Connection"), "close")}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Errorf("response is not JSON: %v: %s", err, raw)
		}
	}
	return r
}

// jsonError is the response's JSON error message, "" if it has none.
func (r response) jsonError() string {
	s, _ := r.body["error"].(string)
	return s
}

func (ts *testServer) post(path, contentType string, body []byte) *http.Request {
	req, _ := http.NewRequest("POST", ts.url+path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

func (ts *testServer) get(path string) *http.Request {
	req, _ := http.NewRequest("GET", ts.url+path, nil)
	return req
}

// multipartBody is what Go's mime/multipart writer sends: a file field
// named field holding data, after a text field.
func multipartBody(field string, data []byte) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("note", "before the file")
	fw, _ := mw.CreateFormFile(field, "grace_hopper.jpg")
	fw.Write(data)
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// checkUploadsFree checks that every request body's reservation was given
// back.
func (ts *testServer) checkUploadsFree(t *testing.T, what string) {
	t.Helper()
	if got := ts.uploads.InUse(); got != 0 {
		t.Errorf("%s: %d bytes of the upload budget still reserved", what, got)
	}
}

func TestPredict(t *testing.T) {
	ts := startServer(t, nil)
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	form, formType := multipartBody("file", jpeg)
	for _, tc := range []struct {
		name        string
		req         *http.Request
		cached      bool
		wantNoCache bool
		wantPreds   int
	}{
		{name: "multipart", req: ts.post("/predict", formType, form), wantPreds: 5},
		{name: "image body", req: ts.post("/predict?top_k=3", "image/jpeg", jpeg), wantPreds: 3},
		{name: "octet-stream", req: ts.post("/predict?top_k=10", "application/octet-stream", jpeg), wantPreds: 10},
		{name: "cached", req: ts.post("/predict", "image/jpeg", jpeg), cached: true, wantPreds: 5},
		{name: "no-cache", req: func() *http.Request {
			r := ts.post("/predict", "image/jpeg", jpeg)
			r.Header.Set("Cache-Control", "No-Cache")
			return r
		}(), wantNoCache: true, wantPreds: 5},
	} {
		ts.fc.set(func(f *fakeClassifier) { f.cached = tc.cached; f.data, f.noCache = nil, nil })
		r := ts.do(t, tc.req)
		preds, _ := r.body["predictions"].([]any)
		if r.status != 200 || len(preds) != tc.wantPreds || r.body["model"] != "resnet50" || r.body["cached"] != tc.cached {
			t.Errorf("%s: %d %s; want 200 with %d predictions", tc.name, r.status, r.raw, tc.wantPreds)
			continue
		}
		// The fake scores class i as i: best first, probabilities a softmax.
		for i, p := range preds {
			p := p.(map[string]any)
			id := 9 - i
			if p["class_id"] != float64(id) || p["label"] != "l"+strconv.Itoa(id) || p["probability"].(float64) <= 0 {
				t.Errorf("%s: prediction %d = %v, want class %d", tc.name, i, p, id)
			}
		}
		timings, _ := r.body["timings"].(map[string]any)
		_, inferred := timings["inference_ms"]
		if tc.cached == inferred || (!tc.cached && timings["batch_size"] != 3.0) || timings["server_ms"] == nil || timings["other_ms"] == nil {
			t.Errorf("%s: timings %v (cached %v)", tc.name, timings, tc.cached)
		}
		ts.fc.mu.Lock()
		got, noCache := ts.fc.data, ts.fc.noCache
		ts.fc.mu.Unlock()
		if len(got) != 1 || !bytes.Equal(got[0], jpeg) || noCache[0] != tc.wantNoCache {
			t.Errorf("%s: the classifier got %d images (equal to the upload: %v), noCache %v", tc.name, len(got), len(got) == 1 && bytes.Equal(got[0], jpeg), noCache)
		}
		ts.checkUploadsFree(t, tc.name)
	}
	if got := ts.counter(t, `inference_requests_total{route="/predict",code="200"}`); got != 5 {
		t.Errorf("inference_requests_total for /predict 200 = %v, want 5", got)
	}
}

// top_k is checked before the body is read or the classifier called.
func TestTopK(t *testing.T) {
	for _, tc := range []struct {
		classes int
		query   string
		want    int // predictions; 0 means 400
	}{
		{10, "", 5},
		{3, "", 3}, // default 5, or every class if fewer
		{10, "?top_k=1", 1},
		{10, "?top_k=10", 10},
		{10, "?top_k=%2B7", 7},
		{10, "?top_k=+7", 0}, // a form-encoded space
		{10, "?top_k=0", 0},
		{10, "?top_k=11", 0},
		{10, "?top_k=-1", 0},
		{10, "?top_k=abc", 0},
		{10, "?top_k=", 0},
		{10, "?top_k=2.5", 0},
		{10, "?top_k=%203", 0},
		{10, "?top_k=99999999999999999999", 0},
	} {
		ts := startServer(t, nil)
		ts.fc.set(func(f *fakeClassifier) { f.info.Classes, f.info.Labels = tc.classes, testInfo.Labels[:tc.classes] })
		r := ts.do(t, ts.post("/predict"+tc.query, "image/jpeg", []byte("jpeg")))
		preds, _ := r.body["predictions"].([]any)
		switch {
		case tc.want > 0 && (r.status != 200 || len(preds) != tc.want):
			t.Errorf("%d classes, %q: %d %s; want %d predictions", tc.classes, tc.query, r.status, r.raw, tc.want)
		case tc.want == 0 && (r.status != 400 || !strings.Contains(r.jsonError(), fmt.Sprintf("top_k must be an integer in [1, %d]", tc.classes))):
			t.Errorf("%d classes, %q: %d %s; want 400 naming top_k's range", tc.classes, tc.query, r.status, r.raw)
		case tc.want == 0 && (ts.fc.callCount() != 0 || ts.rejections(t, "bad_request") != 1):
			t.Errorf("%q: classifier called %d times, %v bad_request rejections; want 0 and 1", tc.query, ts.fc.callCount(), ts.rejections(t, "bad_request"))
		}
	}
}

// X-Request-Timeout-Ms lowers the request's deadline, never raises it, and
// is checked before the classifier runs.
func TestRequestTimeout(t *testing.T) {
	ts := startServer(t, nil) // RequestTimeout 5s
	for _, tc := range []struct {
		header   string
		min, max time.Duration // of the time left when the classifier runs; 0: 400
	}{
		{"", 4 * time.Second, 5 * time.Second},
		{"2000", time.Second, 2 * time.Second},
		{"4999", 4 * time.Second, 4999 * time.Millisecond},
		{"5000", 4 * time.Second, 5 * time.Second},
		{"7000", 4 * time.Second, 5 * time.Second},
		{"999999999", 4 * time.Second, 5 * time.Second},
		{"0", 0, 0},
		{"-5", 0, 0},
		{"soon", 0, 0},
		{"1.5", 0, 0},
		{"99999999999999999999", 0, 0},
	} {
		ts.fc.set(func(f *fakeClassifier) { f.calls, f.remaining = 0, nil })
		req := ts.post("/predict", "image/jpeg", []byte("jpeg"))
		if tc.header != "" {
			req.Header.Set("X-Request-Timeout-Ms", tc.header)
		}
		r := ts.do(t, req)
		ts.fc.mu.Lock()
		calls, remaining := ts.fc.calls, ts.fc.remaining
		ts.fc.mu.Unlock()
		if tc.max == 0 {
			if r.status != 400 || !strings.Contains(r.jsonError(), "X-Request-Timeout-Ms") || calls != 0 {
				t.Errorf("%q: %d %s after %d classifier calls; want 400 before any", tc.header, r.status, r.raw, calls)
			}
			continue
		}
		if r.status != 200 || len(remaining) != 1 || remaining[0] < tc.min || remaining[0] > tc.max {
			t.Errorf("%q: %d, deadline in %v; want 200 with a deadline in [%v, %v]", tc.header, r.status, remaining, tc.min, tc.max)
		}
	}
	// A deadline that passes before the classifier answers: 504.
	ts.fc.set(func(f *fakeClassifier) { f.wait = true })
	req := ts.post("/predict", "image/jpeg", []byte("jpeg"))
	req.Header.Set("X-Request-Timeout-Ms", "20")
	if r := ts.do(t, req); r.status != 504 || r.jsonError() == "" || ts.rejections(t, "deadline") != 1 {
		t.Errorf("expired deadline: %d %s, %v deadline rejections; want 504", r.status, r.raw, ts.rejections(t, "deadline"))
	}
}

var generatedID = regexp.MustCompile(`^[0-9a-f]{16}$`)

// A client's X-Request-Id is echoed and logged only if safe; otherwise a
// generated one replaces it, in the answer and in the log.
func TestRequestID(t *testing.T) {
	ts := startServer(t, nil)
	long := strings.Repeat("a", 128)
	seen := map[string]bool{}
	for _, tc := range []struct {
		id   string
		keep bool
	}{
		{"abc-123", true},
		{"Trace_1.2:3/4+5=6@x", true},
		{long, true},
		{long + "b", false},
		{"", false},
		{"has space", false},
		{`quote"d`, false},
		{"<script>alert(1)</script>", false},
		{"ünïcode", false},
		{"semi;colon", false},
		{"new\\nline", false},
	} {
		req := ts.post("/predict", "image/png", []byte("png"))
		if tc.id != "" {
			req.Header.Set("X-Request-Id", tc.id)
		}
		r := ts.do(t, req)
		got := r.header.Get("X-Request-Id")
		switch {
		case r.status != 200:
			t.Errorf("%q: status %d", tc.id, r.status)
		case tc.keep && got != tc.id:
			t.Errorf("%q echoed as %q", tc.id, got)
		case !tc.keep && (!generatedID.MatchString(got) || seen[got]):
			t.Errorf("%q replaced by %q, want a fresh 16-hex id", tc.id, got)
		}
		seen[got] = true
		logged := false
		for _, l := range logLines(ts.log) {
			if l["msg"] == "request" && l["request_id"] == got && l["route"] == "/predict" && l["status"] == 200.0 {
				logged = true
			}
		}
		if !logged {
			t.Errorf("%q: no request log line with the id %q", tc.id, got)
		}
		if !tc.keep && tc.id != "" {
			for _, l := range logLines(ts.log) {
				if l["request_id"] == tc.id || strings.Contains(ts.log.String(), tc.id) {
					t.Errorf("%q: the rejected id is in the log", tc.id)
				}
			}
		}
	}
}

// rawRequest writes head (and body, if any) on a new connection and reads
// one answer, within 5 seconds. It reports what it could not do in err.
func rawRequest(addr, head string, body []byte) (*http.Response, []byte, net.Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	writeErr := make(chan error, 1)
	go func() { // the server may answer before it has read everything
		_, err := conn.Write(body)
		writeErr <- err
	}()
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("reading the answer: %w (writing the body: %v)", err, <-writeErr)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("reading the answer's body: %w", err)
	}
	if err := <-writeErr; err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("writing the body: %w", err)
	}
	return resp, raw, &bufConn{conn, br}, nil
}

// bufConn reads through the bufio.Reader that may hold the next answer.
type bufConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.br.Read(p) }

func head(path, contentType string, length int, extra ...string) string {
	h := "POST " + path + " HTTP/1.1\r\nHost: test\r\nContent-Type: " + contentType + "\r\n"
	if length >= 0 {
		h += "Content-Length: " + strconv.Itoa(length) + "\r\n"
	}
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "\r\n"
}

func checkJSON(t *testing.T, what string, resp *http.Response, raw []byte, status int, reason string) {
	t.Helper()
	var body map[string]string
	if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
		json.Unmarshal(raw, &body) != nil || !strings.Contains(body["error"], reason) {
		t.Errorf("%s: %d %q %s; want %d with a JSON error about %q", what, resp.StatusCode, resp.Header.Get("Content-Type"), raw, status, reason)
	}
}

// A chunked body, with no length to reserve memory by, is refused.
func TestChunked(t *testing.T) {
	ts := startServer(t, nil)
	for _, path := range []string{"/predict", "/v2/models/resnet50/infer"} {
		resp, raw, conn, err := rawRequest(ts.addr, head(path, "image/png", -1, "Transfer-Encoding: chunked"), []byte("5\r\nhello\r\n0\r\n\r\n"))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		conn.Close()
		checkJSON(t, path+" chunked", resp, raw, 411, "Content-Length")
	}
	if ts.fc.callCount() != 0 || ts.rejections(t, "length_required") != 2 {
		t.Errorf("classifier called %d times, %v length_required rejections; want 0 and 2", ts.fc.callCount(), ts.rejections(t, "length_required"))
	}
}

// With "Expect: 100-continue" a body over the limit is refused before it is
// sent; without, it is read and dropped, and the client, which sent it all,
// reads the 413 rather than a reset.
func TestBodyTooLarge(t *testing.T) {
	ts := startServer(t, nil) // MaxBodyBytes 100_000; multipart framing 64 KiB more
	limit := testMaxBody
	for _, tc := range []struct {
		name        string
		path, ctype string
		length      int // -1: chunked
		status      int // 100: the body is asked for
	}{
		{"image just over", "/predict", "image/png", limit + 1, 413},
		{"image far over", "/predict", "image/png", 3 * ts.api.MaxRequestBody(), 413},
		{"image at the limit", "/predict", "image/png", limit, 100},
		{"multipart within the framing slack", "/predict", "multipart/form-data; boundary=x", limit + 1000, 100},
		{"multipart over", "/predict", "multipart/form-data; boundary=x", ts.api.MaxRequestBody() + 1, 413},
		{"v2 over", "/v2/models/resnet50/infer", "application/json", limit + 1, 413},
		{"chunked", "/predict", "image/png", -1, 411},
	} {
		extra := []string{"Expect: 100-continue"}
		if tc.length < 0 {
			extra = append(extra, "Transfer-Encoding: chunked")
		}
		// The body is never sent: the answer must come without it.
		resp, raw, conn, err := rawRequest(ts.addr, head(tc.path, tc.ctype, tc.length, extra...), nil)
		if err != nil {
			t.Errorf("%s with Expect: %v (the server waited for the body?)", tc.name, err)
			continue
		}
		conn.Close()
		if tc.status == 100 {
			if resp.StatusCode != 100 {
				t.Errorf("%s with Expect: %d %s, want 100 Continue", tc.name, resp.StatusCode, raw)
			}
			continue
		}
		checkJSON(t, tc.name+" with Expect", resp, raw, tc.status, "")
		if !resp.Close {
			t.Errorf("%s with Expect: the connection stays open, though the client may send the body anyway", tc.name)
		}
	}

	// Without Expect the client sends the whole body before reading.
	for _, tc := range []struct {
		name   string
		length int
		path   string
	}{
		{"just over", limit + 1, "/predict"},
		{"over what fasthttp buffers", 3 * ts.api.MaxRequestBody(), "/predict"},
		{"v2", limit + 1, "/v2/models/resnet50/infer"},
	} {
		resp, raw, conn, err := rawRequest(ts.addr, head(tc.path, "image/png", tc.length), make([]byte, tc.length))
		if err != nil {
			t.Errorf("%s without Expect: %v", tc.name, err)
			continue
		}
		checkJSON(t, tc.name+" without Expect", resp, raw, 413, "larger than")
		// The body was read to its end: the connection serves on.
		io.WriteString(conn, head("/predict", "image/png", 3)+"png")
		next, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || next.StatusCode != 200 {
			t.Errorf("%s: the next request on the connection: %v %v", tc.name, next, err)
		}
		conn.Close()
	}
	if ts.fc.callCount() != 3 {
		t.Errorf("the classifier ran %d times, want 3 (the requests after the refusals)", ts.fc.callCount())
	}
	ts.checkUploadsFree(t, "after the refusals")
}

// Uploads wait UploadWait for room in the upload budget, then get 429.
func TestUploadBudget(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Uploads, c.UploadWait = budget.New(10_000), 50*time.Millisecond })
	hold, err := ts.uploads.Acquire(context.Background(), 9_000)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 2_000)
	r := ts.do(t, ts.post("/predict", "image/png", body))
	if r.status != 429 || r.header.Get("Retry-After") != "1" || !strings.Contains(r.jsonError(), "retry later") ||
		ts.rejections(t, "upload_budget") != 1 || ts.fc.callCount() != 0 {
		t.Errorf("budget taken: %d %s, Retry-After %q; want 429 with Retry-After 1 before the classifier", r.status, r.raw, r.header.Get("Retry-After"))
	}
	// v2 reserves 3x the body for JSON.
	v2 := ts.post("/v2/models/resnet50/infer", "application/json", make([]byte, 500))
	if r := ts.do(t, v2); r.status != 429 {
		t.Errorf("v2 JSON of 500 bytes with 1000 free: %d %s, want 429 (it reserves 3x)", r.status, r.raw)
	}
	hold.Release()
	if r := ts.do(t, ts.post("/predict", "image/png", body)); r.status != 200 {
		t.Errorf("budget free: %d %s", r.status, r.raw)
	}
	ts.checkUploadsFree(t, "after the requests")

	// A request deadline before the budget's wait ends: 504.
	slow := startServer(t, func(c *Config) { c.Uploads, c.UploadWait = budget.New(10_000), 5*time.Second })
	hold, _ = slow.uploads.Acquire(context.Background(), 9_000)
	defer hold.Release()
	req := slow.post("/predict", "image/png", body)
	req.Header.Set("X-Request-Timeout-Ms", "30")
	if r := slow.do(t, req); r.status != 504 || slow.rejections(t, "deadline") != 1 {
		t.Errorf("deadline while waiting for the budget: %d %s, want 504", r.status, r.raw)
	}
}

// Malformed uploads are refused, before the classifier runs, with the
// upload's reservation given back.
func TestBadUploads(t *testing.T) {
	ts := startServer(t, nil)
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	noFile, noFileType := multipartBody("image", jpeg)
	bigFile, bigFileType := multipartBody("file", make([]byte, testMaxBody+1))
	for _, tc := range []struct {
		name        string
		ctype       string
		body        []byte
		status      int
		reason, msg string
	}{
		{"multipart without a file field", noFileType, noFile, 400, "bad_request", `"file" field`},
		{"multipart without a boundary", "multipart/form-data", noFile, 400, "bad_request", "boundary"},
		{"multipart garbage", "multipart/form-data; boundary=xyz", []byte("not a form at all"), 400, "bad_request", "malformed multipart"},
		{"multipart truncated", noFileType, noFile[:len(noFile)/2], 400, "bad_request", "malformed multipart"},
		{"file over MaxBodyBytes", bigFileType, bigFile, 413, "body_too_large", "image larger than 100000 bytes"},
		{"text/plain", "text/plain", jpeg, 415, "unsupported_format", "multipart/form-data"},
		{"JSON", "application/json", jpeg, 415, "unsupported_format", "multipart/form-data"},
		{"no content type", "", jpeg, 415, "unsupported_format", "multipart/form-data"},
		{"bad media type", "image/", jpeg, 415, "unsupported_format", "multipart/form-data"},
	} {
		before := ts.rejections(t, tc.reason)
		r := ts.do(t, ts.post("/predict", tc.ctype, tc.body))
		if r.status != tc.status || !strings.Contains(r.jsonError(), tc.msg) || ts.rejections(t, tc.reason) != before+1 {
			t.Errorf("%s: %d %s; want %d with %q, counted as %s", tc.name, r.status, r.raw, tc.status, tc.msg, tc.reason)
		}
		if !r.close {
			t.Errorf("%s: the connection stays open after a body read in part", tc.name)
		}
		ts.checkUploadsFree(t, tc.name)
	}
	if ts.fc.callCount() != 0 {
		t.Errorf("the classifier ran %d times", ts.fc.callCount())
	}
}

func TestV2Infer(t *testing.T) {
	ts := startServer(t, nil) // MaxElements 2
	infer := "/v2/models/resnet50/infer"
	elems := func(n int) []byte {
		return []byte(`{"id":"r","inputs":[{"name":"image","shape":[` + strconv.Itoa(n) + `],"datatype":"BYTES","data":[` +
			strings.TrimSuffix(strings.Repeat(`"aGk=",`, n), ",") + `]}],"outputs":[{"name":"classification","parameters":{"classification":1}}]}`)
	}
	for _, tc := range []struct {
		name   string
		path   string
		body   []byte
		status int
		calls  int
	}{
		{"two images", infer, elems(2), 200, 2},
		{"over MaxElements", infer, elems(3), 400, 0},
		{"not JSON", infer, []byte("{"), 400, 0},
		{"unknown model", "/v2/models/other/infer", elems(1), 404, 0},
		{"unknown version", "/v2/models/resnet50/versions/2/infer", elems(1), 404, 0},
		{"version 1", "/v2/models/resnet50/versions/1/infer", elems(1), 200, 1},
	} {
		ts.fc.set(func(f *fakeClassifier) { f.calls, f.data = 0, nil })
		r := ts.do(t, ts.post(tc.path, "application/json", tc.body))
		if r.status != tc.status || ts.fc.callCount() != tc.calls || (tc.status != 200) != (r.jsonError() != "") {
			t.Errorf("%s: %d %s after %d classifier calls; want %d after %d", tc.name, r.status, r.raw, ts.fc.callCount(), tc.status, tc.calls)
		}
		if tc.status == 200 {
			out, _ := r.body["outputs"].([]any)
			if r.body["id"] != "r" || len(out) != 1 || !strings.Contains(fmt.Sprint(out[0]), ":9:l9") {
				t.Errorf("%s: %s", tc.name, r.raw)
			}
			ts.fc.mu.Lock()
			for _, d := range ts.fc.data {
				if string(d) != "hi" {
					t.Errorf("%s: the classifier got %q, want the decoded element", tc.name, d)
				}
			}
			ts.fc.mu.Unlock()
		}
		ts.checkUploadsFree(t, tc.name)
	}
}

// errStatus maps every error the service returns, wrapped or not, to a
// status and a reason that stats knows.
func TestErrStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("while classifying: %w", err) }
	for _, tc := range []struct {
		err    error
		status int
		reason string
	}{
		{&apiError{418, "teapot", "bad_request"}, 418, "bad_request"},
		{&oip.Error{Msg: "bad shape"}, 400, "bad_request"},
		{&batching.QueueFullError{RetryAfter: time.Second}, 429, "queue_full"},
		{wrap(&batching.QueueFullError{}), 429, "queue_full"},
		{classify.ErrDecodeBusy, 429, "decode_queue_full"},
		{context.DeadlineExceeded, 504, "deadline"},
		{wrap(context.DeadlineExceeded), 504, "deadline"},
		{classify.ErrUnavailable, 503, "unavailable"},
		{rtconn.ErrUnavailable, 503, "unavailable"},
		{fmt.Errorf("%w: socket closed", rtconn.ErrUnavailable), 503, "unavailable"},
		{rtconn.ErrModelChanged, 503, "unavailable"},
		{batching.ErrClosed, 503, "unavailable"},
		{&classify.MemoryError{Need: 200 << 20, Budget: 128 << 20}, 413, "decode_memory"},
		{imageprep.ErrFormat, 415, "unsupported_format"},
		{fmt.Errorf("%w: 9000x9000", imageprep.ErrTooLarge), 413, "too_many_pixels"},
		{fmt.Errorf("%w: unexpected EOF", imageprep.ErrCorrupt), 400, "corrupt_image"},
		{&rtconn.ItemError{Msg: "NaN"}, 400, "bad_tensor"},
		{context.Canceled, 499, "cancelled"},
		{errors.New("the runtime said something secret"), 500, "internal"},
	} {
		got := errStatus(tc.err)
		if got.status != tc.status || got.reason != tc.reason || got.msg == "" {
			t.Errorf("errStatus(%v) = %d %q %q; want %d %q", tc.err, got.status, got.reason, got.msg, tc.status, tc.reason)
		}
		known := false
		for _, r := range stats.Reasons {
			known = known || r == got.reason
		}
		if !known {
			t.Errorf("errStatus(%v): reason %q is not in stats.Reasons", tc.err, got.reason)
		}
	}
}

// The classifier's errors reach the client as their status, with a safe
// message, Retry-After where retrying helps, and the rejection counted.
func TestClassifierErrors(t *testing.T) {
	ts := startServer(t, nil)
	for _, tc := range []struct {
		err        error
		status     int
		reason     string
		retryAfter string
	}{
		{&batching.QueueFullError{RetryAfter: 2100 * time.Millisecond}, 429, "queue_full", "3"},
		{&batching.QueueFullError{}, 429, "queue_full", "1"},
		{classify.ErrDecodeBusy, 429, "decode_queue_full", "1"},
		{rtconn.ErrUnavailable, 503, "unavailable", "1"},
		{context.DeadlineExceeded, 504, "deadline", ""},
		{&classify.MemoryError{Need: 200 << 20, Budget: 128 << 20}, 413, "decode_memory", ""},
		{fmt.Errorf("%w: bad huffman code", imageprep.ErrCorrupt), 400, "corrupt_image", ""},
		{imageprep.ErrFormat, 415, "unsupported_format", ""},
		{errors.New("secret: /var/lib/model.onnx"), 500, "internal", ""},
	} {
		ts.fc.set(func(f *fakeClassifier) { f.err = tc.err })
		before := ts.rejections(t, tc.reason)
		r := ts.do(t, ts.post("/predict", "image/png", []byte("png")))
		if r.status != tc.status || r.jsonError() == "" || r.header.Get("Retry-After") != tc.retryAfter || ts.rejections(t, tc.reason) != before+1 {
			t.Errorf("%v: %d %s, Retry-After %q; want %d, Retry-After %q, counted as %s", tc.err, r.status, r.raw, r.header.Get("Retry-After"), tc.status, tc.retryAfter, tc.reason)
		}
		if strings.Contains(string(r.raw), "secret") {
			t.Errorf("%v: an internal error is echoed: %s", tc.err, r.raw)
		}
	}
	// No model known yet: 503 before the body is read.
	ts.fc.set(func(f *fakeClassifier) { f.known, f.err = false, nil })
	for _, path := range []string{"/predict", "/v2/models/resnet50/infer", "/v2/models/resnet50"} {
		if r := ts.do(t, ts.post(path, "image/png", []byte("png"))); r.status != 503 || r.header.Get("Retry-After") != "1" {
			t.Errorf("%s with no model: %d %s, want 503 with Retry-After", path, r.status, r.raw)
		}
	}
	ts.checkUploadsFree(t, "after the errors")
}

// A panicking classifier gets a JSON 500, counted and logged with its stack
// and the request id; the server serves on.
func TestPanic(t *testing.T) {
	ts := startServer(t, nil)
	ts.fc.set(func(f *fakeClassifier) { f.panicMsg = "classifier exploded" })
	req := ts.post("/predict", "image/png", []byte("png"))
	req.Header.Set("X-Request-Id", "panic-1")
	r := ts.do(t, req)
	if r.status != 500 || r.jsonError() != "internal error" || !r.close || r.header.Get("X-Request-Id") != "panic-1" {
		t.Errorf("panic: %d %s close=%v id %q; want a JSON 500 closing the connection", r.status, r.raw, r.close, r.header.Get("X-Request-Id"))
	}
	if got := ts.counter(t, "inference_panics_total"); got != 1 {
		t.Errorf("inference_panics_total = %v, want 1", got)
	}
	// Counted under its own route: Handler names the route (routeOf)
	// before anything can panic, so the 500 is not lost under "other".
	m := testenv.SetMetrics(t, ts.set)
	if got := m.Value(t, `inference_requests_total{route="/predict",code="500"}`); got != 1 {
		t.Errorf("the 500 counted %v times under route /predict, want 1", got)
	}
	if got := m.Sum(t, "inference_requests_total", `code="500"`); got != 1 {
		t.Errorf("500s counted %v times in all routes, want 1", got)
	}
	found := false
	for _, l := range logLines(ts.log) {
		if l["msg"] == "handler panicked" {
			found = true
			stack, _ := l["stack"].(string)
			if l["request_id"] != "panic-1" || l["route"] != "/predict" || l["panic"] != "classifier exploded" || !strings.Contains(stack, "fakeClassifier).Classify") {
				t.Errorf("panic log: %v", l)
			}
		}
	}
	if !found {
		t.Errorf("no panic log line in %s", ts.log.String())
	}
	ts.fc.set(func(f *fakeClassifier) { f.panicMsg = "" })
	if r := ts.do(t, ts.post("/predict", "image/png", []byte("png"))); r.status != 200 {
		t.Errorf("after the panic: %d %s", r.status, r.raw)
	}
	ts.checkUploadsFree(t, "after the panic")
}

// A classifier that panics under POST /v2/models/{name}/infer must not take
// the process down: the images run in errgroup goroutines, where the
// Handler's recover does not reach.
func TestV2Panic(t *testing.T) {
	ts := startServer(t, nil)
	ts.fc.set(func(f *fakeClassifier) { f.panicMsg = "classifier exploded" })
	r := ts.do(t, ts.post("/v2/models/resnet50/infer", "application/json",
		[]byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}]}`)))
	if r.status != 500 || ts.counter(t, "inference_panics_total") != 1 {
		t.Errorf("v2 panic: %d %s", r.status, r.raw)
	}
}

// Draining: readiness fails and every answer closes its connection.
func TestDraining(t *testing.T) {
	ts := startServer(t, nil)
	paths := []string{"/readyz", "/v2/health/ready", "/v2/models/resnet50/ready", "/healthz", "/predict"}
	check := func(what string, wantReady, wantClose bool) {
		t.Helper()
		for _, path := range paths {
			req := ts.get(path)
			if path == "/predict" {
				req = ts.post(path, "image/png", []byte("png"))
			}
			r := ts.do(t, req)
			want := 200
			if !wantReady && strings.Contains(path, "ready") {
				want = 503
			}
			if r.status != want || r.close != wantClose {
				t.Errorf("%s: %s = %d close=%v %s; want %d close=%v", what, path, r.status, r.close, r.raw, want, wantClose)
			}
			if strings.Contains(path, "ready") && r.body["ready"] != wantReady {
				t.Errorf("%s: %s says %s", what, path, r.raw)
			}
		}
	}
	check("serving", true, false)
	ts.fc.set(func(f *fakeClassifier) { f.ready = false })
	if ts.api.Ready() {
		t.Error("Ready() with no ready runtime")
	}
	ts.fc.set(func(f *fakeClassifier) { f.ready = true })
	ts.api.SetDraining()
	if ts.api.Ready() {
		t.Error("Ready() while draining")
	}
	check("draining", false, true)
}

// The routes that take no body, and requests fasthttp cannot parse.
func TestRoutes(t *testing.T) {
	ts := startServer(t, nil)
	for _, tc := range []struct {
		method, path string
		status       int
		check        func(response) bool
	}{
		{"GET", "/predict", 405, func(r response) bool { return r.jsonError() == "use POST" }},
		{"GET", "/v2/models/resnet50/infer", 405, nil},
		{"GET", "/nope", 404, func(r response) bool { return strings.Contains(r.jsonError(), "/docs") }},
		{"GET", "/v2/nope", 404, nil},
		{"GET", "/v2/models/resnet50/extra/parts", 404, nil},
		{"GET", "/v2", 200, func(r response) bool { return r.body["version"] == "test" }},
		{"GET", "/v2/models/resnet50", 200, func(r response) bool { return r.body["name"] == "resnet50" }},
		{"GET", "/v2/models/resnet50/versions/1", 200, nil},
		{"GET", "/v2/health/live", 200, nil},
		{"GET", "/healthz", 200, func(r response) bool { return r.body["live"] == true }},
		{"GET", "/openapi.json", 200, nil},
		{"GET", "/metrics", 404, func(r response) bool { return strings.Contains(r.jsonError(), "METRICS_PORT") }},
	} {
		req, _ := http.NewRequest(tc.method, ts.url+tc.path, nil)
		r := ts.do(t, req)
		if r.status != tc.status || (tc.status >= 400 && r.jsonError() == "") || (tc.check != nil && !tc.check(r)) {
			t.Errorf("%s %s = %d %.200s; want %d", tc.method, tc.path, r.status, r.raw, tc.status)
		}
	}
	resp, raw, conn, err := rawRequest(ts.addr, "GARBAGE\r\n\r\n", nil)
	if err != nil {
		t.Fatalf("malformed request: %v", err)
	}
	conn.Close()
	checkJSON(t, "malformed request", resp, raw, 400, "malformed")
}

// ExampleServer serves the API as gateway does: bodies reach the handlers
// as streams, which read them within the upload budget, and oversized ones
// are refused from their headers.
func ExampleServer() {
	api := New(Config{
		Router: oneRuntime{newFake()}, Metrics: stats.New(metrics.NewSet(), stats.Gauges{}),
		Log: slog.New(slog.DiscardHandler), Ready: func() bool { return true },
		RequestTimeout: 30 * time.Second, MaxBodyBytes: 10 << 20,
		Uploads: budget.New(96 << 20), UploadWait: 2 * time.Second, MaxElements: 16,
	})
	srv := &fasthttp.Server{
		Handler: api.Handler, ErrorHandler: api.ErrorHandler, ExpectHandler: api.ExpectHandler,
		StreamRequestBody: true, DisablePreParseMultipartForm: true, MaxRequestBodySize: api.MaxRequestBody(),
	}
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(ln)
	defer srv.Shutdown()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}

	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://batchgate/predict?top_k=2")
	req.Header.SetMethod("POST")
	req.Header.SetContentType("image/jpeg")
	req.SetBodyString("the image's bytes")
	if err := client.Do(req, resp); err != nil {
		panic(err)
	}
	var answer struct {
		Predictions []struct{ Label string }
	}
	json.Unmarshal(resp.Body(), &answer)
	fmt.Println(resp.StatusCode(), answer.Predictions)
	// Output: 200 [{l9} {l8}]
}
