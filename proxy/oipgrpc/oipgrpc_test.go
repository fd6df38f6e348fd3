package oipgrpc

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/oip"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
	"github.com/batchgate/batchgate/proxy/rtconn"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
)

// TestCode: every HTTP status of the HTTP API has the gRPC code a Triton
// client expects.
func TestCode(t *testing.T) {
	for status, want := range map[int]codes.Code{
		200: codes.OK, 400: codes.InvalidArgument, 401: codes.Unauthenticated, 403: codes.PermissionDenied,
		404: codes.NotFound, 405: codes.Unimplemented, 408: codes.DeadlineExceeded, 411: codes.FailedPrecondition,
		413: codes.ResourceExhausted, 415: codes.InvalidArgument, 429: codes.ResourceExhausted, 499: codes.Canceled,
		500: codes.Internal, 503: codes.Unavailable, 504: codes.DeadlineExceeded,
	} {
		if got := Code(status); got != want {
			t.Errorf("Code(%d) = %v, want %v", status, got, want)
		}
	}
}

// trailerStream records the trailers a handler sets.
type trailerStream struct {
	grpc.ServerTransportStream
	trailer metadata.MD
}

func (s *trailerStream) Method() string                  { return "/inference.GRPCInferenceService/ModelInfer" }
func (s *trailerStream) SetHeader(md metadata.MD) error  { return nil }
func (s *trailerStream) SendHeader(md metadata.MD) error { return nil }
func (s *trailerStream) SetTrailer(md metadata.MD) error {
	s.trailer = metadata.Join(s.trailer, md)
	return nil
}

func testServer() *Server {
	set := metrics.NewSet()
	return New(Config{Metrics: stats.New(set, stats.Gauges{}), Set: set, Log: slog.New(slog.DiscardHandler),
		Ready: func() bool { return true }, RequestTimeout: time.Second, MaxMessageBytes: 1 << 20, MaxElements: 16})
}

// TestErrorsMapped: the errors of the path a request takes (router,
// oip, classify, batcher, runtime) become the code, message and retry
// hint a Triton client expects; internal errors are never echoed.
func TestErrorsMapped(t *testing.T) {
	s := testServer()
	for _, tc := range []struct {
		err   error
		code  codes.Code
		msg   string
		retry time.Duration // RetryInfo and the retry-after trailer; 0: none
	}{
		{&oip.Error{Msg: "want exactly one input, got 2"}, codes.InvalidArgument, "want exactly one input", 0},
		{&httpapi.NotFoundError{Msg: `unknown model "x"`}, codes.NotFound, `unknown model "x"`, 0},
		{&batching.QueueFullError{RetryAfter: 2500 * time.Millisecond}, codes.ResourceExhausted, "queue is full", 3 * time.Second},
		{classify.ErrDecodeBusy, codes.ResourceExhausted, "too many images wait", time.Second},
		{classify.ErrUnavailable, codes.Unavailable, "runtime unavailable", time.Second},
		{rtconn.ErrUnavailable, codes.Unavailable, "runtime unavailable", time.Second},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline exceeded", 0},
		{context.Canceled, codes.Canceled, "cancelled", 0},
		{imageprep.ErrCorrupt, codes.InvalidArgument, "corrupt", 0},
		{imageprep.ErrFormat, codes.InvalidArgument, "", 0},
		{imageprep.ErrTooLarge, codes.ResourceExhausted, "too many pixels", 0},
		{fmt.Errorf("socket /tmp/secret.sock: broken pipe"), codes.Internal, "inference failed", 0},
	} {
		ts := &trailerStream{}
		ctx := grpc.NewContextWithServerTransportStream(context.Background(), ts)
		st, _ := status.FromError(s.fail(ctx, &callInfo{}, tc.err))
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) || strings.Contains(st.Message(), "secret") {
			t.Errorf("%v: %v %q, want %v with %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
		var info *errdetails.RetryInfo
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				info = ri
			}
		}
		trailer := ts.trailer.Get("retry-after")
		switch {
		case tc.retry == 0 && (info != nil || len(trailer) > 0):
			t.Errorf("%v: a retry hint (%v, %v) where retrying cannot help", tc.err, info, trailer)
		case tc.retry > 0 && (info == nil || info.RetryDelay.AsDuration() != tc.retry ||
			len(trailer) != 1 || trailer[0] != fmt.Sprint(int(tc.retry.Seconds()))):
			t.Errorf("%v: retry hint %v, trailer %v, want %v", tc.err, info, trailer, tc.retry)
		}
	}
	// A call cancelled past its deadline (the client's grpc-timeout)
	// missed its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	if got := status.Code(s.fail(ctx, &callInfo{}, context.Canceled)); got != codes.DeadlineExceeded {
		t.Errorf("cancelled past the deadline: %v, want DeadlineExceeded", got)
	}
}

