package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/modelstats"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// httpStats reads GET path's statistics; a status other than 200 fails the
// test.
func httpStats(t *testing.T, url string) []modelstats.ModelStats {
	t.Helper()
	r := get(t, url)
	var out struct {
		ModelStats []modelstats.ModelStats `json:"model_stats"`
	}
	if r.status != 200 {
		t.Fatalf("GET %s = %d %s", url, r.status, r.raw)
	}
	if err := json.Unmarshal(r.raw, &out); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, r.raw)
	}
	return out.ModelStats
}

// fromMessage is a ModelStatistics message as proxy/modelstats holds it.
func fromMessage(m *pb.ModelStatistics) modelstats.ModelStats {
	d := func(s *pb.StatisticDuration) modelstats.Duration {
		return modelstats.Duration{Count: s.GetCount(), NS: s.GetNs()}
	}
	is := m.GetInferenceStats()
	out := modelstats.ModelStats{Name: m.Name, Version: m.Version, LastInference: m.LastInference,
		InferenceCount: m.InferenceCount, ExecutionCount: m.ExecutionCount,
		InferenceStats: modelstats.InferStats{Success: d(is.GetSuccess()), Fail: d(is.GetFail()), Queue: d(is.GetQueue()),
			ComputeInput: d(is.GetComputeInput()), ComputeInfer: d(is.GetComputeInfer()), ComputeOutput: d(is.GetComputeOutput()),
			CacheHit: d(is.GetCacheHit()), CacheMiss: d(is.GetCacheMiss())},
		BatchStats: []modelstats.BatchStats{}}
	for _, b := range m.BatchStats {
		out.BatchStats = append(out.BatchStats, modelstats.BatchStats{BatchSize: b.BatchSize,
			ComputeInput: d(b.GetComputeInput()), ComputeInfer: d(b.GetComputeInfer()), ComputeOutput: d(b.GetComputeOutput())})
	}
	return out
}

// grpcStats reads ModelStatistics for name and version.
func grpcStats(ctx context.Context, t *testing.T, client pb.GRPCInferenceServiceClient, name, version string) []modelstats.ModelStats {
	t.Helper()
	resp, err := client.ModelStatistics(ctx, &pb.ModelStatisticsRequest{Name: name, Version: version})
	if err != nil {
		t.Fatalf("ModelStatistics(%q, %q): %v", name, version, err)
	}
	var out []modelstats.ModelStats
	for _, m := range resp.ModelStats {
		out = append(out, fromMessage(m))
	}
	return out
}

// grpcInfer sends one BYTES image over gRPC, to version if not "".
func grpcInfer(ctx context.Context, client pb.GRPCInferenceServiceClient, version string, img []byte) error {
	_, err := client.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "resnet50", ModelVersion: version,
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes(img)}})
	return err
}

