// Package tracing sets up OpenTelemetry tracing for batchgate's two
// processes, the proxy and the runtime, from the standard OTEL_* environment
// variables, and carries span contexts across the runtime's unix socket.
//
// Tracing is off unless an OTLP endpoint is set: the global tracer provider
// then stays OpenTelemetry's no-op one, whose spans cost a few nanoseconds
// and allocate nothing.
//
// The sampler is parent-based: a sampled upstream context is always
// recorded, an unsampled one never is, and the configured sampler decides
// for new traces. The exception is the edge: the proxy marks the context of
// a request it does not trust (TRACING_TRUST_REMOTE, IgnoreRemoteSampled),
// and for such a request the configured sampler decides as for a new trace,
// whatever the incoming flag, while the trace id is kept. A client cannot
// then force every one of its requests to be recorded and flood the
// exporter's queue. Spans go to an OTLP/HTTP exporter through a batch span processor,
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
	// TrustRemote says whose incoming sampled flag the proxy honours
	// (TRACING_TRUST_REMOTE); the zero value is TrustAuthenticated. Only
	// the proxy's HTTP edge applies it: the runtime's remote parent is
	// the proxy, always trusted.
	TrustRemote TrustRemote
}

// TrustRemote says whose incoming W3C sampled flag a request's server span
// honours. A request that is not trusted still continues the incoming
// trace id (its span's parent is the caller's span), but the configured
// sampler decides whether it is recorded, as for a new trace.
type TrustRemote string

// The TRACING_TRUST_REMOTE values.
const (
	// TrustAuthenticated honours the flag only on requests whose API key
	// authenticated (docs/auth.md). Without API keys nobody is
	// authenticated: the flag is never honoured. The default.
	TrustAuthenticated TrustRemote = "authenticated"
	// TrustAlways honours every caller's flag: for a proxy behind a
	// gateway that sets or strips traceparent itself.
	TrustAlways TrustRemote = "always"
	// TrustNever never honours it: the proxy's sampler always decides.
	TrustNever TrustRemote = "never"
)

// ParseTrustRemote reads a TRACING_TRUST_REMOTE value; "" is the default,
// TrustAuthenticated.
func ParseTrustRemote(s string) (TrustRemote, error) {
	switch t := TrustRemote(strings.ToLower(strings.TrimSpace(s))); t {
	case "":
		return TrustAuthenticated, nil
	case TrustAuthenticated, TrustAlways, TrustNever:
		return t, nil
	}
	return "", fmt.Errorf("TRACING_TRUST_REMOTE=%.40q: want authenticated (the default), always or never", s)
}

// Trusts reports whether a request's incoming sampled flag is honoured;
// authenticated is whether its API key authenticated. The zero value
// behaves as TrustAuthenticated.
func (t TrustRemote) Trusts(authenticated bool) bool {
	switch t {
	case TrustAlways:
		return true
	case TrustNever:
		return false
	}
	return authenticated
}

// ignoreRemoteKey marks a context whose remote parent's sampled flag the
// sampler ignores.
type ignoreRemoteKey struct{}

// IgnoreRemoteSampled marks ctx, which holds a remote span context (an
// extracted traceparent), so that a span started with it continues the
// remote trace but is sampled by the process's own sampler (Sampler), as a
// new trace would be, whatever the remote sampled flag says.
func IgnoreRemoteSampled(ctx context.Context) context.Context {
	return context.WithValue(ctx, ignoreRemoteKey{}, true)
}

// Sampler is the sampler tracing.Start installs: ParentBased(root), except
// that a remote parent in a context marked by IgnoreRemoteSampled is
// decided by root, as a new trace is (with the parent's trace id, so a
// ratio sampler stays consistent along the trace).
func Sampler(root sdktrace.Sampler) sdktrace.Sampler {
	return edgeSampler{root: root, parent: sdktrace.ParentBased(root)}
}

type edgeSampler struct{ root, parent sdktrace.Sampler }

func (s edgeSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if psc := trace.SpanContextFromContext(p.ParentContext); psc.IsValid() && psc.IsRemote() &&
		p.ParentContext.Value(ignoreRemoteKey{}) != nil {
		return s.root.ShouldSample(p)
	}
	return s.parent.ShouldSample(p)
}

func (s edgeSampler) Description() string {
	return "EdgeParentBased{" + s.root.Description() + "}"
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
//   - TRACING_TRUST_REMOTE: authenticated (default), always or never
//     (TrustRemote). Read, and a bad value refused, even with tracing
//     off, so a typo shows before tracing is turned on.
//
// service is the default service.name. Other OTEL_EXPORTER_OTLP_* variables
// (headers, timeout, compression, certificates) and OTEL_BSP_* are read by
// the SDK itself.
func ConfigFromEnv(getenv func(string) string, service string) (Config, error) {
	trust, err := ParseTrustRemote(getenv("TRACING_TRUST_REMOTE"))
	if err != nil {
		return Config{}, err
	}
	c := Config{ServiceName: service, TrustRemote: trust}
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
		sdktrace.WithSampler(Sampler(root)),
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