var testInfo = &wire.Info{Model: "m", InputName: "data", OutputName: "out", Channels: 3, Height: 4, Width: 4,
	Classes: 5, Labels: []string{"a", "b", "c", "d", "e"}}

func rawBytes(elems ...[]byte) []byte {
	var b []byte
	for _, e := range elems {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

// TestParseInfer: the forms tritonclient and KServe's clients send, and
// what parseInfer refuses.
func TestParseInfer(t *testing.T) {
	lim := oip.Limits{MaxElements: 4}
	bytesIn := func(shape ...int64) []*pb.ModelInferRequest_InferInputTensor {
		return []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: shape}}
	}
	fp32In := func(n int64, c *pb.InferTensorContents) []*pb.ModelInferRequest_InferInputTensor {
		return []*pb.ModelInferRequest_InferInputTensor{{Name: "data", Datatype: "FP32", Shape: []int64{n, 3, 4, 4}, Contents: c}}
	}
	rawFP32 := make([]byte, 4*48)
	binary.LittleEndian.PutUint32(rawFP32[4:], 0x3f800000) // 1.0
	for _, tc := range []struct {
		name string
		m    *pb.ModelInferRequest
		want string // the parsed request's summary, or the error's text
	}{
		{"raw BYTES", &pb.ModelInferRequest{Inputs: bytesIn(2), RawInputContents: [][]byte{rawBytes([]byte("ab"), []byte("c"))}}, "images [ab c] out 0"},
		{"bytes_contents [N,1]", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{{Datatype: "BYTES", Shape: []int64{1, 1},
			Contents: &pb.InferTensorContents{BytesContents: [][]byte{[]byte("x")}}}}}, "images [x] out 0"},
		{"raw FP32", &pb.ModelInferRequest{Inputs: fp32In(1, nil), RawInputContents: [][]byte{rawFP32}}, "tensors 1 [0 1 0] out 0"},
		{"fp32_contents", &pb.ModelInferRequest{Inputs: fp32In(2, &pb.InferTensorContents{Fp32Contents: make([]float32, 96)})}, "tensors 2 [0 0 0] out 0"},
		{"classification", &pb.ModelInferRequest{Inputs: bytesIn(1), RawInputContents: [][]byte{rawBytes([]byte("x"))},
			Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "classification", Parameters: map[string]*pb.InferParameter{
				"classification": {ParameterChoice: &pb.InferParameter_Uint64Param{Uint64Param: 5}}}}}}, "images [x] classification 5"},
		{"empty raw BYTES", &pb.ModelInferRequest{Inputs: bytesIn(0), RawInputContents: [][]byte{{}}}, "want 1 to 4 elements, got 0"},
		{"too many BYTES", &pb.ModelInferRequest{Inputs: bytesIn(5), RawInputContents: [][]byte{rawBytes(nil, nil, nil, nil, nil)}}, "more than 4 BYTES elements"},
		{"both forms", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{{Datatype: "BYTES", Shape: []int64{1},
			Contents: &pb.InferTensorContents{BytesContents: [][]byte{[]byte("x")}}}}, RawInputContents: [][]byte{rawBytes([]byte("x"))}}, "both contents and raw_input_contents"},
		{"two raw", &pb.ModelInferRequest{Inputs: bytesIn(1), RawInputContents: [][]byte{rawBytes([]byte("x")), nil}}, "raw_input_contents has 2 entries"},
		{"FP32 N too large", &pb.ModelInferRequest{Inputs: fp32In(5, nil), RawInputContents: [][]byte{make([]byte, 4*48*5)}}, "FP32 input shape must be"},
		{"FP32 short contents", &pb.ModelInferRequest{Inputs: fp32In(1, &pb.InferTensorContents{Fp32Contents: make([]float32, 47)})}, "holds 47 values"},
		{"FP32 with bytes", &pb.ModelInferRequest{Inputs: fp32In(1, &pb.InferTensorContents{BytesContents: [][]byte{nil}})}, "holds bytes_contents"},
		{"UINT8", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{{Datatype: "UINT8", Shape: []int64{1}}}}, `input datatype "UINT8"`},
		{"long id", &pb.ModelInferRequest{Id: strings.Repeat("i", 257), Inputs: bytesIn(1)}, "id is longer"},
		{"string classification", &pb.ModelInferRequest{Inputs: bytesIn(1), RawInputContents: [][]byte{rawBytes([]byte("x"))},
			Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "out", Parameters: map[string]*pb.InferParameter{
				"classification": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: "3"}}}}}}, "classification must be an integer in [1, 5]"},
	} {
		req, err := parseInfer(tc.m, testInfo, lim)
		got := ""
		switch {
		case err != nil:
			got = err.Error()
		case req.Images != nil:
			got = fmt.Sprintf("images %s out %d", req.Images, req.Classify)
		default:
			got = fmt.Sprintf("tensors %d %v out %d", len(req.Tensors), req.Tensors[0][:3], req.Classify)
		}
		if req != nil && req.Output == "classification" {
			got = strings.Replace(got, "out", "classification", 1)
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// The bound of the package doc: decoding and parsing a message allocates
// at most boundK times its size plus boundC.
const (
	boundK = 3
	boundC = 64 << 10
)

// decodeAll is what the server does with a message's wire bytes.
func decodeAll(b []byte) {
	m, err := decodeInfer(b, 16)
	if err == nil {
		parseInfer(m, testInfo, oip.Limits{MaxElements: 16})
	}
}

// warmUp decodes each kind of message once: proto builds its tables of a
// message type on its first use, which the bound does not count.
func warmUp() {
	for _, b := range hostile(64) {
		decodeAll(b)
	}
}

// hostile are wire messages of about n bytes made of what proto would
// allocate most for per byte.
func hostile(n int) map[string][]byte {
	repeat := func(unit []byte) []byte {
		var b []byte
		for len(b) < n {
			b = append(b, unit...)
		}
		return b
	}
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	input := func(v []byte) []byte { return field(5, v) }
	contents := func(v []byte) []byte { return input(field(5, v)) }
	packedVarints := func(num protowire.Number) []byte { // n one-byte varints
		return field(num, repeat([]byte{1}))
	}
	return map[string][]byte{
		"empty inputs":        repeat(field(5, nil)),
		"empty outputs":       repeat(field(6, nil)),
		"empty parameters":    repeat(field(4, nil)),
		"empty raw contents":  repeat(field(7, nil)),
		"packed shape":        input(packedVarints(3)),
		"unpacked shape":      input(repeat(protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1))),
		"input parameters":    input(repeat(field(4, nil))),
		"output parameters":   field(6, repeat(field(2, nil))),
		"empty bytes_content": contents(repeat(field(8, nil))),
		"packed int64":        contents(packedVarints(3)),
		"packed int32":        contents(packedVarints(2)),
		"packed bool":         contents(packedVarints(1)),
		"packed fp32":         contents(field(6, make([]byte, n/4*4))),
		"unknown varints":     repeat(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)),
		"unknown groups":      repeat([]byte{0x9b, 0x06, 0x9c, 0x06}), // field 99, start and end group
		"raw FP32":            append(input([]byte{0x12, 4, 'F', 'P', '3', '2', 0x1a, 4, 1, 3, 4, 4}), field(7, make([]byte, 4*48))...),
	}
}

