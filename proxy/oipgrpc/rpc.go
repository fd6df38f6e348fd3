package oipgrpc

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/oip"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
	"github.com/batchgate/batchgate/runtime/wire"
)

// ServerLive is true while the process serves: /v2/health/live.
func (s *Server) ServerLive(context.Context, *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	return &pb.ServerLiveResponse{Live: true}, nil
}

// ServerReady is /v2/health/ready: the model is ready and the proxy not
// draining.
func (s *Server) ServerReady(context.Context, *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	return &pb.ServerReadyResponse{Ready: s.cfg.Ready()}, nil
}

// ServerMetadata is GET /v2.
func (s *Server) ServerMetadata(context.Context, *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	return &pb.ServerMetadataResponse{Name: oip.ServerName, Version: s.cfg.Version, Extensions: oip.Extensions()}, nil
}

// model resolves a model RPC's name and version as the HTTP API resolves
// /v2/models/{name}[/versions/{version}]: with a routing file, its model
// and version (httpapi.ModelVersions); with one runtime, the model its
// handshake names and version "1" (or none). It returns the version
// names, whether the model (or version) is ready, and its latest
// handshake.
func (s *Server) model(name, version string) (versions []string, ready bool, info wire.Info, err error) {
	r := s.cfg.Router
	if r.Declared() {
		statuses, ready, err := httpapi.ModelVersions(r, name, version)
		if err != nil {
			return nil, false, info, err
		}
		for _, st := range statuses {
			versions = append(versions, st.Name)
		}
		info, ok := r.LastModel(name, version)
		if !ok {
			return nil, false, info, classify.ErrUnavailable
		}
		return versions, ready && s.cfg.Ready(), info, nil
	}
	info, ok := r.LastModel("", "")
	switch {
	case !ok:
		return nil, false, info, classify.ErrUnavailable
	case name != info.Model:
		return nil, false, info, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown model %.100q; this server serves %q", name, info.Model)}
	case version != "" && version != oip.Version:
		return nil, false, info, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown model version %.20q; this server serves version %s", version, oip.Version)}
	}
	return []string{oip.Version}, s.cfg.Ready(), info, nil
}

// ModelReady is /v2/models/{name}[/versions/{v}]/ready.
func (s *Server) ModelReady(ctx context.Context, req *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	_, ready, _, err := s.model(req.Name, req.Version)
	if err != nil && err != classify.ErrUnavailable {
		return nil, s.fail(ctx, callOf(ctx), err)
	}
	return &pb.ModelReadyResponse{Ready: ready}, nil
}

// ModelMetadata is GET /v2/models/{name}[/versions/{v}].
func (s *Server) ModelMetadata(ctx context.Context, req *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	versions, _, info, err := s.model(req.Name, req.Version)
	if err != nil {
		return nil, s.fail(ctx, callOf(ctx), err)
	}
	tensors := func(ts []oip.TensorMeta) []*pb.ModelMetadataResponse_TensorMetadata {
		out := make([]*pb.ModelMetadataResponse_TensorMetadata, len(ts))
		for i, t := range ts {
			out[i] = &pb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape}
		}
		return out
	}
	name := info.Model
	if s.cfg.Router.Declared() {
		name = req.Name
	}
	return &pb.ModelMetadataResponse{Name: name, Versions: versions, Platform: oip.Platform,
		Inputs: tensors(oip.Inputs(&info)), Outputs: tensors(oip.Outputs(&info))}, nil
}

// modelInferHandler is ModelInfer's method handler: it receives the
// message as its wire bytes, which ModelInfer checks before unmarshalling
// them (decodeInfer).
func (s *Server) modelInferHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	raw := new(rawMessage)
	if err := dec(raw); err != nil {
		return nil, err
	}
	handler := func(ctx context.Context, req any) (any, error) { return s.modelInfer(ctx, req.(*rawMessage)) }
	if interceptor == nil {
		return handler(ctx, raw)
	}
	in := &grpc.UnaryServerInfo{Server: srv, FullMethod: pb.GRPCInferenceService_ModelInfer_FullMethodName}
	return interceptor(ctx, raw, in, handler)
}

