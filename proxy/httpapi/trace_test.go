package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/tracing"
)

// traceRecorder is the test binary's one tracer provider: package-level
// tracers bind to the first provider installed. Its sampler is
// tracing.Start's, whose own decisions are never to sample: every span
// recorded continued a trusted sampled traceparent.
var traceRecorder = sync.OnceValue(func() *tracetest.SpanRecorder {
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec),
		sdktrace.WithSampler(tracing.Sampler(sdktrace.NeverSample()))))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return rec
})

// FuzzTraceHeaders sends arbitrary traceparent and tracestate headers, which
// any client can set, to a server with tracing on: the handler never
// panics, always answers, and a span continues the incoming trace only when
// the traceparent is well formed and sampled (the root sampler here never
// samples, so every recorded span was continued; the server trusts every
// caller's flag, TRACING_TRUST_REMOTE=always).
func FuzzTraceHeaders(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "congo=t61rcWkgMzE")
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "")
	f.Add("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "a=b,c=d")
	f.Add("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra", "x")
	f.Add("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", strings.Repeat("k=v,", 40))
	rec := traceRecorder()
	var buf bytes.Buffer
	api := New(Config{Router: oneRuntime{newFake()}, Metrics: stats.New(metrics.NewSet(), stats.Gauges{}),
		Log: slog.New(slog.NewJSONHandler(&buf, nil)), Ready: func() bool { return true }, Version: "fuzz",
		RequestTimeout: 5 * time.Second, MaxBodyBytes: 1 << 20, Uploads: budget.New(16 << 20), UploadWait: time.Second,
		MaxElements: 4, Tracing: true, TrustRemoteSampling: tracing.TrustAlways})
	f.Fuzz(func(t *testing.T, traceparent, tracestate string) {
		rec.Reset()
		buf.Reset()
		var ctx fasthttp.RequestCtx
		ctx.Init2(nopConn{}, nil, false)
		ctx.Request.Header.SetMethod("GET")
		ctx.Request.SetRequestURI("/v2")
		ctx.Request.Header.Set("traceparent", traceparent)
		ctx.Request.Header.Set("tracestate", tracestate)
		api.Handler(&ctx)
		if s := ctx.Response.StatusCode(); s != 200 {
			t.Fatalf("GET /v2 with traceparent %q: %d %s", traceparent, s, ctx.Response.Body())
		}
		var line struct {
			TraceID string `json:"trace_id"`
		}
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil || len(line.TraceID) != 32 {
			t.Fatalf("request log %q: want a 32-digit trace_id", buf.Bytes())
		}
		spans := rec.Ended()
		if len(spans) > 1 {
			t.Fatalf("%d spans for one request", len(spans))
		}
		if len(spans) == 1 {
			p := spans[0].Parent()
			if !p.IsRemote() || !p.IsSampled() || !strings.Contains(strings.ToLower(traceparent), p.TraceID().String()) {
				t.Fatalf("span recorded for traceparent %q with parent %v", traceparent, p)
			}
		}
	})
}
