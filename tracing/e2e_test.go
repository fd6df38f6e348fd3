package tracing_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/jaegertest"
	"github.com/batchgate/batchgate/internal/testenv"
)

// TestCollector runs the real proxy and runtime processes, exporting to a
// real Jaeger over OTLP/HTTP, with a sampler that starts no trace of its
// own (ratio 0). Two concurrent requests, each continuing a sampled W3C
// traceparent, meet in one batch. Jaeger must then hold, for each request,
// the proxy's server span under the incoming span with its read-body,
// preprocess and queue children; one batch span linked from both requests'
// spans; and the runtime's span, exported by the runtime process, under the
// batch span. A third request without a traceparent is not sampled: its
// trace id is in the log, and not in Jaeger.
func TestCollector(t *testing.T) {
	j := jaegertest.Start(t)
	root, dir := testenv.Root(t), t.TempDir()
	for _, pkg := range []string{"runtime", "proxy"} {
		if out, err := exec.Command("go", "build", "-C", root, "-o", filepath.Join(dir, pkg), "./"+pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build ./%s: %v\n%s", pkg, err, out)
		}
	}
	otel := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPEndpoint(), "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
		"OTEL_TRACES_SAMPLER_ARG=0", "OTEL_BSP_SCHEDULE_DELAY=200"}
	socket := filepath.Join(dir, "rt.sock")
	rt := start(t, dir, "runtime", append(otel, "LOG_LEVEL=warn"), "serve", "-socket", socket, "-model", testenv.TinyModel(t),
		"-ort-library", testenv.ORTLibrary(t), "-max-batch-size", "2")
	port, metricsPort := testenv.FreePort(t), testenv.FreePort(t)
	// No API keys: TRACING_TRUST_REMOTE=always lets the incoming sampled
	// flags decide, as a gateway in front of the proxy would.
	px := start(t, dir, "proxy", append(otel, "TRACING_TRUST_REMOTE=always", "PORT="+strconv.Itoa(port), "METRICS_PORT="+strconv.Itoa(metricsPort), "GRPC_PORT=0",
		"RUNTIME_SOCKET="+socket, "MAX_BATCH_SIZE=2", "BATCH_WINDOW=10s", "DRAIN_DELAY=0s"))
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitHTTP(t, url+"/readyz")

	incoming := []struct{ trace, span string }{
		{"4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"},
		{"0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"},
	}
	var wg sync.WaitGroup
	for i, in := range incoming { // a full batch of 2: BATCH_WINDOW is long
		wg.Go(func() {
			if code := predict(t, url, 9400+i, strconv.Itoa(i), "00-"+in.trace+"-"+in.span+"-01"); code != 200 {
				t.Errorf("request %d: status %d", i, code)
			}
		})
	}
	wg.Wait()
	// Without a traceparent: a cache hit of the first image.
	if code := predict(t, url, 9400, "unsampled", ""); code != 200 {
		t.Errorf("unsampled request: status %d", code)
	}
	// Stopping flushes both processes' spans.
	stop(t, px)
	stop(t, rt)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var batch *jaegertest.Span
	servers := map[string]string{} // trace id -> server span id
	for i, in := range incoming {
		spans, err := j.WaitTrace(ctx, in.trace, func(s []jaegertest.Span) bool {
			return count(s, "POST /predict") == 1 && count(s, "queue") == 1 && count(s, "preprocess") == 1
		})
		if err != nil {
			t.Fatalf("trace %d (%s): %v; spans: %v", i, in.trace, err, names(spans))
		}
		server := find(spans, "POST /predict")
		if server.ParentSpanID != in.span || server.Service != "batchgate-proxy" || server.Kind != "server" {
			t.Errorf("trace %d: server span %+v, want a server span of batchgate-proxy under the incoming span %s", i, server, in.span)
		}
		if server.Attributes["http.response.status_code"] == nil || server.Attributes["cache.hit"] != false {
			t.Errorf("trace %d: server span attributes %v", i, server.Attributes)
		}
		servers[in.trace] = server.SpanID
		for _, name := range []string{"read body", "preprocess", "queue"} {
			if c := find(spans, name); c.ParentSpanID != server.SpanID {
				t.Errorf("trace %d: %q span's parent is %q, want the server span %s", i, name, c.ParentSpanID, server.SpanID)
			}
		}
		if b := find(spans, "batch"); b.SpanID != "" {
			batch = &b
		}
	}
	if batch == nil {
		t.Fatal("no batch span in either trace")
	}
	linked := map[string]bool{}
	for _, l := range batch.Links {
		linked[l.TraceID+"/"+l.SpanID] = true
	}
	for tr, sp := range servers {
		if !linked[tr+"/"+sp] {
			t.Errorf("batch span links %v, want the server span %s of trace %s", batch.Links, sp, tr)
		}
	}
	if fmt.Sprint(batch.Attributes["batch.size"]) != "2" || batch.Attributes["batch.trigger"] != "full" {
		t.Errorf("batch span attributes %v, want batch.size 2, batch.trigger full", batch.Attributes)
	}
	spans, err := j.WaitTrace(ctx, batch.TraceID, func(s []jaegertest.Span) bool { return count(s, "onnxruntime.run") == 1 })
	if err != nil {
		t.Fatalf("no runtime span in trace %s: %v; spans: %v", batch.TraceID, err, names(spans))
	}
	if run := find(spans, "onnxruntime.run"); run.ParentSpanID != batch.SpanID || run.Service != "batchgate-runtime" {
		t.Errorf("runtime span %+v, want one of batchgate-runtime under the batch span %s", run, batch.SpanID)
	}

	// The unsampled request: its trace id is logged, and Jaeger has no
	// such trace (every span was flushed by the stops above).
	id := loggedTrace(t, filepath.Join(dir, "proxy.log"), "unsampled")
	if spans, err := j.Trace(ctx, id); err == nil && len(spans) > 0 {
		t.Errorf("unsampled trace %s is in Jaeger: %v", id, names(spans))
	}
}