// TestStatistics: after N HTTP and M gRPC inferences of distinct images
// and one repeated image (a cache hit), the statistics extension over HTTP
// and over gRPC say the same, and count every request, image and run of
// the model: Triton's fields, as docs/api.md ("Statistics") defines them
// here. Unknown models and versions are 404 / NOT_FOUND.
func TestStatistics(t *testing.T) {
	tp, client, ctx := tinyGRPC(t)
	start := time.Now()
	const n, m = 3, 4
	for i := range n {
		if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1000+i))); r.status != 200 {
			t.Fatalf("HTTP predict %d: %d %s", i, r.status, r.raw)
		}
	}
	for i := range m {
		if err := grpcInfer(ctx, client, "", testenv.UniquePNG(2000+i)); err != nil {
			t.Fatalf("gRPC infer %d: %v", i, err)
		}
	}
	if r := do(t, rawReq(tp.url+"/predict", "image/png", testenv.UniquePNG(1000))); r.status != 200 || r.body["cached"] != true {
		t.Fatalf("repeated image: %d %s, want a cache hit", r.status, r.raw)
	}

	got := httpStats(t, tp.url+"/v2/models/resnet50/stats")
	if g := grpcStats(ctx, t, client, "resnet50", ""); !reflect.DeepEqual(g, got) {
		t.Errorf("gRPC and HTTP statistics differ:\ngRPC %+v\nHTTP %+v", g, got)
	}
	for _, path := range []string{"/v2/models/stats", "/v2/models/resnet50/versions/1/stats"} {
		if all := httpStats(t, tp.url+path); !reflect.DeepEqual(all, got) {
			t.Errorf("GET %s = %+v, want %+v", path, all, got)
		}
	}
	if len(got) != 1 || got[0].Name != "resnet50" || got[0].Version != "1" {
		t.Fatalf("statistics of %+v, want resnet50 version 1 alone", got)
	}
	s := got[0]
	is := s.InferenceStats
	computed := uint64(n + m)
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"success", is.Success.Count, n + m + 1},
		{"fail", is.Fail.Count, 0},
		{"cache_hit", is.CacheHit.Count, 1},
		{"cache_miss", is.CacheMiss.Count, computed},
		{"queue", is.Queue.Count, computed},
		{"compute_input", is.ComputeInput.Count, computed},
		{"compute_infer", is.ComputeInfer.Count, computed},
		{"compute_output", is.ComputeOutput.Count, computed},
		{"inference_count", s.InferenceCount, computed},
	} {
		if c.got != c.want {
			t.Errorf("%s count = %d, want %d", c.what, c.got, c.want)
		}
	}
	if is.Success.NS == 0 || is.ComputeInput.NS == 0 || is.ComputeInfer.NS == 0 || is.ComputeOutput.NS == 0 || is.CacheHit.NS == 0 {
		t.Errorf("durations missing: %+v", is)
	}
	var images, runs uint64
	for _, b := range s.BatchStats {
		images += b.BatchSize * b.ComputeInfer.Count
		runs += b.ComputeInfer.Count
	}
	if s.ExecutionCount < 1 || runs != s.ExecutionCount || images != s.InferenceCount {
		t.Errorf("execution_count %d, batch_stats %+v (%d runs of %d images), want >= 1 runs of inference_count %d images",
			s.ExecutionCount, s.BatchStats, runs, images, s.InferenceCount)
	}
	if last := time.UnixMilli(int64(s.LastInference)); last.Before(start.Truncate(time.Millisecond)) || last.After(time.Now()) {
		t.Errorf("last_inference %v, want between %v and now", last, start)
	}

	for _, path := range []string{"/v2/models/nope/stats", "/v2/models/resnet50/versions/2/stats"} {
		if r := get(t, tp.url+path); r.status != 404 || r.body["error"] == nil {
			t.Errorf("GET %s = %d %s, want 404 in JSON", path, r.status, r.raw)
		}
	}
	for _, req := range []*pb.ModelStatisticsRequest{{Name: "nope"}, {Name: "resnet50", Version: "2"}} {
		if _, err := client.ModelStatistics(ctx, req); status.Code(err) != codes.NotFound {
			t.Errorf("ModelStatistics(%v) = %v, want NotFound", req, err)
		}
	}
}

// TestStatisticsVersions: with a routing file each version counts its own
// requests, and the statistics list every version, one, or every model's.
func TestStatisticsVersions(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		startVersion(t, dir, v)
	}
	tp := routingProxy(t, dir, twoVersions)
	client, ctx := pb.NewGRPCInferenceServiceClient(serveGRPC(t, tp)), t.Context()
	for i := range 3 {
		if err := grpcInfer(ctx, client, "v2", testenv.UniquePNG(3000+i)); err != nil {
			t.Fatalf("gRPC infer on v2: %v", err)
		}
	}
	got := httpStats(t, tp.url+"/v2/models/resnet50/stats")
	var summary []string
	for _, s := range got {
		summary = append(summary, fmt.Sprintf("%s/%s:%d", s.Name, s.Version, s.InferenceStats.Success.Count))
	}
	if fmt.Sprint(summary) != "[resnet50/v1:0 resnet50/v2:3]" {
		t.Errorf("statistics %v, want v1 with no request and v2 with 3", summary)
	}
	if all := grpcStats(ctx, t, client, "", ""); !reflect.DeepEqual(all, got) {
		t.Errorf("every model's (gRPC) %+v, want %+v", all, got)
	}
	if one := grpcStats(ctx, t, client, "resnet50", "v2"); len(one) != 1 || !reflect.DeepEqual(one[0], got[1]) {
		t.Errorf("v2's (gRPC) %+v, want %+v", one, got[1])
	}
	if r := get(t, tp.url+"/v2/models/resnet50/versions/v3/stats"); r.status != 404 {
		t.Errorf("unknown version: %d %s, want 404", r.status, r.raw)
	}
}
