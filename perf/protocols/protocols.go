// Package protocols is `go run ./perf -protocols`: the Open Inference
// Protocol over gRPC (ModelInfer with raw_input_contents, as tritonclient
// sends it) against the same protocol over HTTP with the binary data
// extension, on one stack, the same model and the same images:
//
//   - one client, one request at a time: the median latency of each;
//   - saturation: closed-loop clients for a while, images per second.
//
// Every image is unique (bytes after the JPEG's end marker), so the cache
// and coalescing answer none. The two protocols alternate within each
// round, the first of a round alternating too, so that drift on a shared
// machine hits both alike; the report gives the medians over rounds and
// checks issue 26's goals: gRPC's saturation throughput at least HTTP's,
// and its one-client median within 1 ms of HTTP's.
package protocols

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/batchgate/batchgate/perf/harness"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// Config is one `go run ./perf -protocols` run.
type Config struct {
	Rounds   int           // each measures both protocols once, both ways
	Requests int           // one-client requests per protocol and round
	Duration time.Duration // each saturation measurement
	Clients  int           // closed-loop clients at saturation
	K        int           // classes asked per image (the classification extension)
	Model    string        // ONNX model; "": what `runtime fetch-model` gives
}

// protocol sends one image and reports whether it was answered with k
// classes.
type protocol struct {
	name string
	send func(ctx context.Context, jpeg []byte) error
}

// Run starts a stack serving both protocols, measures them interleaved
// over the rounds and prints the report.
func Run(ctx context.Context, c Config) error {
	b, err := harness.Build(c.Model)
	if err != nil {
		return err
	}
	defer b.Close()
	grpcPort, err := harness.FreePort()
	if err != nil {
		return err
	}
	s, err := b.Stack(harness.StackConfig{MaxBatch: 8, CacheEntries: 10000, Env: []string{"GRPC_PORT=" + strconv.Itoa(grpcPort)}})
	if err != nil {
		return err
	}
	defer s.Stop()
	conn, err := grpc.NewClient(fmt.Sprintf("passthrough:///127.0.0.1:%d", grpcPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	pool, _, err := harness.ImagePool(filepath.Join(b.Root, "proxy/testdata/grace_hopper.jpg"), 16, 1)
	if err != nil {
		return err
	}
	model, err := modelName(ctx, pb.NewGRPCInferenceServiceClient(conn))
	if err != nil {
		return err
	}
	protos := []protocol{
		{"HTTP binary", httpSender(s.URL, model, c.K)},
		{"gRPC raw", grpcSender(pb.NewGRPCInferenceServiceClient(conn), model, c.K)},
	}
	p50 := map[string][]float64{}
	rate := map[string][]float64{}
	for round := 1; round <= c.Rounds; round++ {
		order := slices.Clone(protos)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, p := range order {
			ms, err := oneClient(ctx, p, pool, c.Requests)
			if err != nil {
				return fmt.Errorf("%s, one client: %w", p.name, err)
			}
			p50[p.name] = append(p50[p.name], ms)
		}
		slices.Reverse(order) // the saturation runs in the other order
		for _, p := range order {
			r, err := saturate(ctx, p, pool, c.Clients, c.Duration)
			if err != nil {
				return fmt.Errorf("%s, saturation: %w", p.name, err)
			}
			rate[p.name] = append(rate[p.name], r)
		}
		fmt.Fprintf(os.Stderr, "perf -protocols: round %d: p50 %s %.2f ms, %s %.2f ms; saturation %.2f vs %.2f images/s\n", round,
			protos[0].name, last(p50[protos[0].name]), protos[1].name, last(p50[protos[1].name]), last(rate[protos[0].name]), last(rate[protos[1].name]))
	}
	fmt.Print(Report(c, p50[protos[0].name], p50[protos[1].name], rate[protos[0].name], rate[protos[1].name]))
	return nil
}

func last(xs []float64) float64 { return xs[len(xs)-1] }

// Report is the markdown report: the medians over rounds of each
// protocol's one-client p50 and saturation throughput, and the goals.
func Report(c Config, httpP50, grpcP50, httpRate, grpcRate []float64) string {
	med := func(xs []float64) float64 { return harness.QuantilesOf(xs, []float64{0.5})[0] }
	spread := func(xs []float64) string {
		return fmt.Sprintf("%.2f-%.2f", slices.Min(xs), slices.Max(xs))
	}
	hp, gp, hr, gr := med(httpP50), med(grpcP50), med(httpRate), med(grpcRate)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\ngRPC against HTTP on %s: medians of %d rounds (range in brackets); unique images, top %d classes.\n\n",
		harness.Machine(), c.Rounds, c.K)
	b.WriteString("| protocol | one client p50 ms | saturation images/s |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| HTTP binary (`/v2/models/{m}/infer`) | %.2f (%s) | %.2f (%s) |\n", hp, spread(httpP50), hr, spread(httpRate))
	fmt.Fprintf(&b, "| gRPC `ModelInfer`, `raw_input_contents` | %.2f (%s) | %.2f (%s) |\n\n", gp, spread(grpcP50), gr, spread(grpcRate))
	fmt.Fprintf(&b, "- gRPC p50 - HTTP p50: %+.2f ms (goal: within 1 ms): %s\n", gp-hp, verdict(gp-hp <= 1))
	fmt.Fprintf(&b, "- gRPC / HTTP saturation: %.3f (goal: at least 1, within the runs' spread): %s\n", gr/hr, verdict(gr >= hr || gr >= slices.Min(httpRate)))
	fmt.Fprintf(&b, "\n%d requests per one-client measurement; saturation: %d clients for %v after a %v warm-up.\n",
		c.Requests, c.Clients, c.Duration, harness.Warmup(c.Duration))
	return b.String()
}

// oneClient sends n unique images one after another and returns the
// median latency in ms. Any failure ends it.
func oneClient(ctx context.Context, p protocol, pool []harness.Upload, n int) (float64, error) {
	lat := make([]float64, 0, n)
	for i := range n {
		img := unique(pool[i%len(pool)].JPEG)
		t := time.Now()
		if err := p.send(ctx, img); err != nil {
			return 0, err
		}
		lat = append(lat, float64(time.Since(t).Microseconds())/1000)
	}
	return harness.QuantilesOf(lat, []float64{0.5})[0], nil
}

// saturate runs clients closed-loop clients for warm-up + d and returns
// the answers per second inside d. A failure is counted, not fatal, unless
// no answer came at all.
func saturate(ctx context.Context, p protocol, pool []harness.Upload, clients int, d time.Duration) (float64, error) {
	warm := harness.Warmup(d)
	ctx, cancel := context.WithTimeout(ctx, warm+d)
	defer cancel()
	from := time.Now().Add(warm)
	to := from.Add(d)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for k := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(k), 11))
			for ctx.Err() == nil {
				err := p.send(context.Background(), unique(pool[rng.IntN(len(pool))].JPEG))
				done := time.Now()
				if done.Before(from) || done.After(to) {
					continue
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() == 0 {
		err, _ := firstErr.Load().(error)
		return 0, fmt.Errorf("no answer in %v: %v", d, err)
	}
	if n := failed.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "perf -protocols: %s: %d failures at saturation (first: %v)\n", p.name, n, firstErr.Load())
	}
	return float64(ok.Load()) / d.Seconds(), nil
}

