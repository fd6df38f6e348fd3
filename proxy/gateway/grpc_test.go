package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/auth"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// serveGRPC serves tp's gRPC API on a loopback port and returns a client
// connection to it (closed at cleanup, before the proxy shuts down).
func serveGRPC(t *testing.T, tp *testProxy) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tp.ServeGRPC(ln)
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// tinyGRPC starts a runtime on the tiny model and a proxy serving gRPC,
// and returns the proxy, a client and a context that ends with the test
// (at most a minute).
func tinyGRPC(t *testing.T) (*testProxy, pb.GRPCInferenceServiceClient, context.Context) {
	t.Helper()
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	tp := startProxy(t, testConfig(rt.socket))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return tp, pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp)), ctx
}

// rawBytes is a BYTES tensor as tritonclient puts it in
// raw_input_contents: each element a 4-byte little-endian length, then its
// bytes.
func rawBytes(elems ...[]byte) []byte {
	var b []byte
	for _, e := range elems {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

// rawStrings reads raw_output_contents' BYTES elements.
func rawStrings(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) > 0 {
		if len(b) < 4 || int(binary.LittleEndian.Uint32(b)) > len(b)-4 {
			t.Fatalf("malformed BYTES output: %q", b)
		}
		n := int(binary.LittleEndian.Uint32(b))
		out, b = append(out, string(b[4:4+n])), b[4+n:]
	}
	return out
}

// rawFloats reads raw_output_contents' FP32 values.
func rawFloats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// classification asks for the classification extension's k best, as
// tritonclient's InferRequestedOutput(name, class_count=k) does.
func classification(k int64) []*pb.ModelInferRequest_InferRequestedOutputTensor {
	return []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "classification",
		Parameters: map[string]*pb.InferParameter{"classification": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: k}}}}}
}

