package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/internal/testenv"
)

// testTracing is the test binary's one global tracer provider. Package
// level tracers (otel.Tracer) bind to the first provider installed and keep
// it, so tests switch its sampler and span processor instead of installing
// providers of their own.
var testTracing struct {
	once    sync.Once
	sampler atomic.Pointer[sdktrace.Sampler]
	proc    atomic.Pointer[sdktrace.SpanProcessor]
}

type switchSampler struct{}

func (switchSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return (*testTracing.sampler.Load()).ShouldSample(p)
}
func (switchSampler) Description() string { return "switch" }

type switchProcessor struct{}

func (switchProcessor) OnStart(ctx context.Context, s sdktrace.ReadWriteSpan) {
	if p := testTracing.proc.Load(); p != nil {
		(*p).OnStart(ctx, s)
	}
}
func (switchProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if p := testTracing.proc.Load(); p != nil {
		(*p).OnEnd(s)
	}
}
func (switchProcessor) Shutdown(context.Context) error   { return nil }
func (switchProcessor) ForceFlush(context.Context) error { return nil }

// useTracing makes the global tracer provider sample new traces with
// sampler (parent-based, as tracing.Start's) and hand spans to proc until
// the test ends.
func useTracing(t testing.TB, sampler sdktrace.Sampler, proc sdktrace.SpanProcessor) {
	t.Helper()
	testTracing.once.Do(func() {
		never := sdktrace.NeverSample()
		testTracing.sampler.Store(&never)
		otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(switchProcessor{}),
			sdktrace.WithSampler(sdktrace.ParentBased(switchSampler{}))))
		otel.SetTextMapPropagator(propagation.TraceContext{})
	})
	testTracing.sampler.Store(&sampler)
	testTracing.proc.Store(&proc)
	t.Cleanup(func() {
		never := sdktrace.NeverSample()
		testTracing.sampler.Store(&never)
		testTracing.proc.Store(nil)
		proc.Shutdown(context.Background())
	})
}

// recordSpans samples every new trace and records the spans in memory, for
// the test's duration.
func recordSpans(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	useTracing(t, sdktrace.AlwaysSample(), rec)
	return rec
}

// spansOf returns the ended spans of trace id, by name.
func spansOf(rec *tracetest.SpanRecorder, id trace.TraceID) map[string][]sdktrace.ReadOnlySpan {
	m := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID() == id {
			m[s.Name()] = append(m[s.Name()], s)
		}
	}
	return m
}

