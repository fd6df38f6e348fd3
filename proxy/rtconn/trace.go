package rtconn

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/batching"
)

// tracer names the proxy's batch and queue spans' instrumentation scope. It
// follows the global tracer provider (tracing.Start); without one its spans
// are no-ops.
var tracer = otel.Tracer("github.com/batchgate/batchgate/proxy/rtconn")

// NewItem returns the Item of one image for the request whose context is
// ctx: its deadline bounds the batch, and its span (if any) is what the
// batch span links to.
func NewItem(ctx context.Context, tensor []float32, modelSHA string) *Item {
	dl, _ := ctx.Deadline()
	return &Item{Tensor: tensor, ModelSHA: modelSHA, Submitted: time.Now(), Deadline: dl,
		Trace: trace.SpanContextFromContext(ctx)}
}

// TraceQueue records item's wait in the batcher as a "queue" span in the
// trace of ctx's request, from its submission to its batch's start, linked
// to the batch span that ran it. Requests that are not sampled cost a check.
func TraceQueue(ctx context.Context, item *Item, r *Result, err error) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return
	}
	opts := []trace.SpanStartOption{trace.WithTimestamp(item.Submitted)}
	end := time.Now()
	if r != nil {
		end = item.Submitted.Add(r.QueueWait)
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: r.BatchSpan,
			Attributes: []attribute.KeyValue{attribute.String("link.kind", "batch")}}),
			trace.WithAttributes(attribute.Int("batch.size", r.BatchSize)))
	}
	_, span := tracer.Start(ctx, "queue", opts...)
	if err != nil {
		span.SetStatus(codes.Error, "not run: "+errorClass(err))
	}
	span.End(trace.WithTimestamp(end))
}

// startBatchSpan starts the span of one batch. Its parent is the first
// sampled member's request span, so the batch shows in that request's
// trace, and it links to every sampled member's span (a batch has many
// parents). With no sampled member it returns a no-op span: nothing is
// recorded or sent to the runtime.
func startBatchSpan(ctx context.Context, items []*Item, modelSHA string) trace.Span {
	var (
		parent trace.SpanContext
		links  []trace.Link
	)
	for _, it := range items {
		if !it.Trace.IsSampled() {
			continue
		}
		if !parent.IsValid() {
			parent = it.Trace
		}
		links = append(links, trace.Link{SpanContext: it.Trace, Attributes: []attribute.KeyValue{attribute.String("link.kind", "member")}})
	}
	if !parent.IsValid() {
		return trace.SpanFromContext(context.Background()) // no-op
	}
	info, _ := batching.InfoFrom(ctx)
	_, span := tracer.Start(trace.ContextWithSpanContext(ctx, parent), "batch",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.Int("batch.size", len(items)),
			attribute.Int("batch.sampled_members", len(links)),
			attribute.String("batch.trigger", info.Trigger.String()),
			attribute.Int("batch.queue_depth", info.QueueDepth),
			attribute.String("model.sha256", modelSHA),
		))
	return span
}

// errorClass names an error for a span status without its details.
func errorClass(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, batching.ErrQueueFull):
		return "queue full"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrUnavailable):
		return "runtime unavailable"
	}
	return "failed"
}