// TestGRPCInfer: ModelInfer over gRPC answers what /v2 infer over HTTP
// answers for the same input: BYTES images in raw_input_contents (as
// tritonclient sends them) and in contents.bytes_contents, FP32 tensors in
// raw_input_contents and in contents.fp32_contents; and the metadata,
// readiness, health and reflection services answer.
func TestGRPCInfer(t *testing.T) {
	tp, client, ctx := tinyGRPC(t)
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	other := testenv.UniquePNG(7)
	url := tp.url + "/v2/models/resnet50/infer"

	// HTTP's answer: binary BYTES, classification 3, two images.
	header := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],
		"outputs":[{"name":"classification","parameters":{"classification":3}}]}`, 8+len(jpeg)+len(other))
	req := rawReq(url, "application/octet-stream", append([]byte(header), rawBytes(jpeg, other)...))
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	r := do(t, req)
	if r.status != 200 {
		t.Fatalf("HTTP infer = %d %s", r.status, r.raw)
	}
	var want []string
	for _, v := range r.body["outputs"].([]any)[0].(map[string]any)["data"].([]any) {
		want = append(want, v.(string))
	}

	bytesInput := &pb.ModelInferRequest_InferInputTensor{Name: "image", Datatype: "BYTES", Shape: []int64{2}}
	for _, tc := range []struct {
		name string
		req  *pb.ModelInferRequest
	}{
		{"raw_input_contents", &pb.ModelInferRequest{ModelName: "resnet50", Id: "g1", Inputs: []*pb.ModelInferRequest_InferInputTensor{bytesInput},
			Outputs: classification(3), RawInputContents: [][]byte{rawBytes(jpeg, other)}}},
		{"bytes_contents", &pb.ModelInferRequest{ModelName: "resnet50", ModelVersion: "1", Id: "g1", Inputs: []*pb.ModelInferRequest_InferInputTensor{{
			Name: "image", Datatype: "BYTES", Shape: []int64{2, 1}, Contents: &pb.InferTensorContents{BytesContents: [][]byte{jpeg, other}}}},
			Outputs: classification(3)}},
	} {
		resp, err := client.ModelInfer(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out := resp.Outputs[0]
		if resp.Id != "g1" || resp.ModelName != "resnet50" || resp.ModelVersion != "1" || out.Name != "classification" ||
			out.Datatype != "BYTES" || fmt.Sprint(out.Shape) != "[2 3]" || len(resp.RawOutputContents) != 1 {
			t.Fatalf("%s: answer %v", tc.name, resp)
		}
		if got := rawStrings(t, resp.RawOutputContents[0]); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: classification %q, want HTTP's %q", tc.name, got, want)
		}
	}

	// FP32: HTTP's JSON answer, then gRPC's raw and contents forms.
	tensor := make([]float32, 3*224*224)
	for i := range tensor {
		tensor[i] = float32(math.Sin(float64(i)))
	}
	tj, _ := json.Marshal(tensor)
	r = do(t, rawReq(url, "application/json", []byte(`{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","data":`+string(tj)+`}]}`)))
	if r.status != 200 {
		t.Fatalf("HTTP FP32 infer = %d %.300s", r.status, r.raw)
	}
	var wantScores []float32
	for _, v := range r.body["outputs"].([]any)[0].(map[string]any)["data"].([]any) {
		wantScores = append(wantScores, float32(v.(float64)))
	}
	var rawTensor []byte
	for _, v := range tensor {
		rawTensor = binary.LittleEndian.AppendUint32(rawTensor, math.Float32bits(v))
	}
	fp32Input := func(c *pb.InferTensorContents) []*pb.ModelInferRequest_InferInputTensor {
		return []*pb.ModelInferRequest_InferInputTensor{{Name: "data", Datatype: "FP32", Shape: []int64{1, 3, 224, 224}, Contents: c}}
	}
	for _, tc := range []struct {
		name string
		req  *pb.ModelInferRequest
	}{
		{"raw FP32", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: fp32Input(nil), RawInputContents: [][]byte{rawTensor}}},
		{"fp32_contents", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: fp32Input(&pb.InferTensorContents{Fp32Contents: tensor})}},
	} {
		resp, err := client.ModelInfer(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out := resp.Outputs[0]
		got := rawFloats(resp.RawOutputContents[0])
		if out.Datatype != "FP32" || fmt.Sprint(out.Shape) != "[1 1000]" || fmt.Sprint(got) != fmt.Sprint(wantScores) {
			t.Errorf("%s: %s %v, %d scores; want HTTP's %d", tc.name, out.Datatype, out.Shape, len(got), len(wantScores))
		}
	}

	// Metadata and readiness, as /v2 answers them.
	if md, err := client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "resnet50"}); err != nil || md.Name != "resnet50" ||
		len(md.Inputs) != 2 || md.Inputs[0].Datatype != "BYTES" || fmt.Sprint(md.Outputs[0].Shape) != "[-1 1000]" || md.Platform != "onnxruntime_onnx" {
		t.Errorf("ModelMetadata = %v, %v", md, err)
	}
	if sm, err := client.ServerMetadata(ctx, &pb.ServerMetadataRequest{}); err != nil || sm.Name != "batchgate" || sm.Version != Version {
		t.Errorf("ServerMetadata = %v, %v", sm, err)
	}
	if mr, err := client.ModelReady(ctx, &pb.ModelReadyRequest{Name: "resnet50", Version: "1"}); err != nil || !mr.Ready {
		t.Errorf("ModelReady = %v, %v", mr, err)
	}
	if sr, err := client.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil || !sr.Ready {
		t.Errorf("ServerReady = %v, %v", sr, err)
	}
	health := healthgrpc.NewHealthClient(serveGRPC(t, tp))
	if h, err := health.Check(ctx, &healthgrpc.HealthCheckRequest{}); err != nil || h.Status != healthgrpc.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v, want SERVING", h, err)
	}
	if h, err := health.Check(ctx, &healthgrpc.HealthCheckRequest{Service: "inference.GRPCInferenceService"}); err != nil || h.Status != healthgrpc.HealthCheckResponse_SERVING {
		t.Errorf("health of the service = %v, %v, want SERVING", h, err)
	}
	// Server reflection lists the service (grpcurl's list).
	stream, err := reflectionpb.NewServerReflectionClient(serveGRPC(t, tp)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	lr, err := stream.Recv()
	if err != nil || !strings.Contains(fmt.Sprint(lr.GetListServicesResponse()), "inference.GRPCInferenceService") {
		t.Errorf("reflection: %v, %v", lr, err)
	}
	stream.CloseSend()
	if idx, err := client.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{}); err != nil || len(idx.Models) != 1 ||
		idx.Models[0].Name != "resnet50" || idx.Models[0].Version != "1" || idx.Models[0].State != "READY" {
		t.Errorf("RepositoryIndex = %v, %v", idx, err)
	}
	// Counted per method and code.
	if got := metricValue(t, tp.metricsURL, `inference_grpc_requests_total{method="/inference.GRPCInferenceService/ModelInfer",code="OK"}`); got != 4 {
		t.Errorf("gRPC ModelInfer OK count = %v, want 4", got)
	}
}