// TestTraceTree: two concurrent requests meet in one batch. Each request's
// trace has its server span with read-body, preprocess and queue children;
// the batch span sits in the first member's trace, links to both requests'
// server spans, and is the parent of the runtime's span; each queue span
// links to the batch. The first request continues a client's traceparent,
// and the request log carries the trace and span ids.
func TestTraceTree(t *testing.T) {
	rec := recordSpans(t)
	rt := startRuntime(t, testenv.TinyModel(t), 2, "")
	cfg := testConfig(rt.socket)
	cfg.Tracing = true
	cfg.Batch.MaxBatchSize, cfg.Batch.Window = 2, time.Minute // only a full batch leaves
	tp := startProxy(t, cfg)

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var wg sync.WaitGroup
	ids := make([]string, 2)
	for i := range 2 {
		wg.Go(func() {
			req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(9100+i))
			if i == 0 {
				req.Header.Set("traceparent", parent)
			}
			r := do(t, req)
			if r.status != 200 {
				t.Errorf("request %d: %d %s", i, r.status, r.raw)
			}
			ids[i] = r.header.Get("X-Request-Id")
		})
	}
	wg.Wait()

	// The log gives each request's trace and server span.
	type logged struct {
		trace trace.TraceID
		span  trace.SpanID
	}
	byRequest := map[string]logged{}
	for line := range strings.SplitSeq(tp.log.String(), "\n") {
		var l struct {
			Msg, RequestID, TraceID, SpanID string
		}
		if json.Unmarshal([]byte(line), &struct {
			Msg       *string `json:"msg"`
			RequestID *string `json:"request_id"`
			TraceID   *string `json:"trace_id"`
			SpanID    *string `json:"span_id"`
		}{&l.Msg, &l.RequestID, &l.TraceID, &l.SpanID}) != nil || l.Msg != "request" {
			continue
		}
		tid, err1 := trace.TraceIDFromHex(l.TraceID)
		sid, err2 := trace.SpanIDFromHex(l.SpanID)
		if err1 != nil || err2 != nil {
			t.Fatalf("request log without trace_id/span_id: %s", line)
		}
		byRequest[l.RequestID] = logged{tid, sid}
	}
	first, second := byRequest[ids[0]], byRequest[ids[1]]
	if got := first.trace.String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("first request's trace = %s, want the incoming traceparent's", got)
	}
	if first.trace == second.trace {
		t.Fatalf("both requests in trace %s: want one each", first.trace)
	}

	var batch sdktrace.ReadOnlySpan
	for i, req := range []logged{first, second} {
		spans := spansOf(rec, req.trace)
		server := spans["POST /predict"]
		if len(server) != 1 || server[0].SpanContext().SpanID() != req.span || server[0].SpanKind() != trace.SpanKindServer {
			t.Fatalf("request %d: server spans %v, want one with the logged span id %s", i, server, req.span)
		}
		if i == 0 && server[0].Parent().SpanID().String() != "00f067aa0ba902b7" {
			t.Errorf("server span's parent = %s, want the incoming span 00f067aa0ba902b7", server[0].Parent().SpanID())
		}
		for _, name := range []string{"read body", "preprocess", "queue"} {
			if c := spans[name]; len(c) != 1 || c[0].Parent().SpanID() != req.span {
				t.Errorf("request %d: %q spans %v, want one child of the server span", i, name, c)
			}
		}
		if b := spans["batch"]; len(b) == 1 {
			batch = b[0]
		}
	}
	if batch == nil {
		t.Fatal("no batch span in either request's trace")
	}
	if batch.SpanContext().TraceID() != first.trace && batch.SpanContext().TraceID() != second.trace {
		t.Errorf("batch span in trace %s", batch.SpanContext().TraceID())
	}
	linked := map[trace.SpanID]bool{}
	for _, l := range batch.Links() {
		linked[l.SpanContext.SpanID()] = true
	}
	if !linked[first.span] || !linked[second.span] || len(linked) != 2 {
		t.Errorf("batch links %v, want both requests' server spans %s and %s", batch.Links(), first.span, second.span)
	}
	attrs := map[string]string{}
	for _, a := range batch.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs["batch.size"] != "2" || attrs["batch.trigger"] != "full" {
		t.Errorf("batch attributes %v, want size 2 closed by full", attrs)
	}
	for i, req := range []logged{first, second} {
		q := spansOf(rec, req.trace)["queue"]
		if len(q) == 1 && (len(q[0].Links()) != 1 || q[0].Links()[0].SpanContext.SpanID() != batch.SpanContext().SpanID()) {
			t.Errorf("request %d: queue span links %v, want the batch span", i, q[0].Links())
		}
	}
	run := spansOf(rec, batch.SpanContext().TraceID())["onnxruntime.run"]
	if len(run) != 1 || run[0].Parent().SpanID() != batch.SpanContext().SpanID() || !run[0].Parent().IsRemote() {
		t.Errorf("runtime spans %v, want one under the batch span, its parent remote (across the socket)", run)
	}
}

// TestShadowTraced: a shadow copy's batch joins the request's trace, so a
// request mirrored to v3 has two batches there, each with its runtime span.
func TestShadowTraced(t *testing.T) {
	rec := recordSpans(t)
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v3")
	tp := routingProxy(t, dir, shadowRouting, func(c *Config) { c.Tracing = true })
	req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(9500))
	req.Header.Set("traceparent", "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if r := do(t, req); r.status != 200 {
		t.Fatalf("predict: %d %s", r.status, r.raw)
	}
	id, _ := trace.TraceIDFromHex("5bf92f3577b34da6a3ce929d0e0e4736")
	waitFor(t, "the shadow's batch and runtime spans", 500, func() bool {
		s := spansOf(rec, id)
		return len(s["batch"]) == 2 && len(s["onnxruntime.run"]) == 2
	})
	server := spansOf(rec, id)["POST /predict"][0].SpanContext().SpanID()
	for _, b := range spansOf(rec, id)["batch"] {
		if b.Parent().SpanID() != server {
			t.Errorf("batch span's parent %s, want the request's server span %s", b.Parent().SpanID(), server)
		}
	}
}

// TestTracingOff: with Tracing false, no span is made and the log has no
// trace ids, even for a request with a traceparent.
func TestTracingOff(t *testing.T) {
	rec := recordSpans(t)
	rt := startRuntime(t, testenv.TinyModel(t), 2, "")
	tp := startProxy(t, testConfig(rt.socket))
	req := rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(9200))
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if r := do(t, req); r.status != 200 {
		t.Fatalf("predict: %d %s", r.status, r.raw)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("%d spans recorded with tracing off", n)
	}
	if strings.Contains(tp.log.String(), "trace_id") {
		t.Error("the log has trace ids with tracing off")
	}
}