// ModelInfer serves a decoded message, for callers in process: the server
// itself serves the wire bytes (modelInferHandler).
func (s *Server) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "cannot encode the request")
	}
	return s.modelInfer(ctx, &rawMessage{buf: mem.SliceBuffer(b)})
}

// modelInfer is POST /v2/models/{name}[/versions/{v}]/infer: the images of
// one request run concurrently (they meet in the batcher); the first
// failure cancels the others.
func (s *Server) modelInfer(ctx context.Context, raw *rawMessage) (*pb.ModelInferResponse, error) {
	call := callOf(ctx)
	size := int64(len(raw.Bytes()))
	m, err := decodeInfer(raw.Bytes(), s.cfg.MaxElements)
	raw.free() // m holds copies
	if err != nil {
		return nil, s.fail(ctx, call, err)
	}
	scopes := []auth.Scope{auth.Predict}
	if m.ModelVersion != "" && s.cfg.Router.Declared() {
		scopes = append(scopes, auth.Versions)
	}
	if err := s.authorize(ctx, call, scopes); err != nil {
		return nil, err
	}
	rctx, cancel := s.ctxOf(ctx, call)
	defer cancel()
	var lease *budget.Lease
	if s.cfg.Uploads != nil {
		wctx, wcancel := context.WithTimeout(rctx, s.cfg.UploadWait)
		lease, err = s.cfg.Uploads.Acquire(wctx, 2*size)
		wcancel()
		if err != nil {
			if rctx.Err() != nil {
				return nil, s.fail(ctx, call, rctx.Err())
			}
			return nil, s.fail(ctx, call, &apiError{status: 429, reason: "upload_budget", retry: time.Second,
				msg: "server overloaded: too many request bytes in progress, retry later"})
		}
		defer lease.Release()
	}
	if _, _, _, err := s.model(m.ModelName, m.ModelVersion); err != nil {
		return nil, s.fail(ctx, call, err) // unknown (404) or no handshake yet (503)
	}
	name, version := m.ModelName, m.ModelVersion
	if !s.cfg.Router.Declared() {
		name, version = "", ""
	}
	rt, err := s.cfg.Router.Route(name, version, httpapi.RouteKeys{Header: metadataHeader(ctx)})
	if err != nil {
		return nil, s.fail(ctx, call, err)
	}
	call.version, call.done = rt.Version, rt.Done
	cls := rt.Classifier
	info, ok := cls.LastModel()
	if !ok {
		return nil, s.fail(ctx, call, classify.ErrUnavailable)
	}
	req, err := parseInfer(m, &info, oip.Limits{MaxElements: s.cfg.MaxElements})
	if err != nil {
		return nil, s.fail(ctx, call, err)
	}
	release, err := s.chargeImages(ctx, call, req.N())
	if err != nil {
		return nil, err
	}
	defer release()
	scores, err := httpapi.InferAll(rctx, cls, req, lease)
	if err != nil {
		return nil, s.fail(ctx, call, err)
	}
	ver := oip.Version
	if rt.Version != "" {
		ver = rt.Version
	}
	resp, err := inferResponse(&info, ver, req, scores)
	if err != nil {
		return nil, s.fail(ctx, call, err)
	}
	call.model = info.Model
	return resp, nil
}

