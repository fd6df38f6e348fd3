// Package wiretrace maps OpenTelemetry span contexts to and from the wire
// protocol's Batch trace trailer (wire.TraceContext). The proxy's runtime
// connection writes it and the runtime's server reads it; neither needs the
// exporter (package tracing) for it: this package depends on the
// OpenTelemetry API only.
package wiretrace

import (
	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/runtime/wire"
)

// ToWire converts a span context for the runtime's wire protocol; an
// invalid one gives the zero TraceContext, which is not sent.
func ToWire(sc trace.SpanContext) wire.TraceContext {
	if !sc.IsValid() {
		return wire.TraceContext{}
	}
	return wire.TraceContext{TraceID: sc.TraceID(), SpanID: sc.SpanID(), Flags: byte(sc.TraceFlags())}
}

// FromWire converts a trace context read from the runtime's wire protocol
// into a remote span context.
func FromWire(tc wire.TraceContext) trace.SpanContext {
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tc.TraceID, SpanID: tc.SpanID, TraceFlags: trace.TraceFlags(tc.Flags), Remote: true,
	})
}