// TestGRPCErrors: each class of bad call gets the code a Triton client
// expects, with a message and no internals, and the server still serves.
func TestGRPCErrors(t *testing.T) {
	_, client, ctx := tinyGRPC(t)
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	image := func(shape ...int64) []*pb.ModelInferRequest_InferInputTensor {
		return []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: shape}}
	}
	for _, tc := range []struct {
		name string
		req  *pb.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"unknown model", &pb.ModelInferRequest{ModelName: "nope", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)}},
			codes.NotFound, "unknown model"},
		{"unknown version", &pb.ModelInferRequest{ModelName: "resnet50", ModelVersion: "7", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)}},
			codes.NotFound, "unknown model version"},
		{"truncated length prefix", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{{1, 0}}},
			codes.InvalidArgument, "truncated length prefix"},
		{"length past the end", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)[:100]}},
			codes.InvalidArgument, "beyond"},
		{"shape mismatch", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(2), RawInputContents: [][]byte{rawBytes(jpeg)}},
			codes.InvalidArgument, "does not match"},
		{"two inputs", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: append(image(1), image(1)...), RawInputContents: [][]byte{rawBytes(jpeg)}},
			codes.InvalidArgument, "exactly one input"},
		{"no input", &pb.ModelInferRequest{ModelName: "resnet50"}, codes.InvalidArgument, "exactly one input"},
		{"FP32 raw size", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "data", Datatype: "FP32",
			Shape: []int64{1, 3, 224, 224}}}, RawInputContents: [][]byte{make([]byte, 12)}}, codes.InvalidArgument, "raw_input_contents must hold"},
		{"INT32 contents", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "data", Datatype: "INT32",
			Shape: []int64{1}, Contents: &pb.InferTensorContents{IntContents: []int32{1}}}}}, codes.InvalidArgument, "fp32_contents or bytes_contents"},
		{"unknown output", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)},
			Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "logits"}}}, codes.InvalidArgument, "unknown output"},
		{"classification 0", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)},
			Outputs: classification(0)}, codes.InvalidArgument, "classification must be"},
		{"corrupt image", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg[:200])}},
			codes.InvalidArgument, "corrupt"},
		{"not an image", &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes([]byte("hello"))}},
			codes.InvalidArgument, "format"},
	} {
		_, err := client.ModelInfer(ctx, tc.req)
		st, _ := status.FromError(err)
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%s: %v %q, want %v with %q", tc.name, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	if _, err := client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelMetadata of an unknown model: %v, want NotFound", err)
	}
	if _, err := client.ModelStatistics(ctx, &pb.ModelStatisticsRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelStatistics of an unknown model: %v, want NotFound", err)
	}
	// Still serving.
	if _, err := client.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "resnet50", Inputs: image(1), RawInputContents: [][]byte{rawBytes(jpeg)}}); err != nil {
		t.Errorf("a good call after the bad ones: %v", err)
	}
}