// predict posts the image of seed as request id, with an optional
// traceparent.
func predict(t *testing.T, url string, seed int, id, traceparent string) int {
	req, _ := http.NewRequest("POST", url+"/predict", bytes.NewReader(testenv.UniquePNG(seed)))
	req.Header.Set("Content-Type", "image/png")
	req.Header.Set("X-Request-Id", id)
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("POST /predict: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// loggedTrace returns the trace_id of request id's log line, which must say
// it is not sampled.
func loggedTrace(t *testing.T, path, id string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			Msg          string `json:"msg"`
			RequestID    string `json:"request_id"`
			TraceID      string `json:"trace_id"`
			TraceSampled *bool  `json:"trace_sampled"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "request" && l.RequestID == id {
			if l.TraceID == "" || l.TraceSampled == nil || *l.TraceSampled {
				t.Fatalf("request %s logged %s: want a trace_id, not sampled", id, sc.Text())
			}
			return l.TraceID
		}
	}
	t.Fatalf("no log line for request %s", id)
	return ""
}

func count(spans []jaegertest.Span, name string) int {
	n := 0
	for _, s := range spans {
		if s.Name == name {
			n++
		}
	}
	return n
}

func find(spans []jaegertest.Span, name string) jaegertest.Span {
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	return jaegertest.Span{}
}

func names(spans []jaegertest.Span) []string {
	var n []string
	for _, s := range spans {
		n = append(n, s.Service+":"+s.Name)
	}
	return n
}

// start runs dir/name with env added, its output in dir/name.log, and kills
// it when the test ends if it still runs.
func start(t *testing.T, dir, name string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(dir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s log:\n%s", name, b[max(0, len(b)-4000):])
		}
	})
	return cmd
}

// stop sends SIGTERM and waits, at most 30 s, for a clean exit.
func stop(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited: %v", filepath.Base(cmd.Path), err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("%s did not stop within 30 s of SIGTERM", filepath.Base(cmd.Path))
	}
}
