package jaegertest

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// provider returns a tracer provider for service that exports each span
// synchronously to j.
func provider(t *testing.T, j *Jaeger, service string) *sdktrace.TracerProvider {
	t.Helper()
	exp, err := otlptracehttp.New(context.Background(),
		otlptracehttp.WithEndpointURL(j.OTLPEndpoint()+"/v1/traces"),
		otlptracehttp.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp
}

// TestRoundTrip exports spans with the OTel SDK and reads them back:
// parent and child, a span linked to the parent from another trace, and a
// span of a second service.
func TestRoundTrip(t *testing.T) {
	j := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	api := provider(t, j, "api").Tracer("jaegertest")
	pctx, parent := api.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.route", "/infer"), attribute.Int("batch.size", 8)))
	_, child := api.Start(pctx, "child", trace.WithAttributes(attribute.Bool("cache.hit", true)))
	child.End()
	pc := parent.SpanContext()
	// A new root in another trace, linked to the parent.
	_, linked := api.Start(ctx, "linked", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(trace.Link{SpanContext: pc}))
	linked.End()
	// A span of another service in the parent's trace.
	_, worker := provider(t, j, "worker").Tracer("jaegertest").Start(pctx, "work",
		trace.WithSpanKind(trace.SpanKindClient))
	worker.End()
	parent.End()

	traceID := pc.TraceID().String()
	spans, err := j.WaitTrace(ctx, traceID, func(s []Span) bool { return len(s) == 3 })
	if err != nil {
		t.Fatalf("%v: %+v", err, spans)
	}
	byName := map[string]Span{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	p, c, w := byName["parent"], byName["child"], byName["work"]
	if p.SpanID != pc.SpanID().String() || p.ParentSpanID != "" || p.Service != "api" || p.Kind != "server" {
		t.Errorf("parent = %+v", p)
	}
	if p.Attributes["http.route"] != "/infer" || p.Attributes["batch.size"] != int64(8) {
		t.Errorf("parent attributes = %v", p.Attributes)
	}
	if !p.End.After(p.Start) || p.Start.Before(time.Now().Add(-time.Minute)) {
		t.Errorf("parent times = %v .. %v", p.Start, p.End)
	}
	if c.ParentSpanID != p.SpanID || c.Service != "api" || c.Kind != "internal" || c.Attributes["cache.hit"] != true {
		t.Errorf("child = %+v", c)
	}
	if w.ParentSpanID != p.SpanID || w.Service != "worker" || w.Kind != "client" {
		t.Errorf("worker span = %+v", w)
	}

	lc := linked.SpanContext()
	ls, err := j.WaitTrace(ctx, lc.TraceID().String(), func(s []Span) bool { return len(s) == 1 })
	if err != nil {
		t.Fatalf("%v: %+v", err, ls)
	}
	want := []Link{{TraceID: traceID, SpanID: p.SpanID}}
	if l := ls[0]; l.TraceID == traceID || l.Kind != "consumer" || len(l.Links) != 1 || l.Links[0] != want[0] {
		t.Errorf("linked span = %+v, want links %v", l, want)
	}

	ids, err := j.Traces(ctx, "worker")
	if err != nil || len(ids) != 1 || ids[0] != traceID {
		t.Errorf("Traces(worker) = %v, %v; want [%s]", ids, err, traceID)
	}
}
