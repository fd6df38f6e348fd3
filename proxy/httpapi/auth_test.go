package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/tracing"
)

// authKeys are the test's API keys: full (every scope), meta (metadata
// only) and slow (predict, one request per 1000 s).
type authKeys struct {
	full, meta, slow string
	entries          []auth.Key
}

func newAuthKeys(t *testing.T) authKeys {
	t.Helper()
	var k authKeys
	for _, e := range []struct {
		dst    *string
		id     string
		scopes []auth.Scope
		rate   float64
	}{
		{&k.full, "full", []auth.Scope{auth.Predict, auth.Metadata}, 0},
		{&k.meta, "meta", []auth.Scope{auth.Metadata}, 0},
		{&k.slow, "slow", []auth.Scope{auth.Predict}, 0.001},
	} {
		key, sum, err := auth.GenerateKey(e.id)
		if err != nil {
			t.Fatal(err)
		}
		*e.dst = key
		k.entries = append(k.entries, auth.Key{ID: e.id, SHA256: sum, Scopes: e.scopes, Rate: e.rate})
	}
	return k
}

func keysFileData(entries ...auth.Key) []byte {
	b := []byte("keys:\n")
	for _, e := range entries {
		b = append(b, e.Entry()...)
	}
	return b
}

// writeKeysFile replaces path's content atomically, as a Secret volume's
// swap does.
func writeKeysFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// authServer is a test server checking keys from a keys file in a
// temporary directory.
type authServer struct {
	*testServer
	keys    authKeys
	path    string
	auth    *auth.Authenticator
	authSet *metrics.Set
}

func startAuthServer(t *testing.T, poll time.Duration) *authServer {
	t.Helper()
	keys := newAuthKeys(t)
	path := filepath.Join(t.TempDir(), "keys.yaml")
	writeKeysFile(t, path, keysFileData(keys.entries...))
	parsed, sum, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	a := auth.New(parsed, sum, auth.Config{File: path, Poll: poll, Metrics: set})
	ts := startServer(t, func(c *Config) { c.Auth = a })
	return &authServer{testServer: ts, keys: keys, path: path, auth: a, authSet: set}
}

// authCounter reads one series of the authenticator's set; a series the
// set lacks fails the test.
func (as *authServer) authCounter(t *testing.T, name string) float64 {
	t.Helper()
	return setCounter(t, as.authSet, name)
}

func withHeader(req *http.Request, kv ...string) *http.Request {
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return req
}