// inferResponse is the answer to req, as Triton answers: the output's data
// in raw_output_contents (little-endian FP32 scores, or the classification
// extension's "score:index:label" strings as BYTES elements, each a
// 4-byte little-endian length and its bytes).
func inferResponse(info *wire.Info, version string, req *oip.Request, scores [][]float32) (*pb.ModelInferResponse, error) {
	n := int64(len(scores))
	out := &pb.ModelInferResponse_InferOutputTensor{Name: req.Output}
	var raw []byte
	if req.Classify > 0 {
		strs := oip.Classifications(info, req.Classify, scores)
		out.Datatype, out.Shape = "BYTES", []int64{n, int64(req.Classify)}
		for _, s := range strs {
			raw = binary.LittleEndian.AppendUint32(raw, uint32(len(s)))
			raw = append(raw, s...)
		}
	} else {
		flat, err := oip.FlatScores(info, scores)
		if err != nil {
			return nil, err
		}
		out.Datatype, out.Shape = "FP32", []int64{n, int64(info.Classes)}
		raw = make([]byte, 0, 4*len(flat))
		for _, v := range flat {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
	}
	return &pb.ModelInferResponse{ModelName: info.Model, ModelVersion: version, Id: req.ID,
		Outputs: []*pb.ModelInferResponse_InferOutputTensor{out}, RawOutputContents: [][]byte{raw}}, nil
}

// health is grpc.health.v1 over the proxy's readiness: SERVING while it
// serves (the model ready, not draining), for the whole server ("") and
// for inference.GRPCInferenceService.
type health struct{ s *Server }

func (h health) status(svc string) (healthgrpc.HealthCheckResponse_ServingStatus, error) {
	switch svc {
	case "", "inference.GRPCInferenceService":
	default:
		return 0, status.Errorf(codes.NotFound, "unknown service %.100q", svc)
	}
	if h.s.cfg.Ready() {
		return healthgrpc.HealthCheckResponse_SERVING, nil
	}
	return healthgrpc.HealthCheckResponse_NOT_SERVING, nil
}

func (h health) Check(_ context.Context, req *healthgrpc.HealthCheckRequest) (*healthgrpc.HealthCheckResponse, error) {
	st, err := h.status(req.Service)
	if err != nil {
		return nil, err
	}
	return &healthgrpc.HealthCheckResponse{Status: st}, nil
}

// List lists the services with their status.
func (h health) List(context.Context, *healthgrpc.HealthListRequest) (*healthgrpc.HealthListResponse, error) {
	out := &healthgrpc.HealthListResponse{Statuses: map[string]*healthgrpc.HealthCheckResponse{}}
	for _, svc := range []string{"", "inference.GRPCInferenceService"} {
		st, _ := h.status(svc)
		out.Statuses[svc] = &healthgrpc.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the status, then each change (polled every second), until
// the call ends.
func (h health) Watch(req *healthgrpc.HealthCheckRequest, stream healthgrpc.Health_WatchServer) error {
	var last healthgrpc.HealthCheckResponse_ServingStatus = -1
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		st, err := h.status(req.Service)
		if err != nil {
			st = healthgrpc.HealthCheckResponse_SERVICE_UNKNOWN
		}
		if st != last {
			if err := stream.Send(&healthgrpc.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-t.C:
		}
	}
}

// metadataHeader reads the call's metadata as the router's sticky keys
// read HTTP headers (names are lowercase in gRPC).
func metadataHeader(ctx context.Context) func(name string) []byte {
	md, _ := metadata.FromIncomingContext(ctx)
	return func(name string) []byte {
		if v := md.Get(name); len(v) > 0 {
			return []byte(v[0])
		}
		return nil
	}
}

// modelLister is the router's list of a routing file's models
// (versions.Router.Models).
type modelLister interface{ Models() []string }

// RepositoryIndex lists the models and versions served, read-only (the
// repository cannot load or unload): with a routing file, each model's
// versions; with one runtime, its model as version "1". A version is READY
// when its runtime is (and the proxy is not draining), else UNAVAILABLE;
// with ready set, only the READY ones are listed. Any repository_name
// names the one repository.
func (s *Server) RepositoryIndex(ctx context.Context, req *pb.RepositoryIndexRequest) (*pb.RepositoryIndexResponse, error) {
	out := &pb.RepositoryIndexResponse{}
	add := func(name, version string, ready bool) {
		st, reason := "READY", ""
		if !ready || !s.cfg.Ready() {
			st, reason = "UNAVAILABLE", "model runtime unavailable"
		}
		if !req.Ready || st == "READY" {
			out.Models = append(out.Models, &pb.RepositoryIndexResponse_ModelIndex{Name: name, Version: version, State: st, Reason: reason})
		}
	}
	r := s.cfg.Router
	lister, ok := r.(modelLister)
	if !r.Declared() || !ok {
		if info, ok := r.LastModel("", ""); ok {
			add(info.Model, oip.Version, true) // ready: s.cfg.Ready
		}
		return out, nil
	}
	for _, name := range lister.Models() {
		statuses, _ := r.Versions(name)
		for _, st := range statuses {
			add(name, st.Name, st.Ready)
		}
	}
	return out, nil
}
