package oipgrpc

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/batchgate/batchgate/tracing"
)

// tracer names the call spans' instrumentation scope; it follows the
// global tracer provider (tracing.Start).
var tracer = otel.Tracer("github.com/batchgate/batchgate/proxy/oipgrpc")

// mdCarrier reads W3C trace context (traceparent, tracestate) from a
// call's incoming metadata for the propagator.
type mdCarrier metadata.MD

func (c mdCarrier) Get(key string) string { return first(metadata.MD(c), key) }

func (c mdCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// startSpan starts a call's server span, named after its method
// ("inference.GRPCInferenceService/ModelInfer", as OpenTelemetry's RPC
// conventions name them), continuing the traceparent of its metadata. As
// for HTTP, a remote sampled flag is honoured only as
// Config.TrustRemoteSampling says, with authenticated whether the call's
// API key authenticated (admit checked it before the message was read).
// Tracing off: a no-op span, and ctx unchanged.
func (s *Server) startSpan(ctx context.Context, md metadata.MD, method string, authenticated bool) (context.Context, trace.Span) {
	if !s.cfg.Tracing {
		return ctx, noop.Span{}
	}
	pctx := otel.GetTextMapPropagator().Extract(ctx, mdCarrier(md))
	if !s.cfg.TrustRemoteSampling.Trusts(authenticated) && trace.SpanContextFromContext(pctx).IsRemote() {
		pctx = tracing.IgnoreRemoteSampled(pctx)
	}
	name := method
	if len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	return tracer.Start(pctx, name, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "grpc"), attribute.String("rpc.method", name)))
}

// endSpan adds what the call did to its span and ends it.
func endSpan(span trace.Span, code codes.Code, rid string, ci *callInfo) {
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)), attribute.String("request.id", rid))
		if ci.model != "" {
			span.SetAttributes(attribute.String("model.name", ci.model))
		}
		if ci.version != "" {
			span.SetAttributes(attribute.String("model.version", ci.version))
		}
		if ci.keyID != "" {
			span.SetAttributes(attribute.String("auth.key_id", ci.keyID))
		}
		if ci.status >= 500 {
			span.SetStatus(otelcodes.Error, code.String())
		}
	}
	span.End()
}