// seq numbers unique images.
var seq atomic.Uint64

// unique is jpeg with bytes after its end-of-image marker that no other
// image has: decoders ignore them, the cache cannot answer it.
func unique(jpeg []byte) []byte {
	return fmt.Appendf(append([]byte(nil), jpeg...), "batchgate-perf-protocols-%d", seq.Add(1))
}

// modelName is the name the proxy serves its model under.
func modelName(ctx context.Context, c pb.GRPCInferenceServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	idx, err := c.RepositoryIndex(ctx, &pb.RepositoryIndexRequest{Ready: true})
	if err != nil {
		return "", fmt.Errorf("cannot list the models over gRPC: %w", err)
	}
	if len(idx.Models) == 0 {
		return "", errors.New("the proxy serves no ready model")
	}
	return idx.Models[0].Name, nil
}

// grpcSender sends ModelInfer as tritonclient does: the image a BYTES
// element in raw_input_contents, the classification output with k
// classes.
func grpcSender(c pb.GRPCInferenceServiceClient, model string, k int) func(context.Context, []byte) error {
	return func(ctx context.Context, jpeg []byte) error {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		raw := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(jpeg)), uint32(len(jpeg)))
		resp, err := c.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: model,
			Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
			Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "classification",
				Parameters: map[string]*pb.InferParameter{"classification": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: int64(k)}}}}},
			RawInputContents: [][]byte{append(raw, jpeg...)}})
		if err != nil {
			return err
		}
		if len(resp.Outputs) != 1 || len(resp.Outputs[0].Shape) != 2 || resp.Outputs[0].Shape[1] != int64(k) {
			return fmt.Errorf("unexpected answer: %v", resp.Outputs)
		}
		return nil
	}
}

// httpSender sends POST /v2/models/{model}/infer with the binary data
// extension: the JSON header, then the image as a length-prefixed BYTES
// element (examples/go/oip-binary).
func httpSender(base, model string, k int) func(context.Context, []byte) error {
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	url := base + "/v2/models/" + model + "/infer"
	return func(ctx context.Context, jpeg []byte) error {
		header, _ := json.Marshal(map[string]any{ // plain maps: cannot fail
			"inputs": []map[string]any{{"name": "image", "shape": []int{1}, "datatype": "BYTES",
				"parameters": map[string]any{"binary_data_size": 4 + len(jpeg)}}},
			"outputs": []map[string]any{{"name": "classification", "parameters": map[string]any{"classification": k}}},
		})
		body := binary.LittleEndian.AppendUint32(append(make([]byte, 0, len(header)+4+len(jpeg)), header...), uint32(len(jpeg)))
		req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(append(body, jpeg...)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
		}
		var out struct {
			Outputs []struct{ Shape []int } `json:"outputs"`
		}
		if err := json.Unmarshal(b, &out); err != nil || len(out.Outputs) != 1 || len(out.Outputs[0].Shape) != 2 || out.Outputs[0].Shape[1] != k {
			return fmt.Errorf("unexpected answer: %.200s", b)
		}
		return nil
	}
}
