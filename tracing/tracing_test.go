package tracing

import (
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name         string
		env          map[string]string
		wantEndpoint string
		wantSampler  string // Sampler.Description(); "" when off
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
	} {
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
			if c.Endpoint != tc.wantEndpoint || sampler != tc.wantSampler || c.Enabled() != (tc.wantEndpoint != "") || c.ServiceName != "svc" {
				t.Errorf("got endpoint %q sampler %q enabled %v; want %q %q", c.Endpoint, sampler, c.Enabled(), tc.wantEndpoint, tc.wantSampler)
			}
		})
	}
}

func TestWireRoundTrip(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 15: 3}, SpanID: trace.SpanID{4, 7: 5},
		TraceFlags: trace.FlagsSampled})
	got := FromWire(ToWire(sc))
	if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsSampled() || !got.IsRemote() {
		t.Errorf("round trip = %+v, want %+v, remote", got, sc)
	}
	if tc := ToWire(trace.SpanContext{}); tc.IsValid() {
		t.Errorf("an invalid span context gave %+v", tc)
	}
}
