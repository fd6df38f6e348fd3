package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/docs"
)

const chromiumPath = "/usr/bin/chromium"

// requireSwaggerUI fails the test when the binary under test was built
// without the fetched Swagger UI files.
func requireSwaggerUI(t *testing.T) {
	t.Helper()
	if !docs.HasUI() {
		t.Fatal("the Swagger UI files are not embedded: run `make deps-run` " +
			"(scripts/fetch-swagger-ui.sh proxy/docs/swagger-ui) before go test")
	}
}

// pinnedSwaggerFiles returns the files and sha256s pinned in
// scripts/fetch-swagger-ui.sh.
func pinnedSwaggerFiles(t *testing.T) map[string]string {
	t.Helper()
	script, err := os.ReadFile("../../scripts/fetch-swagger-ui.sh")
	if err != nil {
		t.Fatal(err)
	}
	pins := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*"(\S+) ([0-9a-f]{64})"$`).FindAllSubmatch(script, -1) {
		pins[string(m[1])] = string(m[2])
	}
	if pins["swagger-ui-bundle.js"] == "" || pins["swagger-ui.css"] == "" {
		t.Fatalf("no pins found in scripts/fetch-swagger-ui.sh: %v", pins)
	}
	return pins
}

// documented checks that a live JSON body has the top-level fields the
// OpenAPI schema requires, and no field it does not describe.
func documented(t *testing.T, spec map[string]any, schema string, what string, body map[string]any) {
	t.Helper()
	s, ok := spec["components"].(map[string]any)["schemas"].(map[string]any)[schema].(map[string]any)
	if !ok {
		t.Fatalf("no schema %s in /openapi.json", schema)
	}
	props, _ := s["properties"].(map[string]any)
	req, _ := s["required"].([]any)
	for _, r := range req {
		if _, ok := body[r.(string)]; !ok {
			t.Errorf("%s: no %q, which schema %s requires: %v", what, r, schema, body)
		}
	}
	for k := range body {
		if _, ok := props[k]; !ok {
			t.Errorf("%s: field %q is not in schema %s", what, k, schema)
		}
	}
}

// TestDocsHTTP checks the documentation routes without a browser: the
// Swagger page and its embedded (pinned) files, the guide, and an OpenAPI
// description that matches what the server answers.
func TestDocsHTTP(t *testing.T) {
	requireSwaggerUI(t)
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))

	for _, p := range []string{"/docs", "/docs/"} {
		r := get(t, tp.url+p)
		if r.status != 200 || r.header.Get("Content-Type") != "text/html; charset=utf-8" ||
			!bytes.Contains(r.raw, []byte(`<script src="/docs/swagger-ui/swagger-ui-bundle.js"`)) ||
			!bytes.Contains(r.raw, []byte(`href="/docs/swagger-ui/swagger-ui.css"`)) ||
			!bytes.Contains(r.raw, []byte(`url: "/openapi.json"`)) {
			t.Errorf("GET %s = %d %q: %.300s", p, r.status, r.header.Get("Content-Type"), r.raw)
		}
		if bytes.Contains(r.raw, []byte("https://")) || bytes.Contains(r.raw, []byte("http://")) {
			t.Errorf("GET %s references another site: the page must work offline", p)
		}
	}

	// Every pinned file is served, byte for byte what the script pinned.
	for name, want := range pinnedSwaggerFiles(t) {
		r := get(t, tp.url+"/docs/swagger-ui/"+name)
		sum := sha256.Sum256(r.raw)
		if r.status != 200 || hex.EncodeToString(sum[:]) != want {
			t.Errorf("GET /docs/swagger-ui/%s = %d, %d bytes, sha256 %x, want %s", name, r.status, len(r.raw), sum, want)
		}
	}
	r := get(t, tp.url+"/docs/swagger-ui/swagger-ui-bundle.js")
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") || len(r.raw) < 100_000 {
		t.Errorf("swagger-ui-bundle.js: Content-Type %q, %d bytes", ct, len(r.raw))
	}
	if ct := get(t, tp.url+"/docs/swagger-ui/swagger-ui.css").header.Get("Content-Type"); !strings.HasPrefix(ct, "text/css") {
		t.Errorf("swagger-ui.css: Content-Type %q", ct)
	}
	for _, p := range []string{"/docs/swagger-ui/nope.js", "/docs/swagger-ui/README.md", "/docs/index.html"} {
		if r := get(t, tp.url+p); r.status != 404 || r.body["error"] == nil {
			t.Errorf("GET %s = %d %.100s, want a 404 JSON error", p, r.status, r.raw)
		}
	}

	r = get(t, tp.url+"/docs/guide")
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") ||
		!bytes.Contains(r.raw, []byte("curl -F file=@photo.jpg")) || !bytes.Contains(r.raw, []byte(`href="/docs"`)) {
		t.Errorf("GET /docs/guide = %d: %.300s", r.status, r.raw)
	}

	r = get(t, tp.url+"/openapi.json")
	if r.status != 200 || r.header.Get("Content-Type") != "application/json" || r.body["openapi"] != "3.0.3" {
		t.Fatalf("GET /openapi.json = %d %q: %.200s", r.status, r.header.Get("Content-Type"), r.raw)
	}
	spec := r.body
	paths := spec["paths"].(map[string]any)
	if paths["/predict"].(map[string]any)["post"] == nil || paths["/v2/models/{name}/versions/{version}/infer"] == nil {
		t.Errorf("/openapi.json lacks /predict or the versioned infer")
	}

	// What the server answers is what the document describes.
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	pr := do(t, multipartReq(t, tp.url+"/predict", "file", jpeg))
	if pr.status != 200 {
		t.Fatalf("/predict = %d %s", pr.status, pr.raw)
	}
	documented(t, spec, "PredictResponse", "/predict", pr.body)
	documented(t, spec, "Prediction", "/predict predictions[0]", pr.body["predictions"].([]any)[0].(map[string]any))
	documented(t, spec, "Timings", "/predict timings", pr.body["timings"].(map[string]any))
	documented(t, spec, "ServerMetadata", "/v2", get(t, tp.url+"/v2").body)
	documented(t, spec, "ModelMetadata", "/v2/models/resnet50", get(t, tp.url+"/v2/models/resnet50/versions/1").body)
	documented(t, spec, "ModelReady", "/v2/models/resnet50/ready", get(t, tp.url+"/v2/models/resnet50/ready").body)
	infer := fmt.Sprintf(`{"id":"x","inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}],
		"outputs":[{"name":"classification","parameters":{"classification":2}}]}`, base64.StdEncoding.EncodeToString(jpeg))
	ir := do(t, rawReq(tp.url+"/v2/models/resnet50/versions/1/infer", "application/json", []byte(infer)))
	if ir.status != 200 {
		t.Fatalf("infer = %d %s", ir.status, ir.raw)
	}
	documented(t, spec, "InferResponse", "infer", ir.body)
	documented(t, spec, "InferOutput", "infer outputs[0]", ir.body["outputs"].([]any)[0].(map[string]any))
	documented(t, spec, "Error", "404", get(t, tp.url+"/v2/models/other").body)
}

// browserLog collects what the page did that a test should see: uncaught
// exceptions, console errors, failed loads, and requests to other origins.
type browserLog struct {
	mu       sync.Mutex
	origin   string
	problems []string
	foreign  []string
}

func (b *browserLog) listen(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			msg += " " + d.Exception.Description
		}
		b.problems = append(b.problems, fmt.Sprintf("exception: %s (%s:%d)", msg, d.URL, d.LineNumber))
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, a.Description+string(a.Value))
			}
			b.problems = append(b.problems, "console.error: "+strings.Join(parts, " "))
		}
	case *network.EventLoadingFailed:
		b.problems = append(b.problems, fmt.Sprintf("load failed: %s %s", ev.Type, ev.ErrorText))
	case *network.EventRequestWillBeSent:
		u := ev.Request.URL
		if !strings.HasPrefix(u, b.origin+"/") && !strings.HasPrefix(u, "data:") && !strings.HasPrefix(u, "blob:") {
			b.foreign = append(b.foreign, u)
		}
	}
}

func (b *browserLog) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Sprintf("page problems: %q; requests to other origins: %q", b.problems, b.foreign)
}

// liveResponseJS reads the response Swagger UI rendered for an operation
// after Execute: null until it is there.
const liveResponseJS = `(() => {
	const op = document.getElementById(%q);
	const status = op && op.querySelector(".live-responses-table tr.response .response-col_status");
	const body = op && op.querySelector(".live-responses-table tr.response .response-col_description pre");
	if (!status || !body || !body.innerText.trim()) return null;
	return {status: status.innerText.trim(), body: body.innerText};
})()`

// renderedJS tells when Swagger UI has rendered an operation, or has
// failed (no bundle, or no API definition): null while it is loading.
const renderedJS = `(() => {
	if (document.getElementById(%q)) return "rendered";
	if (document.readyState === "complete" && typeof SwaggerUIBundle === "undefined")
		return "failed: the Swagger UI bundle did not load";
	const text = document.body ? document.body.innerText : "";
	if (/Failed to load API definition|Fetch error|Errors/.test(text)) return "failed: " + text.slice(0, 1000);
	return null;
})()`

type liveResponse struct {
	Status string `json:"status"`
	Body   string `json:"body"`
}

// TestDocsBrowser loads /docs in headless Chromium, offline, and uses
// Swagger UI as a person would: POST /predict with a file upload, and an
// Open Inference Protocol inference with the document's own example.
func TestDocsBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s not found: this test drives headless Chromium; `make test` installs it "+
			"(scripts/install-tools.sh: apt-get install chromium)", chromiumPath)
	}
	requireSwaggerUI(t)
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	photo, err := filepath.Abs("../testdata/grace_hopper.jpg")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()

	// Everything the browser does is bounded: 60 s for the steps, a little
	// more for the diagnostics and the browser's exit.
	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Second)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // as root in a container
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Offline: no name resolves but the loopback address the proxy
		// listens on.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	blog := &browserLog{origin: tp.url}
	if err := chromedp.Listen(bctx, blog.listen); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	steps, cancelSteps := context.WithTimeout(bctx, 60*time.Second)
	defer cancelSteps()
	fail := func(format string, args ...any) {
		t.Helper()
		dctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		defer cancel()
		text, err := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if err != nil {
			text = "(cannot read the page: " + err.Error() + ")"
		}
		if len(text) > 3000 {
			text = text[:3000] + "..."
		}
		t.Fatalf("%s\n%s\npage text after %v:\n%s", fmt.Sprintf(format, args...), blog, time.Since(start).Round(time.Millisecond), text)
	}

	// Swagger UI renders the operations from /openapi.json.
	const predictOp = "operations-Classification-predict"
	if err := chromedp.Do(steps, chromedp.Navigate(tp.url+"/docs")); err != nil {
		fail("GET /docs: %v", err)
	}
	state, err := chromedp.Run(steps, chromedp.Poll[string](fmt.Sprintf(renderedJS, predictOp), chromedp.WithPollingInterval(100*time.Millisecond)))
	if err != nil || state != "rendered" {
		fail("/docs did not render POST /predict: %v %s", err, state)
	}
	loaded := time.Since(start)

	// POST /predict: expand, Try it out, choose the file, Execute.
	sel := func(op, css string) chromedp.CSS { return chromedp.CSS("#" + op + " " + css) }
	if err := chromedp.Do(steps,
		chromedp.Click(sel(predictOp, ".opblock-summary-control")),
		chromedp.Click(sel(predictOp, ".try-out__btn")),
		chromedp.WaitVisible(sel(predictOp, `input[type="file"]`)),
		chromedp.SetUploadFiles(sel(predictOp, `input[type="file"]`), []string{photo}),
		chromedp.Click(sel(predictOp, ".btn.execute")),
	); err != nil {
		fail("POST /predict: try it out: %v", err)
	}
	res, err := chromedp.Run(steps, chromedp.Poll[liveResponse](fmt.Sprintf(liveResponseJS, predictOp), chromedp.WithPollingInterval(100*time.Millisecond)))
	if err != nil {
		fail("POST /predict: no response rendered: %v", err)
	}
	var pred struct {
		Model       string
		Predictions []struct{ Label string }
	}
	if res.Status != "200" || json.Unmarshal([]byte(res.Body), &pred) != nil || len(pred.Predictions) != 5 ||
		pred.Model != "resnet50" || !strings.HasPrefix(pred.Predictions[0].Label, "label") {
		fail("POST /predict rendered status %q, body:\n%s", res.Status, res.Body)
	}

	// POST /v2/models/{name}/infer with the first example of the document
	// (a base64 PNG, top 3 classes).
	const inferOp = "operations-Open_Inference_Protocol_v2-modelInfer"
	nameInput := sel(inferOp, `tr[data-param-name="name"] input`)
	if err := chromedp.Do(steps,
		chromedp.Click(sel(inferOp, ".opblock-summary-control")),
		chromedp.Click(sel(inferOp, ".try-out__btn")),
		chromedp.WaitVisible(nameInput),
	); err != nil {
		fail("POST /v2/models/{name}/infer: try it out: %v", err)
	}
	name, err := chromedp.Run(steps, chromedp.Value(nameInput))
	if err != nil {
		fail("model name field: %v", err)
	}
	if name != "resnet50" { // Swagger UI fills it from the example; type it otherwise
		if err := chromedp.Do(steps, chromedp.SendKeys(nameInput, strings.Repeat("\b", len(name))+"resnet50")); err != nil {
			fail("typing the model name: %v", err)
		}
	}
	if err := chromedp.Do(steps, chromedp.Click(sel(inferOp, ".btn.execute"))); err != nil {
		fail("POST /v2/models/{name}/infer: execute: %v", err)
	}
	res, err = chromedp.Run(steps, chromedp.Poll[liveResponse](fmt.Sprintf(liveResponseJS, inferOp), chromedp.WithPollingInterval(100*time.Millisecond)))
	if err != nil {
		fail("POST /v2/models/{name}/infer: no response rendered: %v", err)
	}
	var inf struct {
		ID      string
		Outputs []struct {
			Datatype string
			Shape    []int64
		}
	}
	if res.Status != "200" || json.Unmarshal([]byte(res.Body), &inf) != nil || inf.ID != "req-1" || len(inf.Outputs) != 1 ||
		inf.Outputs[0].Datatype != "BYTES" || !slices.Equal(inf.Outputs[0].Shape, []int64{1, 3}) {
		fail("POST /v2/models/{name}/infer rendered status %q, body:\n%s", res.Status, res.Body)
	}

	if s := blog.String(); len(blog.problems) > 0 || len(blog.foreign) > 0 {
		fail("the page misbehaved: %s", s)
	}
	t.Logf("Swagger UI rendered in %v; both operations tried in %v", loaded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
