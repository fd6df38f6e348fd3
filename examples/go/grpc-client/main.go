// Command grpc-client classifies an image with batchgate over gRPC: the Open
// Inference Protocol's inference.GRPCInferenceService, through the Go code
// generated from proxy/oipgrpc/inferencepb/grpc_service.proto.
//
//	go run ./examples/go/grpc-client -addr localhost:8001 -file photo.jpg -k 5
//
// The image goes in raw_input_contents as one BYTES element (a 4-byte
// little-endian length, then the bytes), as tritonclient sends it; the
// "classification" output parameter asks for the k best classes as
// "score:index:label" strings (the score is the logit). The call has a
// deadline (-timeout), which the server honours: past it the image is
// dropped, not inferred.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

func main() {
	addr := flag.String("addr", "localhost:8001", "batchgate's gRPC address (GRPC_PORT)")
	model := flag.String("model", "resnet50", "model name")
	file := flag.String("file", "proxy/testdata/grace_hopper.jpg", "image to classify")
	k := flag.Int("k", 5, "top classes")
	timeout := flag.Duration("timeout", 10*time.Second, "the call's deadline")
	flag.Parse()
	if err := run(*addr, *model, *file, *k, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "grpc-client:", err)
		os.Exit(1)
	}
}

func run(addr, model, file string, k int, timeout time.Duration) error {
	img, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	// Plaintext HTTP/2: TLS, if any, is the Ingress's or the mesh's.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()

	req := &pb.ModelInferRequest{
		ModelName: model,
		Inputs:    []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		// One BYTES element: <uint32 little-endian length><bytes>.
		RawInputContents: [][]byte{append(binary.LittleEndian.AppendUint32(nil, uint32(len(img))), img...)},
		Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "classification",
			Parameters: map[string]*pb.InferParameter{"classification": {ParameterChoice: &pb.InferParameter_Int64Param{Int64Param: int64(k)}}}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := pb.NewGRPCInferenceServiceClient(conn).ModelInfer(ctx, req)
	if err != nil {
		st := status.Convert(err) // batchgate's message, with the code a Triton client expects
		return fmt.Errorf("ModelInfer: %s: %s", st.Code(), st.Message())
	}
	if len(resp.RawOutputContents) != 1 {
		return errors.New("unexpected answer: want one output in raw_output_contents")
	}
	fmt.Printf("%s (%s, version %s):\n", file, resp.ModelName, resp.ModelVersion)
	// The answer's BYTES elements, length-prefixed as the input's.
	for raw := resp.RawOutputContents[0]; len(raw) > 0; {
		if len(raw) < 4 || int(binary.LittleEndian.Uint32(raw)) > len(raw)-4 {
			return errors.New("malformed BYTES output")
		}
		n := int(binary.LittleEndian.Uint32(raw))
		fmt.Println("  " + string(raw[4:4+n])) // "score:index:label"
		raw = raw[4+n:]
	}
	return nil
}
