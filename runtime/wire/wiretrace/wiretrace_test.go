package wiretrace

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

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

// TestImportsFlowOneWay: the runtime connection and the runtime's server
// map trace contexts here, without the OTLP exporter (package tracing);
// tracing does not import the wire format; the engine reads the model
// metadata keys without the model generators.
func TestImportsFlowOneWay(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for pkg, banned := range map[string][]string{
		"github.com/batchgate/batchgate/proxy/rtconn":   {"github.com/batchgate/batchgate/tracing"},
		"github.com/batchgate/batchgate/runtime/server": {"github.com/batchgate/batchgate/tracing"},
		"github.com/batchgate/batchgate/tracing":        {"github.com/batchgate/batchgate/runtime/wire"},
		"github.com/batchgate/batchgate/runtime/engine": {"github.com/batchgate/batchgate/runtime/modelgen"},
		"github.com/batchgate/batchgate/proxy/versions": {"github.com/batchgate/batchgate/proxy/gateway"},
		"github.com/batchgate/batchgate/proxy/httpapi":  {"github.com/batchgate/batchgate/proxy/versions"},
	} {
		out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		for _, b := range banned {
			if slices.Contains(deps, b) {
				t.Errorf("%s imports %s", pkg, b)
			}
		}
	}
}
