// Package tracing sets up OpenTelemetry tracing for batchgate's two
// processes, the proxy and the runtime, from the standard OTEL_* environment
// variables, and carries span contexts across the runtime's unix socket.
//
// Tracing is off unless an OTLP endpoint is set: the global tracer provider
// then stays OpenTelemetry's no-op one, whose spans cost a few nanoseconds
// and allocate nothing.
//
// The sampler is always parent-based: a sampled upstream context (an
// incoming W3C traceparent with the sampled flag) is always recorded, an
// unsampled one never is, and the configured sampler decides only for new
// traces. Spans go to an OTLP/HTTP exporter through a batch span processor,
// whose queue is bounded (2048 spans by default, OTEL_BSP_MAX_QUEUE_SIZE):
// when the collector is slow or gone, spans are dropped, never requests.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/batchgate/batchgate/runtime/wire"
)

// Config is the tracing set-up of one process. The zero value is tracing
// off.
type Config struct {
	// Endpoint is the OTLP/HTTP traces URL, such as
	// http://127.0.0.1:4318/v1/traces. Empty: tracing off.
	Endpoint string
	// Sampler decides for new traces (no parent); the process wraps it
	// in a parent-based sampler. Nil means always on.
	Sampler sdktrace.Sampler
	// SamplerName and Ratio describe Sampler for the start-up log.
	SamplerName string
	Ratio       float64
	// ServiceName is service.name unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES set it (the SDK reads those itself).
	ServiceName string
}

// Enabled reports whether spans are exported.
func (c Config) Enabled() bool { return c.Endpoint != "" }

// ConfigFromEnv reads the standard variables through getenv:
//
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the full URL) or
//     OTEL_EXPORTER_OTLP_ENDPOINT (a base URL: /v1/traces is appended).
//     Neither set: tracing off.
//   - OTEL_SDK_DISABLED=true: tracing off.
//   - OTEL_TRACES_SAMPLER: parentbased_traceidratio (default),
//     parentbased_always_on, parentbased_always_off, or traceidratio,
//     always_on, always_off, which mean the same here: the sampler is
//     always parent-based.
//   - OTEL_TRACES_SAMPLER_ARG: the ratio for traceidratio, in [0, 1];
//     default 0.01.
//
// service is the default service.name. Other OTEL_EXPORTER_OTLP_* variables
// (headers, timeout, compression, certificates) and OTEL_BSP_* are read by
// the SDK itself.
func ConfigFromEnv(getenv func(string) string, service string) (Config, error) {
	c := Config{ServiceName: service}
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return c, nil
	}
	switch {
	case getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "":
		c.Endpoint = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	case getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "":
		c.Endpoint = strings.TrimRight(getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "/") + "/v1/traces"
	default:
		return c, nil
	}
	if !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://") {
		return c, fmt.Errorf("OTLP endpoint %q: want an http:// or https:// URL (OTLP/HTTP, port 4318 by convention)", c.Endpoint)
	}
	c.SamplerName = getenv("OTEL_TRACES_SAMPLER")
	if c.SamplerName == "" {
		c.SamplerName = "parentbased_traceidratio"
	}
	c.Ratio = 0.01
	if v := getenv("OTEL_TRACES_SAMPLER_ARG"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r > 1 {
			return c, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio in [0, 1]", v)
		}
		c.Ratio = r
	}
	switch strings.TrimPrefix(c.SamplerName, "parentbased_") {
	case "traceidratio":
		c.Sampler = sdktrace.TraceIDRatioBased(c.Ratio)
	case "always_on":
		c.Sampler, c.Ratio = sdktrace.AlwaysSample(), 1
	case "always_off":
		c.Sampler, c.Ratio = sdktrace.NeverSample(), 0
	default:
		return c, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want parentbased_traceidratio, parentbased_always_on or parentbased_always_off", c.SamplerName)
	}
	return c, nil
}

// Start installs the global tracer provider and the W3C trace-context
// propagator for cfg, and returns the function that flushes and stops
// them (call it on exit with a deadline). With tracing off it installs
// nothing and the returned function does nothing. Export errors are logged
// at warn level; they never fail a request.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	if !cfg.Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Endpoint))
	if err != nil {
		return nil, fmt.Errorf("cannot create the OTLP/HTTP exporter for %q: %w", cfg.Endpoint, err)
	}
	env, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("cannot read OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	res, err := resource.Merge(resource.NewSchemaless(attribute.String("service.name", cfg.ServiceName)), env)
	if err != nil {
		return nil, fmt.Errorf("cannot merge the trace resource: %w", err)
	}
	root := cfg.Sampler
	if root == nil {
		root = sdktrace.AlwaysSample()
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(root)),
	)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: cannot export spans", "error", err)
	}))
	log.Info("tracing on", "endpoint", cfg.Endpoint, "sampler", "parentbased("+strings.TrimPrefix(cfg.SamplerName, "parentbased_")+")",
		"ratio", cfg.Ratio, "service", cfg.ServiceName)
	return tp.Shutdown, nil
}

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
