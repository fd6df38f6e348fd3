package gateway

import (
	"testing"

	"github.com/valyala/fasthttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/batchgate/batchgate/internal/testenv"
)

// BenchmarkTracingCacheHit is the cost of tracing on the proxy's fastest
// path, a cache hit of /predict, where it weighs most: off, sampled at 1%
// and at 100%. Spans go through the SDK's batch span processor, as in
// production, to an exporter that drops them (the OTLP encoding and the
// network are in `go run ./perf -tracing`, against a real collector).
// Compare the ns/op of the three; docs/tracing.md has a run.
//
//	go test -run '^$' -bench TracingCacheHit -count 6 ./proxy/gateway/
func BenchmarkTracingCacheHit(b *testing.B) {
	rt := startRuntime(b, testenv.TinyModel(b), 8, "")
	img := testenv.UniquePNG(9300)
	for _, bc := range []struct {
		name    string
		sampler sdktrace.Sampler // nil: tracing off
	}{
		{"off", nil},
		{"ratio=0.01", sdktrace.TraceIDRatioBased(0.01)},
		{"ratio=1", sdktrace.AlwaysSample()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig(rt.socket)
			if bc.sampler != nil {
				useTracing(b, bc.sampler, sdktrace.NewBatchSpanProcessor(tracetest.NewNoopExporter()))
				cfg.Tracing = true
			}
			tp := startProxy(b, cfg)
			client := &fasthttp.Client{MaxConnsPerHost: 64}
			url := tp.url + "/predict"
			send := func() int {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				req.SetRequestURI(url)
				req.Header.SetMethod("POST")
				req.Header.SetContentType("image/png")
				req.SetBody(img)
				if err := client.Do(req, resp); err != nil {
					return 0
				}
				return resp.StatusCode()
			}
			if s := send(); s != 200 { // fills the cache
				b.Fatalf("first request: %d", s)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if s := send(); s != 200 {
						b.Errorf("status %d", s)
						return
					}
				}
			})
		})
	}
}
