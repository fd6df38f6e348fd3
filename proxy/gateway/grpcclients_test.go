package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/batchgate/batchgate/internal/testenv"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// The gRPC API driven by clients no one here wrote: grpcurl (built from its
// pinned Go module into .deps/tools) through server reflection, and Python's
// grpcio from Debian with stubs generated from the .proto here, running
// examples/python/grpc_client.py; the Go example client; and HTTP and gRPC
// clients at once, sharing batches. Each answer is held to what the HTTP
// /v2 infer route answers for the same image.

// grpcAddr is the host:port a serveGRPC connection dials.
func grpcAddr(conn *grpc.ClientConn) string {
	return strings.TrimPrefix(conn.Target(), "passthrough:///")
}

// httpClassify is what POST /v2/models/resnet50/infer answers for img with
// the classification extension's 3 best (binary-data BYTES input): the
// "score:index:label" strings. It may run on any goroutine: a failure is
// reported with t.Errorf and gives nil.
func httpClassify(t *testing.T, tp *testProxy, img []byte) []string {
	t.Helper()
	header := fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],
		"outputs":[{"name":"classification","parameters":{"classification":3}}]}`, 4+len(img))
	req := rawReq(tp.url+"/v2/models/resnet50/infer", "application/octet-stream", append([]byte(header), rawBytes(img)...))
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	r := do(t, req)
	var out struct {
		Outputs []struct {
			Data []string `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(r.raw, &out); r.status != 200 || err != nil || len(out.Outputs) != 1 || len(out.Outputs[0].Data) != 3 {
		t.Errorf("HTTP infer: %d %s", r.status, r.raw)
		return nil
	}
	return out.Outputs[0].Data
}

// grpcClassify is ModelInfer's answer for img (raw_input_contents, as
// tritonclient sends it) with the 3 best classes. Any goroutine; nil on
// failure, reported with t.Errorf.
func grpcClassify(t *testing.T, ctx context.Context, client pb.GRPCInferenceServiceClient, img []byte) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "resnet50",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(img)}, Outputs: classification(3)})
	if err != nil || len(resp.RawOutputContents) != 1 {
		t.Errorf("gRPC ModelInfer: %v, %v", resp, err)
		return nil
	}
	return rawStrings(t, resp.RawOutputContents[0])
}