func TestAuth(t *testing.T) {
	ts := startAuthServer(t, time.Hour)
	k := ts.keys
	_, fullSecret, _ := strings.Cut(k.full, ".")
	infer := []byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}]}`)
	png := []byte("png")
	for i, tc := range []struct {
		name   string
		req    *http.Request
		status int
		keyID  string // in the request log
	}{
		{"no key", ts.post("/predict", "image/png", png), 401, ""},
		{"wrong secret", withHeader(ts.post("/predict", "image/png", png), "Authorization", "Bearer full."+strings.Repeat("A", 43)), 401, ""},
		{"unknown id", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", "nobody."+fullSecret), 401, ""},
		{"another key's secret", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", "meta."+fullSecret), 401, ""},
		{"malformed", withHeader(ts.post("/predict", "image/png", png), "Authorization", "Basic dXNlcjpwYXNz"), 401, ""},
		{"Bearer", withHeader(ts.post("/predict", "image/png", png), "Authorization", "Bearer "+k.full), 200, "full"},
		{"bearer in lower case", withHeader(ts.post("/predict", "image/png", png), "Authorization", "bearer "+k.full), 200, "full"},
		{"X-API-Key", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", k.full), 200, "full"},
		{"Authorization wins", withHeader(ts.post("/predict", "image/png", png), "Authorization", "Bearer "+k.full, "X-API-Key", "junk"), 200, "full"},
		{"without the scope", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", k.meta), 403, "meta"},
		{"infer without the scope", withHeader(ts.post("/v2/models/resnet50/infer", "application/json", infer), "X-API-Key", k.meta), 403, "meta"},
		{"infer", withHeader(ts.post("/v2/models/resnet50/infer", "application/json", infer), "X-API-Key", k.full), 200, "full"},
		{"infer without a key", ts.post("/v2/models/resnet50/infer", "application/json", infer), 401, ""},
		{"server metadata", withHeader(ts.get("/v2"), "X-API-Key", k.meta), 200, "meta"},
		{"server metadata without a key", ts.get("/v2"), 401, ""},
		{"model metadata", withHeader(ts.get("/v2/models/resnet50"), "Authorization", "Bearer "+k.meta), 200, "meta"},
		{"model metadata without the scope", withHeader(ts.get("/v2/models/resnet50"), "X-API-Key", k.slow), 403, "slow"},
		{"model ready", withHeader(ts.get("/v2/models/resnet50/ready"), "X-API-Key", k.meta), 200, "meta"},
		{"model ready without a key", ts.get("/v2/models/resnet50/ready"), 401, ""},
		{"unknown model", withHeader(ts.get("/v2/models/other"), "X-API-Key", k.meta), 404, "meta"},
		// Exempt: no key needed.
		{"healthz", ts.get("/healthz"), 200, ""},
		{"readyz", ts.get("/readyz"), 200, ""},
		{"OIP live", ts.get("/v2/health/live"), 200, ""},
		{"OIP ready", ts.get("/v2/health/ready"), 200, ""},
		{"docs", ts.get("/docs"), 200, ""},
		{"OpenAPI", ts.get("/openapi.json"), 200, ""},
		{"unknown route", ts.get("/nope"), 404, ""},
		{"unknown v2 route", ts.get("/v2/nope"), 404, ""},
		{"exempt with a bad key", withHeader(ts.get("/healthz"), "X-API-Key", "junk"), 200, ""},
	} {
		id := fmt.Sprintf("auth-%d", i)
		tc.req.Header.Set("X-Request-Id", id)
		r := ts.do(t, tc.req)
		if r.status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, r.status, r.raw, tc.status)
			continue
		}
		switch tc.status {
		case 401:
			if r.jsonError() != unauthorized || r.header.Get("WWW-Authenticate") != `Bearer realm="batchgate"` {
				t.Errorf("%s: %s, WWW-Authenticate %q", tc.name, r.raw, r.header.Get("WWW-Authenticate"))
			}
		case 403:
			if e := r.jsonError(); !strings.Contains(e, `"`+tc.keyID+`"`) || !strings.Contains(e, "scope") {
				t.Errorf("%s: %s; want the key id and the scope named", tc.name, r.raw)
			}
		}
		if tc.status != 401 && r.header.Get("WWW-Authenticate") != "" {
			t.Errorf("%s: WWW-Authenticate on %d", tc.name, r.status)
		}
		for _, key := range []string{k.full, k.meta, k.slow, fullSecret} {
			if bytes.Contains(r.raw, []byte(key)) {
				t.Errorf("%s: the answer echoes a key: %s", tc.name, r.raw)
			}
		}
		if p := tc.req.URL.Path; p == "/healthz" || p == "/readyz" {
			continue // not logged
		}
		found := false
		for _, l := range logLines(ts.log) {
			if l["request_id"] == id {
				found = true
				if l["key_id"] != tc.keyID {
					t.Errorf("%s: logged with key_id %v, want %q", tc.name, l["key_id"], tc.keyID)
				}
			}
		}
		if !found {
			t.Errorf("%s: no request log line", tc.name)
		}
	}
	if strings.Contains(ts.log.String(), fullSecret) {
		t.Error("a secret is logged")
	}
	if got := ts.fc.callCount(); got != 5 {
		t.Errorf("the classifier ran %d times, want 5 (the allowed predictions only)", got)
	}
	for name, want := range map[string]float64{
		`inference_requests_total{route="/predict",code="401"}`:            5,
		`inference_requests_total{route="/predict",code="403"}`:            1,
		`inference_requests_total{route="/v2/models/metadata",code="403"}`: 1,
	} {
		if got := ts.counter(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for name, want := range map[string]float64{
		`auth_requests_total{key="full"}`:                5,
		`auth_requests_total{key="meta"}`:                4,
		`auth_rejected_total{reason="missing"}`:          4,
		`auth_rejected_total{reason="bad_secret"}`:       2,
		`auth_rejected_total{reason="scope",key="meta"}`: 2,
		`auth_rejected_total{reason="scope",key="slow"}`: 1,
		`auth_rejected_total{reason="unknown_key"}`:      1,
		`auth_rejected_total{reason="malformed"}`:        1,
	} {
		if got := ts.authCounter(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// A key over its rate gets 429 with Retry-After in whole seconds, at least
// 1.
func TestAuthRateLimit(t *testing.T) {
	ts := startAuthServer(t, time.Hour)
	req := func() *http.Request {
		return withHeader(ts.post("/predict", "image/png", []byte("png")), "X-API-Key", ts.keys.slow)
	}
	if r := ts.do(t, req()); r.status != 200 {
		t.Fatalf("first request: %d %s", r.status, r.raw)
	}
	r := ts.do(t, req())
	retry, err := strconv.Atoi(r.header.Get("Retry-After"))
	if r.status != 429 || err != nil || retry < 1 || retry > 1000 || !strings.Contains(r.jsonError(), `"slow" is over its rate limit`) {
		t.Errorf("second request: %d %s, Retry-After %q; want 429 with Retry-After in [1, 1000]", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if ts.fc.callCount() != 1 || ts.authCounter(t, `auth_rejected_total{reason="rate",key="slow"}`) != 1 {
		t.Errorf("classifier calls %d, rate rejections %v", ts.fc.callCount(), ts.authCounter(t, `auth_rejected_total{reason="rate",key="slow"}`))
	}
	found := false
	for _, l := range logLines(ts.log) {
		if l["status"] == 429.0 && l["key_id"] == "slow" {
			found = true
		}
	}
	if !found {
		t.Errorf("no request log line with the key id of the 429: %s", ts.log.String())
	}
}

// readAnswer reads one answer on conn, within 5 s.
func readAnswer(conn net.Conn, br *bufio.Reader) (*http.Response, []byte, error) {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	raw, err := io.ReadAll(resp.Body)
	return resp, raw, err
}

// With "Expect: 100-continue" a request without a right key, or with a key
// out of tokens, is refused before its body is sent; a right key gets 100
// Continue, and its token is taken when the body comes.
func TestAuthExpect(t *testing.T) {
	ts := startAuthServer(t, time.Hour)
	body := make([]byte, 50_000)
	for _, tc := range []struct {
		name   string
		extra  []string
		status int
		after  int // with 100: the status once the body is sent
	}{
		{"no key", nil, 401, 0},
		{"wrong key", []string{"X-API-Key: full." + strings.Repeat("x", 43)}, 401, 0},
		{"without the scope", []string{"X-API-Key: " + ts.keys.meta}, 403, 0},
		{"right key", []string{"Authorization: Bearer " + ts.keys.full}, 100, 200},
		{"limited key", []string{"X-API-Key: " + ts.keys.slow}, 100, 200},
		// Its one token went to that body: 429 before this one is sent.
		{"limited key again", []string{"X-API-Key: " + ts.keys.slow}, 429, 0},
	} {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		// Only the head: the answer must come without the body.
		if _, err := io.WriteString(conn, head("/predict", "image/png", len(body), append(tc.extra, "Expect: 100-continue")...)); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, raw, err := readAnswer(conn, br)
		if err != nil {
			t.Errorf("%s: %v (the server waited for the body?)", tc.name, err)
			conn.Close()
			continue
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, resp.StatusCode, raw, tc.status)
		}
		switch tc.status {
		case 100:
			if _, err := conn.Write(body); err != nil {
				t.Errorf("%s: sending the body: %v", tc.name, err)
			} else if resp, raw, err := readAnswer(conn, br); err != nil || resp.StatusCode != tc.after {
				t.Errorf("%s: after the body: %v %s %v; want %d", tc.name, resp, raw, err, tc.after)
			}
		case 401:
			checkJSON(t, tc.name, resp, raw, 401, "API key")
			if resp.Header.Get("WWW-Authenticate") == "" || !resp.Close {
				t.Errorf("%s: WWW-Authenticate %q, close %v", tc.name, resp.Header.Get("WWW-Authenticate"), resp.Close)
			}
		case 403:
			checkJSON(t, tc.name, resp, raw, 403, "scope")
		case 429:
			checkJSON(t, tc.name, resp, raw, 429, "rate limit")
			if resp.Header.Get("Retry-After") == "" {
				t.Errorf("%s: 429 without Retry-After", tc.name)
			}
		}
		conn.Close()
	}
	if got := ts.fc.callCount(); got != 2 {
		t.Errorf("the classifier ran %d times, want 2", got)
	}
	// The refusals, where the handler never ran, are counted and logged.
	if got := ts.counter(t, `inference_requests_total{route="/predict",code="401"}`); got != 2 {
		t.Errorf("%v 401s counted, want 2", got)
	}
	refused := 0
	for _, l := range logLines(ts.log) {
		if l["msg"] == "request refused before its body" {
			refused++
			if l["status"] == 403.0 && l["key_id"] != "meta" {
				t.Errorf("refusal logged without the key id: %v", l)
			}
		}
	}
	if refused != 4 {
		t.Errorf("%d refusals logged, want 4", refused)
	}
	// The slow key's one token went to its first body; the second was
	// refused before its body.
	if got := ts.authCounter(t, `auth_rejected_total{reason="rate",key="slow"}`); got != 1 {
		t.Errorf("%v rate rejections, want 1 (the second limited request, before its body)", got)
	}
}

// Without Expect the client sends its whole body before it reads: a
// refused request's body is read and dropped, so it gets its 401, not a
// reset, and the connection closes.
func TestAuthLargeBody(t *testing.T) {
	ts := startAuthServer(t, time.Hour)
	// 32 MiB is more than loopback's socket buffers hold (unread, they
	// would be reset on close) and less than maxSkip.
	for _, n := range []int{testMaxBody, 3 * ts.api.MaxRequestBody(), 32 << 20} {
		resp, raw, conn, err := rawRequest(ts.addr, head("/predict", "image/png", n), make([]byte, n))
		if err != nil {
			t.Errorf("%d bytes: %v", n, err)
			continue
		}
		conn.Close()
		checkJSON(t, fmt.Sprintf("%d bytes", n), resp, raw, 401, "API key")
		if !resp.Close {
			t.Errorf("%d bytes: the connection stays open", n)
		}
	}
	// A body-less request keeps its connection.
	r := ts.do(t, ts.get("/v2"))
	if r.status != 401 || r.close {
		t.Errorf("GET /v2 without a key: %d, close %v; want 401 on a kept connection", r.status, r.close)
	}
	if ts.fc.callCount() != 0 {
		t.Errorf("the classifier ran %d times", ts.fc.callCount())
	}
	ts.checkUploadsFree(t, "after the refusals")
}

// The keys file is rewritten three times (once invalid) while requests
// with a key that every version lists keep coming: all get 200, and
// requests were sent after every reload, not only before the first.
func TestAuthReloadUnderLoad(t *testing.T) {
	ts := startAuthServer(t, 5*time.Millisecond)
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() { defer close(ran); ts.auth.Run(ctx) }()
	defer func() { cancel(); <-ran }()

	// phase is the number of reloads the test has seen; sent[p] counts
	// the requests sent in phase p.
	var phase atomic.Int32
	var sent [4]atomic.Int32
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 100_000; i++ { // until the rewrites end (a bound for a hung test)
				if i >= 10 {
					select {
					case <-done:
						return
					default:
					}
				}
				sent[phase.Load()].Add(1)
				r := ts.do(t, withHeader(ts.post("/predict", "image/png", []byte("png")), "Authorization", "Bearer "+ts.keys.full))
				mu.Lock()
				statuses[r.status]++
				mu.Unlock()
			}
		})
	}
	// waitFor waits (at most 10 s) for the watcher to see the rewrite,
	// then for the load to go on after it.
	waitFor := func(name string, want float64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ts.authCounter(t, name) < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not reach %v", name, want)
			}
		}
		p := phase.Add(1)
		for deadline := time.Now().Add(10 * time.Second); sent[p].Load() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no request sent in 10 s after reload %d (%s): the load did not overlap the reloads", p, name)
			}
		}
	}
	extra, sum, _ := auth.GenerateKey("extra")
	entries := append(slices.Clone(ts.keys.entries), auth.Key{ID: "extra", SHA256: sum, Scopes: []auth.Scope{auth.Predict}})
	writeKeysFile(t, ts.path, keysFileData(entries...))
	waitFor(`auth_reloads_total{result="applied"}`, 1)
	writeKeysFile(t, ts.path, []byte("keys:\n  - {id: full, sha256: not-hex, scopes: [predict]}\n"))
	waitFor(`auth_reloads_total{result="rejected"}`, 1)
	entries[0].Scopes = []auth.Scope{auth.Predict} // full loses metadata
	writeKeysFile(t, ts.path, keysFileData(entries...))
	waitFor(`auth_reloads_total{result="applied"}`, 2)
	close(done)
	wg.Wait()

	total := 0
	for _, n := range statuses {
		total += n
	}
	if statuses[200] != total || total < 40 {
		t.Errorf("statuses %v; want every one of at least 40 requests 200", statuses)
	}
	for p := range sent {
		if sent[p].Load() == 0 {
			t.Errorf("no request sent after reload %d of 3: the load did not overlap the reloads", p)
		}
	}
	if r := ts.do(t, withHeader(ts.get("/v2"), "X-API-Key", ts.keys.full)); r.status != 403 {
		t.Errorf("after the last file, full on /v2: %d; want 403", r.status)
	}
	if r := ts.do(t, withHeader(ts.post("/predict", "image/png", []byte("png")), "X-API-Key", extra)); r.status != 200 {
		t.Errorf("the added key: %d %s", r.status, r.raw)
	}
	t.Logf("statuses %v", statuses)
}

// Without Auth nothing changes: no key needed, none checked.
func TestAuthNil(t *testing.T) {
	ts := startServer(t, nil)
	for _, req := range []*http.Request{
		ts.post("/predict", "image/png", []byte("png")),
		withHeader(ts.post("/predict", "image/png", []byte("png")), "Authorization", "Basic junk"),
		ts.get("/v2"),
	} {
		if r := ts.do(t, req); r.status != 200 || r.header.Get("WWW-Authenticate") != "" {
			t.Errorf("%s %s: %d %s", req.Method, req.URL.Path, r.status, r.raw)
		}
	}
	resp, _, conn, err := rawRequest(ts.addr, head("/predict", "image/png", 3, "Expect: 100-continue"), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if resp.StatusCode != 100 {
		t.Errorf("Expect without a key: %d, want 100", resp.StatusCode)
	}
}

// startKeyServer starts a server checking entries (their SHA256 filled in
// here from fresh keys), after change, and returns the keys by id. Without
// entries the server has no Auth.
func startKeyServer(t *testing.T, entries []auth.Key, change func(*Config)) (*testServer, map[string]string, *metrics.Set) {
	t.Helper()
	keys := map[string]string{}
	set := metrics.NewSet()
	var a *auth.Authenticator
	if entries != nil {
		for i := range entries {
			key, sum, err := auth.GenerateKey(entries[i].ID)
			if err != nil {
				t.Fatal(err)
			}
			keys[entries[i].ID], entries[i].SHA256 = key, sum
		}
		parsed, err := auth.Parse(keysFileData(entries...))
		if err != nil {
			t.Fatal(err)
		}
		a = auth.New(parsed, [32]byte{}, auth.Config{Metrics: set})
	}
	ts := startServer(t, func(c *Config) {
		c.Auth = a
		if change != nil {
			change(c)
		}
	})
	return ts, keys, set
}

// setCounter reads one series of set, by its full name with labels; a
// series the set lacks fails the test.
func setCounter(t *testing.T, set *metrics.Set, name string) float64 {
	t.Helper()
	return testenv.SetMetrics(t, set).Value(t, name)
}

// inferBody is an OIP JSON request of n BYTES images ("hi" each).
func inferBody(n int) []byte {
	data := strings.TrimSuffix(strings.Repeat(`"aGk=",`, n), ",")
	return fmt.Appendf(nil, `{"inputs":[{"name":"image","shape":[%d],"datatype":"BYTES","data":[%s]}]}`, n, data)
}

// spansOfTrace returns the recorded spans of trace id (hex).
func spansOfTrace(rec *tracetest.SpanRecorder, id string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID().String() == id {
			out = append(out, s)
		}
	}
	return out
}

// A request refused by auth (401, 403 or 429) starts no span, whatever
// its traceparent says: an unauthenticated caller cannot fill the
// exporter's queue. An allowed one with the same traceparent is traced.
func TestAuthRefusedNoSpan(t *testing.T) {
	rec := traceRecorder()
	ts, keys, _ := startKeyServer(t, []auth.Key{
		{ID: "full", Scopes: []auth.Scope{auth.Predict, auth.Metadata}},
		{ID: "meta", Scopes: []auth.Scope{auth.Metadata}},
		{ID: "slow", Scopes: []auth.Scope{auth.Predict}, Rate: 0.001},
	}, func(c *Config) { c.Tracing = true })
	png := []byte("png")
	for i, tc := range []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"no key", ts.post("/predict", "image/png", png), 401},
		{"wrong key", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", "full."+strings.Repeat("A", 43)), 401},
		{"without the scope", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["meta"]), 403},
		{"limited, first", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["slow"]), 200},
		{"limited, over its rate", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["slow"]), 429},
		{"allowed", withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["full"]), 200},
	} {
		id := fmt.Sprintf("%032x", 0xa0000+i)
		tc.req.Header.Set("traceparent", "00-"+id+"-00f067aa0ba902b7-01")
		if r := ts.do(t, tc.req); r.status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, r.status, r.raw, tc.status)
			continue
		}
		spans := spansOfTrace(rec, id)
		if tc.status == 200 {
			if len(spans) == 0 {
				t.Errorf("%s: no span; want the authenticated request's sampled traceparent honoured", tc.name)
			}
		} else if len(spans) != 0 {
			t.Errorf("%s: %d spans (%s) for a request refused with %d; want none", tc.name, len(spans), spans[0].Name(), tc.status)
		}
	}
}

// TRACING_TRUST_REMOTE: by default (authenticated) a sampled traceparent
// is honoured only for a request whose key authenticated; without keys
// nobody is, so the local sampler (never, here) decides, and the trace id
// is still continued. always keeps the old behaviour; never ignores even
// authenticated callers.
func TestTraceTrustRemote(t *testing.T) {
	rec := traceRecorder()
	entries := func() []auth.Key { return []auth.Key{{ID: "full", Scopes: []auth.Scope{auth.Predict, auth.Metadata}}} }
	for i, tc := range []struct {
		name    string
		trust   tracing.TrustRemote
		keys    []auth.Key
		sendKey bool
		path    string
		traced  bool
	}{
		{"default, no keys", "", nil, false, "/v2", false},
		{"authenticated, no keys", tracing.TrustAuthenticated, nil, false, "/v2", false},
		{"default, authenticated", "", entries(), true, "/v2", true},
		{"default, exempt route", "", entries(), false, "/v2/health/ready", false},
		{"always, no keys", tracing.TrustAlways, nil, false, "/v2", true},
		{"always, exempt route", tracing.TrustAlways, entries(), false, "/v2/health/ready", true},
		{"never, authenticated", tracing.TrustNever, entries(), true, "/v2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts, keys, _ := startKeyServer(t, tc.keys, func(c *Config) { c.Tracing, c.TrustRemoteSampling = true, tc.trust })
			id := fmt.Sprintf("%032x", 0xb0000+i)
			req := ts.get(tc.path)
			req.Header.Set("traceparent", "00-"+id+"-00f067aa0ba902b7-01")
			req.Header.Set("X-Request-Id", "trust-"+strconv.Itoa(i))
			if tc.sendKey {
				req.Header.Set("X-API-Key", keys["full"])
			}
			if r := ts.do(t, req); r.status != 200 {
				t.Fatalf("%d %s", r.status, r.raw)
			}
			spans := spansOfTrace(rec, id)
			if got := len(spans) == 1; got != tc.traced || len(spans) > 1 {
				t.Errorf("%d spans; want traced %v", len(spans), tc.traced)
			}
			if len(spans) == 1 && (!spans[0].Parent().IsRemote() || spans[0].Parent().SpanID().String() != "00f067aa0ba902b7") {
				t.Errorf("span's parent %v, want the incoming span", spans[0].Parent())
			}
			if tc.path == "/v2/health/ready" {
				return
			}
			for _, l := range logLines(ts.log) {
				if l["request_id"] == "trust-"+strconv.Itoa(i) && (l["trace_id"] != id || l["trace_sampled"] != tc.traced) {
					t.Errorf("logged trace_id %v sampled %v; want the incoming trace continued, sampled %v", l["trace_id"], l["trace_sampled"], tc.traced)
				}
			}
		})
	}
}

// A key's rate counts images: 16 images in one OIP request from a key of
// 1 image a second (burst 1) get 429, with no Retry-After (no wait lets
// 16 through at once) and a message saying how to split them; a request
// the bucket cannot cover yet gets 429 with the wait for all its images.
// Nothing reaches the model.
func TestAuthImageRate(t *testing.T) {
	ts, keys, set := startKeyServer(t, []auth.Key{
		{ID: "one", Scopes: []auth.Scope{auth.Predict}, Rate: 1, Burst: 1},
		{ID: "four", Scopes: []auth.Scope{auth.Predict}, Rate: 1, Burst: 4},
		{ID: "free", Scopes: []auth.Scope{auth.Predict}},
	}, func(c *Config) { c.MaxElements = 16 })
	infer := func(key string, n int) response {
		return ts.do(t, withHeader(ts.post("/v2/models/resnet50/infer", "application/json", inferBody(n)), "X-API-Key", key))
	}
	r := infer(keys["one"], 16)
	if r.status != 429 || r.header.Get("Retry-After") != "" || !strings.Contains(r.jsonError(), `"one" may have at most 1 images per request`) {
		t.Errorf("16 images, 1/s burst 1: %d %s, Retry-After %q; want 429 saying at most 1, no Retry-After", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if calls := ts.fc.callCount(); calls != 0 {
		t.Errorf("the model ran %d images of the refused request", calls)
	}
	if r := infer(keys["four"], 3); r.status != 200 {
		t.Errorf("3 images of a burst of 4: %d %s", r.status, r.raw)
	}
	// 1 token left: Check takes it, 3 more are missing; the bucket holds
	// 4 again in about 4 s.
	r = infer(keys["four"], 4)
	retry, err := strconv.Atoi(r.header.Get("Retry-After"))
	if r.status != 429 || err != nil || retry < 3 || retry > 4 || !strings.Contains(r.jsonError(), "over its rate limit") {
		t.Errorf("4 images on 1 token: %d %s, Retry-After %q; want 429 retry after 3-4 s", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if r := infer(keys["free"], 16); r.status != 200 {
		t.Errorf("16 images, unlimited key: %d %s", r.status, r.raw)
	}
	if got := setCounter(t, set, `auth_rejected_total{reason="rate",key="one"}`); got != 1 {
		t.Errorf("rate rejections of one = %v, want 1", got)
	}
	if got := ts.rejections(t, "auth_rate"); got != 2 {
		t.Errorf("inference_rejections_total{reason=auth_rate} = %v, want 2", got)
	}
}

// heldClassifier holds every image whose bytes are "hold" until release is
// closed, and tells entered when it does.
type heldClassifier struct {
	*fakeClassifier
	entered chan struct{}
	release chan struct{}
}

func (h heldClassifier) Classify(ctx context.Context, data []byte, lease *budget.Lease, noCache bool) (*classify.Outcome, error) {
	if string(data) == "hold" {
		h.entered <- struct{}{}
		select {
		case <-h.release:
		case <-ctx.Done():
			lease.Release()
			return nil, ctx.Err()
		}
	}
	return h.fakeClassifier.Classify(ctx, data, lease, noCache)
}

// max_concurrent_images bounds a key's images in flight, /predict's and
// OIP's together: with 1 of 2 held, 2 more get 429 with Retry-After, 3 can
// never pass (no Retry-After), and once the held one is answered 2 pass.
// Another key is not held back.
func TestAuthImageConcurrency(t *testing.T) {
	held := heldClassifier{entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts, keys, set := startKeyServer(t, []auth.Key{
		{ID: "two", Scopes: []auth.Scope{auth.Predict}, MaxConcurrentImages: 2},
		{ID: "other", Scopes: []auth.Scope{auth.Predict}, MaxConcurrentImages: 2},
	}, func(c *Config) {
		held.fakeClassifier = c.Router.(oneRuntime).cls.(*fakeClassifier)
		c.Router, c.MaxElements = oneRuntime{held}, 16
	})
	infer := func(key string, n int) response {
		return ts.do(t, withHeader(ts.post("/v2/models/resnet50/infer", "application/json", inferBody(n)), "X-API-Key", key))
	}
	first := make(chan response, 1)
	go func() {
		first <- ts.do(t, withHeader(ts.post("/predict", "image/png", []byte("hold")), "X-API-Key", keys["two"]))
	}()
	select {
	case <-held.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the held request never reached the model")
	}
	r := infer(keys["two"], 2)
	if r.status != 429 || r.header.Get("Retry-After") != "1" || !strings.Contains(r.jsonError(), "limit of images in flight") {
		t.Errorf("2 more images with 1 of 2 in flight: %d %s, Retry-After %q; want 429 retry after 1", r.status, r.raw, r.header.Get("Retry-After"))
	}
	r = infer(keys["two"], 3)
	if r.status != 429 || r.header.Get("Retry-After") != "" || !strings.Contains(r.jsonError(), "at most 2 images in flight") {
		t.Errorf("3 images, limit 2: %d %s, Retry-After %q; want 429 with no Retry-After", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if r := infer(keys["other"], 2); r.status != 200 {
		t.Errorf("another key's 2 images: %d %s", r.status, r.raw)
	}
	if r := infer(keys["two"], 1); r.status != 200 {
		t.Errorf("1 more image, to 2 of 2: %d %s", r.status, r.raw)
	}
	close(held.release)
	if r := <-first; r.status != 200 {
		t.Errorf("the held request: %d %s", r.status, r.raw)
	}
	if r := infer(keys["two"], 2); r.status != 200 {
		t.Errorf("2 images once the held one is answered: %d %s", r.status, r.raw)
	}
	if got := setCounter(t, set, `auth_rejected_total{reason="concurrency",key="two"}`); got != 2 {
		t.Errorf("concurrency rejections = %v, want 2", got)
	}
}

// fakeRouter routes over two versions of the fake's model: v1 (weight 1)
// and v2 (weight 0, reachable only explicitly).
type fakeRouter struct{ cls Classifier }

func (fakeRouter) Declared() bool { return true }

func (r fakeRouter) LastModel(string, string) (wire.Info, bool) { return r.cls.LastModel() }

func (r fakeRouter) Route(name, version string, _ RouteKeys) (*Routed, error) {
	switch {
	case name != "" && name != testInfo.Model:
		return nil, &NotFoundError{Msg: "unknown model"}
	case version == "":
		version = "v1"
	case version != "v1" && version != "v2":
		return nil, &NotFoundError{Msg: "unknown version"}
	}
	return &Routed{Version: version, Classifier: r.cls, Done: func(int, time.Duration) {}}, nil
}

func (r fakeRouter) Versions(name string) ([]VersionStatus, bool) {
	if name != testInfo.Model {
		return nil, false
	}
	return []VersionStatus{{Name: "v1", Ready: true, Weight: 1}, {Name: "v2", Ready: true}}, true
}

// Choosing a model version needs the versions scope: a key without it gets
// 403 naming the scope, on /predict's X-Model-Version, on OIP's
// /versions/{v}/infer, and before the body with Expect: 100-continue; it
// is still routed by weight without a version, and reads versioned
// metadata. Without keys (auth off) explicit versions stay open.
func TestAuthVersionsScope(t *testing.T) {
	routed := func(c *Config) { c.Router = fakeRouter{c.Router.(oneRuntime).cls} }
	ts, keys, set := startKeyServer(t, []auth.Key{
		{ID: "plain", Scopes: []auth.Scope{auth.Predict, auth.Metadata}},
		{ID: "chooser", Scopes: []auth.Scope{auth.Predict, auth.Versions}},
	}, routed)
	open, _, _ := startKeyServer(t, nil, routed)
	png, infer := []byte("png"), inferBody(1)
	for _, tc := range []struct {
		name    string
		ts      *testServer
		req     *http.Request
		status  int
		version string // model_version answered
	}{
		{"predict, no version", ts, withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["plain"]), 200, "v1"},
		{"predict, X-Model-Version without the scope", ts,
			withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["plain"], "X-Model-Version", "v2"), 403, ""},
		{"predict, X-Model-Version with the scope", ts,
			withHeader(ts.post("/predict", "image/png", png), "X-API-Key", keys["chooser"], "X-Model-Version", "v2"), 200, "v2"},
		{"infer, no version", ts, withHeader(ts.post("/v2/models/resnet50/infer", "application/json", infer), "X-API-Key", keys["plain"]), 200, ""},
		{"infer, a version without the scope", ts,
			withHeader(ts.post("/v2/models/resnet50/versions/v2/infer", "application/json", infer), "X-API-Key", keys["plain"]), 403, ""},
		{"infer, a version with the scope", ts,
			withHeader(ts.post("/v2/models/resnet50/versions/v2/infer", "application/json", infer), "X-API-Key", keys["chooser"]), 200, ""},
		{"versioned metadata needs metadata only", ts, withHeader(ts.get("/v2/models/resnet50/versions/v2"), "X-API-Key", keys["plain"]), 200, ""},
		{"auth off: X-Model-Version", open, withHeader(open.post("/predict", "image/png", png), "X-Model-Version", "v2"), 200, "v2"},
		{"auth off: a version", open, open.post("/v2/models/resnet50/versions/v2/infer", "application/json", infer), 200, ""},
	} {
		r := tc.ts.do(t, tc.req)
		if r.status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, r.status, r.raw, tc.status)
			continue
		}
		if v, _ := r.body["model_version"].(string); tc.version != "" && v != tc.version {
			t.Errorf("%s: model_version %q, want %q", tc.name, v, tc.version)
		}
		if tc.status == 403 && !strings.Contains(r.jsonError(), `"plain" does not have the "versions" scope needed to choose a model version`) {
			t.Errorf("%s: %s; want the versions scope named", tc.name, r.raw)
		}
	}
	resp, raw, conn, err := rawRequest(ts.addr, head("/predict", "image/png", 50_000, "X-API-Key: "+keys["plain"],
		"X-Model-Version: v2", "Expect: 100-continue"), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	checkJSON(t, "Expect with a version, without the scope", resp, raw, 403, `"versions" scope`)
	if got := setCounter(t, set, `auth_rejected_total{reason="scope",key="plain"}`); got != 3 {
		t.Errorf("scope rejections of plain = %v, want 3", got)
	}
}
