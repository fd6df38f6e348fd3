package classify

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// tracer names the preprocess spans' instrumentation scope; it follows the
// global tracer provider (tracing.Start).
var tracer = otel.Tracer("github.com/batchgate/batchgate/proxy/classify")

// startSpan starts a child of ctx's span, or returns a no-op span when
// ctx's span is not recorded: a sampled-out request pays one check.
func startSpan(ctx context.Context, name string) trace.Span {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return noop.Span{}
	}
	_, span := tracer.Start(ctx, name)
	return span
}

// endSpan ends span, marking it failed with err's message (decode errors
// name the problem with the image, never internals).
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
