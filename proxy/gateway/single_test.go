package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from today's answers")

// TestSingleRuntimeAnswers: without a routing file the proxy answers
// exactly as it did before a single runtime became a routing table of one
// model and one version: the status, headers and JSON bodies of /predict,
// the OIP routes and their errors, with the runtime up and with none, and
// the names of the series /metrics shows. testdata/single_runtime.golden
// holds the answers recorded before the change (go test -run
// TestSingleRuntimeAnswers -update rewrites it).
func TestSingleRuntimeAnswers(t *testing.T) {
	var got bytes.Buffer
	// No runtime yet: every model route is unavailable.
	tp := startProxyNoWait(t, testConfig(filepath.Join(t.TempDir(), "none.sock")))
	recordAnswers(t, &got, "no runtime", tp, goldenRequests(t, tp.url)[:10])
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp = startProxy(t, testConfig(rt.socket))
	recordAnswers(t, &got, "runtime up", tp, goldenRequests(t, tp.url))
	compareGolden(t, "testdata/single_runtime.golden", got.Bytes())
}

// goldenRequests are the requests TestSingleRuntimeAnswers records; the
// first ten need no runtime to be answered the same way each time.
func goldenRequests(t *testing.T, url string) []*http.Request {
	png := testenv.UniquePNG(11)
	b64 := base64.StdEncoding.EncodeToString(png)
	bytesInfer := fmt.Sprintf(`{"id":"g1","inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}],
		"outputs":[{"name":"classification","parameters":{"classification":2}}]}`, b64)
	getReq := func(path string) *http.Request { r, _ := http.NewRequest("GET", url+path, nil); return r }
	withHeader := func(r *http.Request, k, v string) *http.Request { r.Header.Set(k, v); return r }
	return []*http.Request{
		getReq("/readyz"),
		getReq("/v2/health/ready"),
		getReq("/v2/models/resnet50"),
		getReq("/v2/models/resnet50/ready"),
		getReq("/v2/models/resnet50/versions/2"),
		getReq("/v2/models/resnet50/versions/2/infer"),
		rawReq(url+"/predict?top_k=2", "image/png", png),
		rawReq(url+"/v2/models/resnet50/infer", "application/json", []byte(bytesInfer)),
		getReq("/v2/models/resnet50/a/b/c"),
		getReq("/v2/other"),
		// The runtime is up from here on.
		getReq("/healthz"),
		getReq("/v2"),
		getReq("/v2/health/live"),
		getReq("/v2/models/resnet50/versions/1"),
		getReq("/v2/models/resnet50/versions/1/ready"),
		getReq("/v2/models/resnet50/versions/"),
		getReq("/v2/models/other"),
		getReq("/v2/models/other/ready"),
		getReq("/v2/models/resnet50/bogus"),
		getReq("/v2/models/resnet50/infer"),
		rawReq(url+"/predict?top_k=2", "image/png", png),
		rawReq(url+"/predict?top_k=2", "image/png", png), // cached
		withHeader(rawReq(url+"/predict?top_k=1", "image/png", testenv.UniquePNG(12)), "X-Model-Version", "7"),
		rawReq(url+"/predict?top_k=abc", "image/png", png),
		rawReq(url+"/predict", "text/plain", png),
		getReq("/predict"),
		rawReq(url+"/v2/models/resnet50/infer", "application/json", []byte(bytesInfer)),
		rawReq(url+"/v2/models/resnet50/versions/1/infer", "application/json", []byte(bytesInfer)),
		rawReq(url+"/v2/models/other/infer", "application/json", []byte(bytesInfer)),
		rawReq(url+"/v2/models/resnet50/infer", "application/json", []byte("{")),
	}
}

// recordAnswers writes each request's answer, then the series names of
// the proxy's /metrics, to w: volatile values (timings, request ids,
// dates, metric values) left out.
func recordAnswers(t *testing.T, w *bytes.Buffer, title string, tp *testProxy, reqs []*http.Request) {
	t.Helper()
	fmt.Fprintf(w, "## %s\n", title)
	for _, req := range reqs {
		r := do(t, req)
		fmt.Fprintf(w, "%s %s", req.Method, req.URL.RequestURI())
		if v := req.Header.Get("X-Model-Version"); v != "" {
			fmt.Fprintf(w, " (X-Model-Version: %s)", v)
		}
		fmt.Fprintf(w, "\n%d\n", r.status)
		var names []string
		for k := range r.header {
			if k != "Date" && k != "X-Request-Id" && k != "Content-Length" {
				names = append(names, k)
			}
		}
		slices.Sort(names)
		for _, k := range names {
			fmt.Fprintf(w, "%s: %s\n", k, strings.Join(r.header[k], ", "))
		}
		if r.body != nil {
			normalize(r.body)
			b, _ := json.MarshalIndent(r.body, "", " ")
			w.Write(b)
		} else {
			w.Write(r.raw)
		}
		w.WriteString("\n\n")
	}
	m := testenv.MustParseMetrics(t, get(t, tp.metricsURL+"/metrics").raw)
	var series []string
	for _, s := range m.Samples() {
		// waitReady's polls may or may not see a 503 first.
		polled := strings.Contains(s.Key(), `code="503",route="/readyz"`)
		if !polled && !strings.HasPrefix(s.Name, "go_") && !strings.HasPrefix(s.Name, "process_") {
			series = append(series, s.Key())
		}
	}
	slices.Sort(series)
	fmt.Fprintf(w, "## %s: /metrics series\n%s\n\n", title, strings.Join(slices.Compact(series), "\n"))
}

// normalize replaces what changes from run to run: timings (their keys
// stay) and the last digits of probabilities.
func normalize(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if tm, ok := e.(map[string]any); ok && k == "timings" {
				for tk := range tm {
					tm[tk] = "t"
				}
				continue
			}
			if f, ok := e.(float64); ok {
				v[k] = math.Round(f*1e6) / 1e6
				continue
			}
			normalize(e)
		}
	case []any:
		for _, e := range v {
			normalize(e)
		}
	}
}

// compareGolden fails unless got equals the file at path (rewritten with
// -update).
func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to record today's answers)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			g, w := "", ""
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s: line %d differs:\n got  %q\n want %q\n(whole answer:\n%s)", path, i+1, g, w, got)
			}
		}
	}
}
