package gateway

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/auth"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// TestGRPCTraceTree: a ModelInfer carrying a traceparent in its metadata
// gets a server span named after the method, a child of the client's span,
// with the image's preprocess and queue spans under it, the call's status
// code and model, and the request log names its trace and span.
func TestGRPCTraceTree(t *testing.T) {
	rec := recordSpans(t)
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.Tracing = true
	tp := startProxy(t, cfg)
	client := pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-"+parent+"-01")
	req := &pb.ModelInferRequest{ModelName: "resnet50",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(testenv.UniquePNG(9300))}}
	if _, err := client.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	id, _ := trace.TraceIDFromHex(traceID)
	spans := spansOf(rec, id)
	server := spans["inference.GRPCInferenceService/ModelInfer"]
	if len(server) != 1 {
		t.Fatalf("server spans %v in the client's trace, want one named inference.GRPCInferenceService/ModelInfer (all: %v)", server, spans)
	}
	s := server[0]
	if s.SpanKind() != trace.SpanKindServer || s.Parent().SpanID().String() != parent {
		t.Errorf("server span: kind %v, parent %s; want a server span under the client's %s", s.SpanKind(), s.Parent().SpanID(), parent)
	}
	attrs := map[string]string{}
	for _, a := range s.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	for k, want := range map[string]string{"rpc.system": "grpc", "rpc.grpc.status_code": "0", "model.name": "resnet50"} {
		if attrs[k] != want {
			t.Errorf("server span attribute %s = %q, want %q (all: %v)", k, attrs[k], want, attrs)
		}
	}
	for _, name := range []string{"preprocess", "queue"} {
		if c := spans[name]; len(c) != 1 || c[0].Parent().SpanID() != s.SpanContext().SpanID() {
			t.Errorf("%q spans %v, want one child of the server span", name, c)
		}
	}
	want := fmt.Sprintf(`"trace_id":%q,"span_id":%q`, traceID, s.SpanContext().SpanID())
	if !containsLine(tp.log.String(), `"protocol":"grpc"`, want) {
		t.Errorf("no gRPC request log line with %s:\n%s", want, tp.log.String())
	}
}

// containsLine reports whether one line of log holds every part.
func containsLine(log string, parts ...string) bool {
	for line := range strings.SplitSeq(log, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestGRPCRefusedBeforeMessage: a ModelInfer without a valid key is
// refused as its headers arrive: the client has sent no message yet (and
// never will), and still gets UNAUTHENTICATED at once, so that no client
// without a key makes the proxy buffer a message. A key without the
// predict scope gets PERMISSION_DENIED the same way. Without the check on
// the headers, the server waits for the message and the call runs into
// its deadline.
func TestGRPCRefusedBeforeMessage(t *testing.T) {
	keys, tp, conn := keyedGRPC(t, map[string][]auth.Scope{"meta": {auth.Metadata}})
	key := keys["meta"]
	for _, tc := range []struct {
		name string
		md   []string
		want codes.Code
	}{
		{"no key", nil, codes.Unauthenticated},
		{"bad key", []string{"authorization", "Bearer " + key + "x"}, codes.Unauthenticated},
		{"no predict scope", []string{"x-api-key", key}, codes.PermissionDenied},
	} {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), tc.md...), 10*time.Second)
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
			pb.GRPCInferenceService_ModelInfer_FullMethodName)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		// Headers only: no message is sent, and the stream stays open.
		err = stream.RecvMsg(new(pb.ModelInferResponse))
		cancel()
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v before any message is sent", tc.name, err, tc.want)
		}
	}
	if got := metricValue(t, tp.metricsURL, `inference_grpc_requests_total{method="/inference.GRPCInferenceService/ModelInfer",code="Unauthenticated"}`); got != 2 {
		t.Errorf("Unauthenticated ModelInfer calls counted: %v, want 2", got)
	}
}

// TestGRPCUnimplemented: the RPCs of Triton's service that the proxy does
// not serve (streaming inference, model configuration, repository control)
// answer UNIMPLEMENTED, and the proxy keeps serving.
func TestGRPCUnimplemented(t *testing.T) {
	tp, client, ctx := tinyGRPC(t)
	conn := serveGRPC(t, tp)
	for _, method := range []string{"ModelStreamInfer", "ModelConfig", "RepositoryModelLoad", "RepositoryModelUnload"} {
		err := conn.Invoke(ctx, "/inference.GRPCInferenceService/"+method, &pb.ServerLiveRequest{}, new(pb.ServerLiveResponse))
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("%s: %v, want Unimplemented", method, err)
		}
	}
	if r, err := client.ServerLive(ctx, &pb.ServerLiveRequest{}); err != nil || !r.Live {
		t.Errorf("ServerLive after the unimplemented calls: %v, %v", r, err)
	}
}