// runTool runs a client with a time limit and returns its standard output;
// a failure (exit status, time limit) fails the test with its stderr.
func runTool(t *testing.T, stdin []byte, env []string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = testenv.Root(t)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %.2000s\nstderr: %.2000s", filepath.Base(name), strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// TestGRPCurl: grpcurl (v1.9.4, built from its module by `make deps-test`)
// through server reflection lists the services, describes
// inference.ModelInferRequest with upstream's field numbers, and calls
// ModelInfer with a JSON request (docs/api.md's): a JPEG as a base64 BYTES
// element and the classification parameter; the 3 labels are HTTP's.
func TestGRPCurl(t *testing.T) {
	grpcurl := testenv.Tool(t, "grpcurl")
	tp, _, _ := tinyGRPC(t)
	addr := grpcAddr(serveGRPC(t, tp))
	jpeg := testenv.Image(t, "grace_hopper.jpg")
	want := httpClassify(t, tp, jpeg)
	if want == nil {
		t.FailNow()
	}

	list := string(runTool(t, nil, nil, grpcurl, "-plaintext", "-max-time", "30", addr, "list"))
	for _, svc := range []string{"inference.GRPCInferenceService", "grpc.health.v1.Health"} {
		if !slices.Contains(strings.Fields(list), svc) {
			t.Errorf("grpcurl list does not show %s:\n%s", svc, list)
		}
	}
	desc := string(runTool(t, nil, nil, grpcurl, "-plaintext", "-max-time", "30", addr, "describe", "inference.ModelInferRequest"))
	for _, field := range []string{"message ModelInferRequest {", "string model_name = 1;", "string id = 3;",
		"repeated .inference.ModelInferRequest.InferInputTensor inputs = 5;", "repeated bytes raw_input_contents = 7;"} {
		if !strings.Contains(desc, field) {
			t.Errorf("grpcurl describe inference.ModelInferRequest lacks %q:\n%s", field, desc)
		}
	}

	req := fmt.Sprintf(`{"model_name": "resnet50", "id": "curl-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
		"contents": {"bytes_contents": [%q]}}],
		"outputs": [{"name": "classification", "parameters": {"classification": {"int64_param": 3}}}]}`, base64.StdEncoding.EncodeToString(jpeg))
	out := runTool(t, []byte(req), nil, grpcurl, "-plaintext", "-max-time", "30", "-d", "@", addr, "inference.GRPCInferenceService/ModelInfer")
	var resp struct { // grpcurl prints protobuf's JSON: lowerCamelCase names, int64 as strings, bytes as base64
		ModelName, ModelVersion, ID string
		Outputs                     []struct {
			Name, Datatype string
			Shape          []string
		}
		RawOutputContents [][]byte
	}
	if err := json.Unmarshal(out, &resp); err != nil || len(resp.Outputs) != 1 || len(resp.RawOutputContents) != 1 {
		t.Fatalf("grpcurl ModelInfer printed %s (%v)", out, err)
	}
	if o := resp.Outputs[0]; resp.ModelName != "resnet50" || resp.ModelVersion != "1" || resp.ID != "curl-1" ||
		o.Name != "classification" || o.Datatype != "BYTES" || strings.Join(o.Shape, ",") != "1,3" {
		t.Errorf("grpcurl ModelInfer: %s", out)
	}
	if got := rawStrings(t, resp.RawOutputContents[0]); !slices.Equal(got, want) {
		t.Errorf("grpcurl ModelInfer: %q, want HTTP's %q", got, want)
	}
}

// TestGRPCPythonClient: Debian's grpcio with stubs that Debian's grpc_tools
// generates from the .proto here runs examples/python/grpc_client.py, which
// sends the request as tritonclient's gRPC client does (raw_input_contents,
// the classification parameter as class_count sets it, a deadline); its 3
// labels are HTTP's. An unknown model is its NOT_FOUND and exit status 1.
func TestGRPCPythonClient(t *testing.T) {
	python := testenv.DebianPython(t, "python3-grpcio and python3-grpc-tools", "grpc", "grpc_tools.protoc")
	stubs := t.TempDir()
	runTool(t, nil, nil, python, "-m", "grpc_tools.protoc", "-I", "proxy/oipgrpc/inferencepb",
		"--python_out="+stubs, "--grpc_python_out="+stubs, "grpc_service.proto")
	tp, _, _ := tinyGRPC(t)
	addr := grpcAddr(serveGRPC(t, tp))
	img := filepath.Join(testenv.Root(t), "proxy", "testdata", "small_progressive.jpg")
	want := httpClassify(t, tp, testenv.Image(t, "small_progressive.jpg"))
	if want == nil {
		t.FailNow()
	}
	env := []string{"PYTHONPATH=" + stubs}
	out := runTool(t, nil, env, python, "examples/python/grpc_client.py", "--addr", addr, "--top-k", "3", "--timeout", "20", "--id", "py-1", img)
	var resp struct {
		ModelName       string   `json:"model_name"`
		ModelVersion    string   `json:"model_version"`
		ID              string   `json:"id"`
		Output          string   `json:"output"`
		Shape           []int    `json:"shape"`
		Classifications []string `json:"classifications"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("grpc_client.py printed %s (%v)", out, err)
	}
	if resp.ModelName != "resnet50" || resp.ModelVersion != "1" || resp.ID != "py-1" || resp.Output != "classification" || fmt.Sprint(resp.Shape) != "[1 3]" {
		t.Errorf("grpc_client.py: %s", out)
	}
	if !slices.Equal(resp.Classifications, want) {
		t.Errorf("grpc_client.py: %q, want HTTP's %q", resp.Classifications, want)
	}

	// An error: the gRPC status on stderr, exit status 1.
	cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, python, "examples/python/grpc_client.py", "--addr", addr, "--model", "nope", img)
	cmd.Dir, cmd.Env = testenv.Root(t), append(os.Environ(), env...)
	msg, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(msg), "ModelInfer: NOT_FOUND: unknown model") {
		t.Errorf("grpc_client.py --model nope: %v\n%s\nwant exit status 1 and NOT_FOUND", err, msg)
	}
}

// TestGRPCGoExample: examples/go/grpc-client, built and run against the
// server, prints HTTP's labels.
func TestGRPCGoExample(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "grpc-client")
	runTool(t, nil, nil, "go", "build", "-o", bin, "./examples/go/grpc-client")
	tp, _, _ := tinyGRPC(t)
	want := httpClassify(t, tp, testenv.Image(t, "small_gray.jpg"))
	out := runTool(t, nil, nil, bin, "-addr", grpcAddr(serveGRPC(t, tp)), "-file", "proxy/testdata/small_gray.jpg", "-k", "3", "-timeout", "20s")
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got []string
	for _, l := range lines[1:] {
		got = append(got, strings.TrimPrefix(l, "  "))
	}
	if lines[0] != "proxy/testdata/small_gray.jpg (resnet50, version 1):" || !slices.Equal(got, want) {
		t.Errorf("grpc-client printed:\n%s\nwant HTTP's %q", out, want)
	}
}

// TestGRPCMixedBatches: HTTP and gRPC clients at once (4 of each, 12
// distinct images each, none cached or coalesced) against a batch window:
// batches hold more than one image on average, at least one batch holds
// images of both protocols (seen in the batch spans' member links), and
// every answer is what a lone HTTP request for the same image gets.
func TestGRPCMixedBatches(t *testing.T) {
	rec := recordSpans(t)
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.Tracing = true
	cfg.Batch.Window = 200 * time.Millisecond
	tp := startProxy(t, cfg)
	client := pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := client.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil { // connected
		t.Fatal(err)
	}

	const clients, each, n = 4, 12, 2 * 4 * 12
	img := func(i int) []byte { return testenv.UniqueJPEG(26000 + i) }
	got := make([][]string, n)
	var wg sync.WaitGroup
	for c := range 2 * clients {
		wg.Go(func() {
			for j := range each {
				i := c*each + j
				if c%2 == 0 {
					got[i] = httpClassify(t, tp, img(i))
				} else {
					got[i] = grpcClassify(t, ctx, client, img(i))
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Every image reached the runtime (no cache, no coalescing), in fewer
	// batches than images.
	sum := metricValue(t, tp.metricsURL, "inference_batch_size_sum")
	count := metricValue(t, tp.metricsURL, "inference_batch_size_count")
	grpcOK := metricValue(t, tp.metricsURL, `inference_grpc_requests_total{method="/inference.GRPCInferenceService/ModelInfer",code="OK"}`)
	shared := metricValue(t, tp.metricsURL, "inference_cache_hits_total") + metricValue(t, tp.metricsURL, "inference_cache_coalesced_total")
	if sum != n || rt.Stats().Items != n || shared != 0 || grpcOK != n/2 {
		t.Errorf("%v images in batches, %d inferred, %v cached or coalesced, %v gRPC calls OK; want %d, %d, 0, %d",
			sum, rt.Stats().Items, shared, grpcOK, n, n, n/2)
	}
	if count == 0 || sum/count <= 1 {
		t.Errorf("mean batch size %v/%v, want > 1", sum, count)
	}

	// Which protocol each batch's images came from. Each request is a trace
	// of its own, with one server span: HTTP's has http.route, gRPC's
	// rpc.system. A batch span links to its sampled members; every HTTP
	// request is sampled (AlwaysSample, no remote parent), so a member it
	// does not link to is a gRPC call whose span is not recorded.
	waitFor(t, "every request's span ended", 1000, func() bool {
		spans := rec.Ended()
		servers := 0
		for _, s := range spans {
			if s.SpanKind() == trace.SpanKindServer && hasAttr(s, "http.route") {
				servers++
			}
		}
		return servers >= n/2
	})
	proto := map[trace.TraceID]string{}
	var batches []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch {
		case s.Name() == "batch":
			batches = append(batches, s)
		case s.SpanKind() == trace.SpanKindServer && hasAttr(s, "http.route"):
			proto[s.SpanContext().TraceID()] = "http"
		case s.SpanKind() == trace.SpanKindServer && hasAttr(s, "rpc.system"):
			proto[s.SpanContext().TraceID()] = "grpc"
		}
	}
	httpItems, mixed := 0, 0
	var sizes []string
	for _, b := range batches {
		var size int64
		for _, kv := range b.Attributes() {
			if kv.Key == "batch.size" {
				size = kv.Value.AsInt64()
			}
		}
		h, g, members := 0, 0, 0
		for _, l := range b.Links() {
			if !slices.Contains(l.Attributes, attribute.String("link.kind", "member")) {
				continue
			}
			members++
			switch proto[l.SpanContext.TraceID()] {
			case "http":
				h++
			case "grpc":
				g++
			default:
				t.Errorf("batch links to %v, a trace with no request span", l.SpanContext.TraceID())
			}
		}
		g += int(size) - members // unsampled members: gRPC calls
		httpItems += h
		if h > 0 && g > 0 {
			mixed++
		}
		sizes = append(sizes, fmt.Sprintf("%dh+%dg", h, g))
	}
	t.Logf("mean batch size %.2f; batches with HTTP images (HTTP+gRPC images): %s", sum/count, strings.Join(sizes, " "))
	if httpItems != n/2 {
		t.Errorf("batch spans link to %d HTTP images, want all %d", httpItems, n/2)
	}
	if mixed == 0 {
		t.Errorf("no batch held both HTTP and gRPC images: %s", strings.Join(sizes, " "))
	}

	// Each answer is what a lone HTTP request gets: a proxy of its own (its
	// cache empty, no batch window) on the same runtime, one request at a
	// time.
	lone := startProxy(t, testConfig(rt.socket))
	var differ []string
	for i := range n {
		if want := httpClassify(t, lone, img(i)); !slices.Equal(got[i], want) {
			differ = append(differ, fmt.Sprintf("image %d (%s): %q, want the lone HTTP answer %q",
				i, map[bool]string{true: "HTTP", false: "gRPC"}[i/each%2 == 0], got[i], want))
		}
	}
	if len(differ) > 0 {
		t.Errorf("%d of %d answers differ from a lone HTTP request's; the first:\n%s", len(differ), n, strings.Join(differ[:min(len(differ), 4)], "\n"))
	}
}

// hasAttr reports whether span s has an attribute named key.
func hasAttr(s sdktrace.ReadOnlySpan, key attribute.Key) bool {
	return slices.ContainsFunc(s.Attributes(), func(kv attribute.KeyValue) bool { return kv.Key == key })
}