// TestGRPCDeadline: the proxy's deadline ends a call with
// DEADLINE_EXCEEDED and its own message (counted as the HTTP API's 504s
// are), and a client's grpc-timeout shorter than the inference cancels the
// item: nothing reaches the runtime.
func TestGRPCDeadline(t *testing.T) {
	rt := startRuntime(t, testenv.ResNet50Model(t), 1, "")
	cfg := testConfig(rt.socket)
	cfg.RequestTimeout = time.Millisecond // shorter than decoding
	tp := startProxy(t, cfg)
	client := pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp))
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	req := &pb.ModelInferRequest{ModelName: "resnet50", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(jpeg)}}
	bg, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.ServerLive(bg, &pb.ServerLiveRequest{}); err != nil { // connected
		t.Fatal(err)
	}
	before := rt.Stats().Items
	// The server's deadline: its status reaches the client.
	_, err := client.ModelInfer(bg, req)
	if st, _ := status.FromError(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "deadline exceeded before the inference finished") {
		t.Errorf("past the proxy's deadline: %v, want DeadlineExceeded from the proxy", err)
	}
	if got := metricValue(t, tp.metricsURL, `inference_rejections_total{reason="deadline"}`); got != 1 {
		t.Errorf("deadline rejections = %v, want 1", got)
	}
	// The client's deadline (grpc-timeout): the call ends, and so does its
	// item.
	ctx, cancel5 := context.WithTimeout(bg, 2*time.Millisecond)
	defer cancel5()
	if _, err := client.ModelInfer(ctx, req); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("2 ms grpc-timeout: %v, want DeadlineExceeded", err)
	}
	waitIdle(t, tp)
	if got := rt.Stats().Items - before; got != 0 {
		t.Errorf("expired calls reached the runtime: %d inferences", got)
	}
}

// TestGRPCVersions: with a routing file, gRPC routes as HTTP does: an
// explicit model_version is honoured, an unknown one is NOT_FOUND, and
// metadata, readiness and the repository index list the versions.
func TestGRPCVersions(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v2")
	tp := routingProxy(t, dir, twoVersions)
	client := pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	img := testenv.Image(t, "small.png")
	infer := func(version string) (*pb.ModelInferResponse, error) {
		return client.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "resnet50", ModelVersion: version,
			Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
			RawInputContents: [][]byte{rawBytes(img)}})
	}
	for range 5 {
		if resp, err := infer("v2"); err != nil || resp.ModelVersion != "v2" {
			t.Fatalf("model_version v2: %v, %v", resp, err)
		}
	}
	if resp, err := infer(""); err != nil || (resp.ModelVersion != "v1" && resp.ModelVersion != "v2") {
		t.Errorf("routed by weight: %v, %v", resp, err)
	}
	if _, err := infer("v3"); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "its versions are v1, v2") {
		t.Errorf("unknown version: %v, want NotFound listing v1, v2", err)
	}
	if md, err := client.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "resnet50"}); err != nil || fmt.Sprint(md.Versions) != "[v1 v2]" {
		t.Errorf("ModelMetadata = %v, %v", md, err)
	}
	if mr, err := client.ModelReady(ctx, &pb.ModelReadyRequest{Name: "resnet50", Version: "v2"}); err != nil || !mr.Ready {
		t.Errorf("ModelReady v2 = %v, %v", mr, err)
	}
	idx, err := client.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{Ready: true})
	var got []string
	for _, m := range idx.GetModels() {
		got = append(got, m.Name+"/"+m.Version+":"+m.State)
	}
	if err != nil || strings.Join(got, ",") != "resnet50/v1:READY,resnet50/v2:READY" {
		t.Errorf("RepositoryIndex = %v, %v", got, err)
	}
}