// TestDecodeAllocationBound: no message makes decoding allocate more than
// the bound, whatever it is made of.
func TestDecodeAllocationBound(t *testing.T) {
	if testenv.RaceEnabled() {
		t.Skip("the race detector multiplies allocations")
	}
	warmUp()
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		for name, b := range hostile(size) {
			got := testenv.AllocatedBy(func() { decodeAll(b) })
			if bound := uint64(boundK*len(b) + boundC); got > bound {
				t.Errorf("%s, %d bytes: allocated %d, over the bound %d", name, len(b), got, bound)
			}
		}
	}
}

// FuzzDecodeInfer: whatever the bytes, decoding neither panics nor
// allocates more than the bound, and what it accepts is well formed.
func FuzzDecodeInfer(f *testing.F) {
	for _, b := range hostile(256) {
		f.Add(b)
	}
	good, _ := proto.Marshal(&pb.ModelInferRequest{ModelName: "m", Id: "x",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "BYTES", Shape: []int64{1}}},
		RawInputContents: [][]byte{rawBytes([]byte("jpeg"))}})
	f.Add(good)
	warmUp()
	f.Fuzz(func(t *testing.T, b []byte) {
		var err error
		var req *oip.Request
		got := testenv.AllocatedBy(func() {
			var m *pb.ModelInferRequest
			if m, err = decodeInfer(b, 16); err == nil {
				req, err = parseInfer(m, testInfo, oip.Limits{MaxElements: 16})
			}
		})
		if !testenv.RaceEnabled() {
			if bound := uint64(boundK*len(b) + boundC); got > bound {
				t.Fatalf("%d bytes allocated %d, over the bound %d", len(b), got, bound)
			}
		}
		if err != nil {
			if _, ok := err.(*oip.Error); !ok {
				t.Fatalf("error %T %v is not an *oip.Error (INVALID_ARGUMENT)", err, err)
			}
			return
		}
		if n := req.N(); n < 1 || n > 16 || (req.Images == nil) == (req.Tensors == nil) {
			t.Fatalf("accepted a request of %d images (%d encoded, %d tensors)", n, len(req.Images), len(req.Tensors))
		}
		for _, tensor := range req.Tensors {
			if len(tensor) != testInfo.ImageSize() {
				t.Fatalf("a tensor of %d values", len(tensor))
			}
		}
	})
}
