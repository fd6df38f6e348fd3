package tracing

import (
	"context"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name         string
		env          map[string]string
		wantEndpoint string
		wantSampler  string // Sampler.Description(); "" when off
		wantTrust    TrustRemote
		wantErr      string
	}{
		{name: "off without an endpoint", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}},
		{name: "base endpoint gets /v1/traces", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"},
			wantEndpoint: "http://127.0.0.1:4318/v1/traces", wantSampler: "TraceIDRatioBased{0.01}"},
		{name: "traces endpoint is used as is", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://b/otlp/traces"}, wantEndpoint: "https://b/otlp/traces", wantSampler: "TraceIDRatioBased{0.01}"},
		{name: "disabled wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_SDK_DISABLED": "TRUE"}},
		{name: "ratio", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "0.25"}, wantEndpoint: "http://a:4318/v1/traces", wantSampler: "TraceIDRatioBased{0.25}"},
		{name: "always on", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
			wantEndpoint: "http://a:4318/v1/traces", wantSampler: "AlwaysOnSampler"},
		{name: "always off", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_SAMPLER": "always_off"},
			wantEndpoint: "http://a:4318/v1/traces", wantSampler: "AlwaysOffSampler"},
		{name: "bad ratio", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
			wantErr: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "unknown sampler", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_SAMPLER": "jaeger_remote"},
			wantErr: "OTEL_TRACES_SAMPLER"},
		{name: "gRPC-style endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, wantErr: "http://"},
		{name: "trust always", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "TRACING_TRUST_REMOTE": "always"},
			wantEndpoint: "http://a:4318/v1/traces", wantSampler: "TraceIDRatioBased{0.01}", wantTrust: TrustAlways},
		{name: "trust never, any case", env: map[string]string{"TRACING_TRUST_REMOTE": " Never "}, wantTrust: TrustNever},
		{name: "trust authenticated", env: map[string]string{"TRACING_TRUST_REMOTE": "authenticated"}, wantTrust: TrustAuthenticated},
		{name: "bad trust", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "TRACING_TRUST_REMOTE": "yes"},
			wantErr: "TRACING_TRUST_REMOTE"},
		{name: "bad trust with tracing off", env: map[string]string{"OTEL_SDK_DISABLED": "true", "TRACING_TRUST_REMOTE": "true"},
			wantErr: "TRACING_TRUST_REMOTE"},
	} {
		if tc.wantTrust == "" {
			tc.wantTrust = TrustAuthenticated // the default
		}
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConfigFromEnv(func(k string) string { return tc.env[k] }, "svc")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var sampler string
			if c.Sampler != nil {
				sampler = c.Sampler.Description()
			}
			if c.Endpoint != tc.wantEndpoint || sampler != tc.wantSampler || c.Enabled() != (tc.wantEndpoint != "") || c.ServiceName != "svc" ||
				c.TrustRemote != tc.wantTrust {
				t.Errorf("got endpoint %q sampler %q enabled %v trust %q; want %q %q %q", c.Endpoint, sampler, c.Enabled(), c.TrustRemote,
					tc.wantEndpoint, tc.wantSampler, tc.wantTrust)
			}
		})
	}
}

// TestSampler: the installed sampler follows a remote parent's sampled flag
// unless the context is marked by IgnoreRemoteSampled; then the root
// sampler decides, as for a new trace, and the trace id is kept. A local
// parent is always followed.
func TestSampler(t *testing.T) {
	remote := func(sampled bool) trace.SpanContext {
		var flags trace.TraceFlags
		if sampled {
			flags = trace.FlagsSampled
		}
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 15: 2}, SpanID: trace.SpanID{3, 7: 4},
			TraceFlags: flags, Remote: true})
	}
	local := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{5, 15: 6}, SpanID: trace.SpanID{7, 7: 8},
		TraceFlags: trace.FlagsSampled})
	for _, tc := range []struct {
		name   string
		root   sdktrace.Sampler
		parent trace.SpanContext // zero: none
		ignore bool
		want   bool // recorded and sampled
	}{
		{"remote sampled, followed", sdktrace.NeverSample(), remote(true), false, true},
		{"remote unsampled, followed", sdktrace.AlwaysSample(), remote(false), false, false},
		{"remote sampled, ignored: root says no", sdktrace.NeverSample(), remote(true), true, false},
		{"remote unsampled, ignored: root says yes", sdktrace.AlwaysSample(), remote(false), true, true},
		{"remote sampled, ignored: ratio 0", sdktrace.TraceIDRatioBased(0), remote(true), true, false},
		{"local parent, mark has no effect", sdktrace.NeverSample(), local, true, true},
		{"no parent: root", sdktrace.AlwaysSample(), trace.SpanContext{}, true, true},
		{"no parent: root says no", sdktrace.NeverSample(), trace.SpanContext{}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(Sampler(tc.root)))
			ctx := context.Background()
			if tc.parent.IsValid() {
				ctx = trace.ContextWithSpanContext(ctx, tc.parent)
			}
			if tc.ignore {
				ctx = IgnoreRemoteSampled(ctx)
			}
			_, span := tp.Tracer("test").Start(ctx, "s")
			span.End()
			sc := span.SpanContext()
			if sc.IsSampled() != tc.want || span.IsRecording() || len(rec.Ended()) != b2i(tc.want) {
				t.Errorf("sampled %v, %d spans recorded; want sampled %v", sc.IsSampled(), len(rec.Ended()), tc.want)
			}
			if tc.parent.IsValid() && sc.TraceID() != tc.parent.TraceID() {
				t.Errorf("trace id %s, want the parent's %s", sc.TraceID(), tc.parent.TraceID())
			}
		})
	}
	if d := Sampler(sdktrace.TraceIDRatioBased(0.5)).Description(); !strings.Contains(d, "TraceIDRatioBased{0.5}") {
		t.Errorf("Description() = %q, want the root's", d)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestTrustRemote(t *testing.T) {
	for _, tc := range []struct {
		trust          TrustRemote
		authn, unauthn bool
	}{
		{"", true, false},
		{TrustAuthenticated, true, false},
		{TrustAlways, true, true},
		{TrustNever, false, false},
	} {
		if got := tc.trust.Trusts(true); got != tc.authn {
			t.Errorf("%q.Trusts(authenticated) = %v", tc.trust, got)
		}
		if got := tc.trust.Trusts(false); got != tc.unauthn {
			t.Errorf("%q.Trusts(not authenticated) = %v", tc.trust, got)
		}
	}
}
