package httpapi

import (
	"context"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/batchgate/batchgate/tracing"
)

// tracer names the request spans' instrumentation scope. It follows the
// global tracer provider that tracing.Start installs.
var tracer = otel.Tracer("github.com/batchgate/batchgate/proxy/httpapi")

// headerCarrier reads and writes W3C trace-context headers on a fasthttp
// request header for the propagator. It lives only during the handler; Get
// returns copies, so nothing keeps the header's bytes.
type headerCarrier struct{ h *fasthttp.RequestHeader }

func (c headerCarrier) Get(key string) string { return string(c.h.Peek(key)) }

func (c headerCarrier) Set(key, value string) { c.h.Set(key, value) }

func (c headerCarrier) Keys() []string {
	var keys []string
	for k := range c.h.All() {
		keys = append(keys, string(k))
	}
	return keys
}

// traceKey is the RequestCtx user value holding the request's span context
// (a context.Context) for deadline to build on. fasthttp drops user values
// when the handler returns.
type traceKey struct{}

// noopSpan is the span of requests while tracing is off, and of requests
// refused by auth (they never start one).
var noopSpan trace.Span = noop.Span{}

// startSpan starts the request's server span, once the request is
// authorized (a refused one has none, so unauthenticated callers cannot
// fill the exporter's queue), and keeps its context for the request's
// children. It continues an incoming W3C traceparent; whether its sampled
// flag is honoured is TrustRemoteSampling's call, with authenticated
// (whether the request's API key authenticated): an untrusted flag is
// ignored and the process's sampler decides (tracing.IgnoreRemoteSampled).
// With tracing off it returns a no-op span and costs nothing.
func (s *Server) startSpan(ctx *fasthttp.RequestCtx, route string, authenticated bool) trace.Span {
	if !s.cfg.Tracing {
		return noopSpan
	}
	pctx := otel.GetTextMapPropagator().Extract(context.Background(), headerCarrier{&ctx.Request.Header})
	if !s.cfg.TrustRemoteSampling.Trusts(authenticated) && trace.SpanContextFromContext(pctx).IsRemote() {
		pctx = tracing.IgnoreRemoteSampled(pctx)
	}
	tctx, span := tracer.Start(pctx, route, trace.WithSpanKind(trace.SpanKindServer))
	ctx.SetUserValue(traceKey{}, tctx)
	return span
}

// endSpan names the server span after its method and route, adds what the
// request did, and ends it.
func endSpan(span trace.Span, method []byte, route string, status int, rep *reply, rid string) {
	if span.IsRecording() {
		span.SetName(string(method) + " " + route)
		span.SetAttributes(
			attribute.String("http.request.method", string(method)),
			attribute.String("http.route", route),
			attribute.Int("http.response.status_code", status),
			attribute.String("request.id", rid),
			attribute.Bool("cache.hit", rep.cached),
			attribute.Bool("coalesced", rep.coalesced),
		)
		if rep.model != "" {
			span.SetAttributes(attribute.String("model.name", rep.model))
		}
		if rep.version != "" {
			span.SetAttributes(attribute.String("model.version", rep.version))
		}
		if rep.batchSize > 0 {
			span.SetAttributes(attribute.Int("batch.size", rep.batchSize))
		}
		if rep.keyID != "" {
			span.SetAttributes(attribute.String("auth.key_id", rep.keyID))
		}
		if status >= 500 {
			span.SetStatus(codes.Error, fasthttp.StatusMessage(status))
		}
	}
	span.End()
}

// baseContext is the context a request's work starts from: its server
// span's, or Background without tracing.
func baseContext(ctx *fasthttp.RequestCtx) context.Context {
	if c, ok := ctx.UserValue(traceKey{}).(context.Context); ok {
		return c
	}
	return context.Background()
}

// childSpan starts a child of ctx's span, or returns a no-op span without
// touching the tracer when ctx's span is not recorded (not sampled, or
// tracing off): a sampled-out request pays one check.
func childSpan(ctx context.Context, name string) trace.Span {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return noopSpan
	}
	_, span := tracer.Start(ctx, name)
	return span
}