// TestGRPCDrain: Shutdown turns gRPC health NOT_SERVING at once, serves
// calls through the drain delay, then stops the gRPC server (ServeGRPC
// returns) before it returns.
func TestGRPCDrain(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.DrainDelay = time.Second
	tp := startProxy(t, cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- tp.ServeGRPC(ln) }()
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	health := healthgrpc.NewHealthClient(conn)
	client := pb.NewGRPCInferenceServiceClient(conn)
	if h, err := health.Check(ctx, &healthgrpc.HealthCheckRequest{}); err != nil || h.Status != healthgrpc.HealthCheckResponse_SERVING {
		t.Fatalf("before shutdown: %v, %v", h, err)
	}
	shut := make(chan error, 1)
	go func() { shut <- tp.Shutdown(ctx) }()
	waitFor(t, "health NOT_SERVING", 500, func() bool {
		h, err := health.Check(ctx, &healthgrpc.HealthCheckRequest{})
		return err == nil && h.Status == healthgrpc.HealthCheckResponse_NOT_SERVING
	})
	img := testenv.Image(t, "small.png")
	if _, err := client.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "resnet50",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(img)}}); err != nil {
		t.Errorf("a call during the drain delay: %v", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case <-served:
	default:
		t.Error("ServeGRPC still serving after Shutdown returned")
	}
}

// TestGRPCAuth: with API keys, gRPC checks them as HTTP does, from the
// authorization or x-api-key metadata: no key or a bad one is
// UNAUTHENTICATED, a key without the method's scope PERMISSION_DENIED;
// liveness and health need none.
func TestGRPCAuth(t *testing.T) {
	keys, _, conn := keyedGRPC(t, map[string][]auth.Scope{"infer": {auth.Predict}, "meta": {auth.Metadata}})
	client := pb.NewGRPCInferenceServiceClient(conn)
	bg, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	with := func(kv ...string) context.Context { return metadata.AppendToOutgoingContext(bg, kv...) }
	req := &pb.ModelInferRequest{ModelName: "resnet50",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(testenv.Image(t, "small.png"))}}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"no key", bg, codes.Unauthenticated},
		{"bad key", with("authorization", "Bearer "+keys["infer"]+"x"), codes.Unauthenticated},
		{"bearer", with("authorization", "Bearer "+keys["infer"]), codes.OK},
		{"x-api-key", with("x-api-key", keys["infer"]), codes.OK},
		{"no predict scope", with("x-api-key", keys["meta"]), codes.PermissionDenied},
	} {
		_, err := client.ModelInfer(tc.ctx, req)
		if status.Code(err) != tc.want || strings.Contains(fmt.Sprint(err), keys["infer"]) {
			t.Errorf("ModelInfer, %s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := client.ModelMetadata(with("x-api-key", keys["infer"]), &pb.ModelMetadataRequest{Name: "resnet50"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ModelMetadata without the metadata scope: %v, want PermissionDenied", err)
	}
	if _, err := client.ModelMetadata(with("x-api-key", keys["meta"]), &pb.ModelMetadataRequest{Name: "resnet50"}); err != nil {
		t.Errorf("ModelMetadata with the metadata scope: %v", err)
	}
	if _, err := client.ServerLive(bg, &pb.ServerLiveRequest{}); err != nil {
		t.Errorf("ServerLive without a key: %v", err)
	}
	if h, err := healthgrpc.NewHealthClient(conn).Check(bg, &healthgrpc.HealthCheckRequest{}); err != nil || h.Status != healthgrpc.HealthCheckResponse_SERVING {
		t.Errorf("health without a key: %v, %v", h, err)
	}
}

// keyedGRPC starts a runtime on the tiny model and a proxy serving gRPC
// that requires API keys: one key per id, with its scopes. It returns the
// keys by id, the proxy and a client connection.
func keyedGRPC(t *testing.T, scopes map[string][]auth.Scope) (map[string]string, *testProxy, *grpc.ClientConn) {
	t.Helper()
	keys := map[string]string{}
	file := "keys:\n"
	for id, sc := range scopes {
		key, sum, err := auth.GenerateKey(id)
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = key
		file += auth.Key{ID: id, SHA256: sum, Scopes: sc}.Entry()
	}
	parsed, err := auth.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.Auth = parsed
	tp := startProxy(t, cfg)
	return keys, tp, serveGRPC(t, tp)
}
