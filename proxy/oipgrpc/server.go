// Package oipgrpc serves the Open Inference Protocol over gRPC:
// inference.GRPCInferenceService (inferencepb, generated from the
// protocol's .proto), with the standard health service (grpc.health.v1,
// for Kubernetes' gRPC probes) and server reflection, on a port of its own
// (GRPC_PORT).
//
// It takes the same path as the HTTP API's /v2 routes: the model router
// (httpapi.Router: a routing file's versions, or the one runtime) picks a
// version, whose Classifier classifies each image, so gRPC and HTTP
// requests share the batches, the result cache and coalescing. Requests
// are checked as proxy/oip checks REST bodies (one input; BYTES images or
// FP32 [N,C,H,W] tensors; the classification extension), with the same
// limits and messages, and errors are the HTTP API's (httpapi.ErrorStatus)
// turned into the gRPC codes a Triton client expects (Code). API keys come
// from the authorization or x-api-key metadata, with the HTTP API's scopes
// and per-key limits; a grpc-timeout becomes the request's deadline (at
// most RequestTimeout), and a cancelled call cancels its images.
//
// # What a request costs
//
// gRPC reads a whole message, at most MaxMessageBytes, before the handler
// runs (into a pooled buffer). ModelInfer then checks its wire bytes
// (precheck) before it unmarshals them, so that decoding and parsing no
// message allocates more than 3 times its size plus 64 KiB (proto's copy
// of its bytes and floats, and the floats of raw FP32 data; unknown fields
// are dropped; TestDecodeAllocationBound and FuzzDecodeInfer check the
// bound), and reserves twice its size in the upload budget
// (Config.Uploads) while its images are in progress.
//
// # Goroutines
//
// grpc.Server owns a goroutine per connection and per call, bounded by
// MaxConcurrentStreams per connection. Shutdown stops it: GracefulStop
// until its context ends, then Stop.
package oipgrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/flight"
	"github.com/batchgate/batchgate/proxy/httpapi"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/tracing"
)

// Config configures a Server. proxy/gateway fills it from its own Config,
// whose WithDefaults writes the defaults.
type Config struct {
	// Router routes the model RPCs to a model version's Classifier, as
	// for the HTTP API. Required.
	Router httpapi.Router
	// Metrics counts rejections (inference_rejections_total, shared with
	// HTTP); Set receives the gRPC series
	// (inference_grpc_requests_total, inference_grpc_latency_seconds).
	Metrics *stats.Metrics
	Set     *metrics.Set
	Log     *slog.Logger
	// Version is the server version of ServerMetadata.
	Version string
	// Ready reports whether the proxy serves: its model is ready and it
	// is not draining (httpapi.Server.Ready).
	Ready func() bool
	// RequestTimeout is every call's deadline, lowered by grpc-timeout.
	RequestTimeout time.Duration
	// MaxMessageBytes is the largest request message
	// (grpc.MaxRecvMsgSize): the HTTP API's MaxBodyBytes.
	MaxMessageBytes int
	// MaxElements is the most images in one ModelInfer.
	MaxElements int
	// MaxConcurrentStreams bounds the calls in progress on one
	// connection.
	MaxConcurrentStreams uint32
	// ConnMaxAge closes a connection (GOAWAY, its calls finish first)
	// once it is this old, so that clients reconnect and a load balancer
	// spreads them over new replicas. Zero: never.
	ConnMaxAge time.Duration
	// Uploads, if set, bounds the memory of requests in progress: a
	// ModelInfer reserves twice its message size for up to UploadWait,
	// or fails with RESOURCE_EXHAUSTED.
	Uploads    *budget.Budget
	UploadWait time.Duration
	// Auth, if set, requires API keys as the HTTP API does.
	Auth *auth.Authenticator
	// SharedCacheAcrossKeys: as httpapi.Config's.
	SharedCacheAcrossKeys bool
	// Tracing makes a span of each call (docs/tracing.md), continuing the
	// traceparent of its metadata; TrustRemoteSampling says whose sampled
	// flag is honoured, as httpapi.Config's.
	Tracing             bool
	TrustRemoteSampling tracing.TrustRemote
}

// Server serves GRPCInferenceService, health and reflection.
type Server struct {
	pb.UnimplementedGRPCInferenceServiceServer
	cfg  Config
	grpc *grpc.Server
}

// keepalive enforcement: a client may ping at most every minPing (gRPC's
// default is 5 minutes; Triton's clients ping every 10 s or more when
// asked to), without calls too; more often, the connection closes.
const minPing = 10 * time.Second

// New returns a Server with every service registered.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg}
	kp := keepalive.ServerParameters{MaxConnectionIdle: 2 * time.Minute}
	if cfg.ConnMaxAge > 0 {
		kp.MaxConnectionAge = cfg.ConnMaxAge
		kp.MaxConnectionAgeGrace = cfg.RequestTimeout + 10*time.Second
	}
	s.grpc = grpc.NewServer(
		grpc.ForceServerCodecV2(newCodec()),
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minPing, PermitWithoutStream: true}),
		grpc.KeepaliveParams(kp),
		grpc.InTapHandle(s.admit),
		grpc.ChainUnaryInterceptor(s.observe),
		grpc.ChainStreamInterceptor(s.observeStream),
	)
	desc := pb.GRPCInferenceService_ServiceDesc
	desc.Methods = make([]grpc.MethodDesc, len(pb.GRPCInferenceService_ServiceDesc.Methods))
	copy(desc.Methods, pb.GRPCInferenceService_ServiceDesc.Methods)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "ModelInfer" {
			desc.Methods[i].Handler = s.modelInferHandler // checks the wire bytes first
		}
	}
	s.grpc.RegisterService(&desc, s)
	healthgrpc.RegisterHealthServer(s.grpc, health{s})
	reflection.Register(s.grpc)
	return s
}

// Serve serves ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.grpc.Serve(ln) }

// Shutdown stops accepting, lets the calls in progress finish until ctx
// ends, then closes every connection. It returns ctx's error if the calls
// had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
		return fmt.Errorf("grpc: calls cut at shutdown: %w", ctx.Err())
	}
}

// The fully qualified names of the service's methods.
const service = "/inference.GRPCInferenceService/"

// methodScopes are the API key scopes of the methods that need one; the
// others (health, liveness, readiness, reflection) are exempt, as their
// HTTP routes are. ModelInfer's scope is checked once its message says
// whether it chooses a version (ModelInfer).
var methodScopes = map[string]auth.Scope{
	pb.GRPCInferenceService_ServerMetadata_FullMethodName:  auth.Metadata,
	pb.GRPCInferenceService_ModelMetadata_FullMethodName:   auth.Metadata,
	pb.GRPCInferenceService_ModelReady_FullMethodName:      auth.Metadata,
	pb.GRPCInferenceService_ModelStatistics_FullMethodName: auth.Metadata,
	pb.GRPCInferenceService_RepositoryIndex_FullMethodName: auth.Metadata,
}

type keyIDKey struct{}

// callInfo is what a handler tells the request log.
type callInfo struct {
	keyID, version, model string
	done                  func(status int, took time.Duration) // Routed.Done
	status                int                                  // the HTTP status of the answer, for Done
}

type callInfoKey struct{}

// callOf is the call's record (observe puts it in the context).
func callOf(ctx context.Context) *callInfo {
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		return ci
	}
	return &callInfo{}
}

// observe wraps every unary call: its request id, API key (the methods of
// methodScopes), panic recovery, metrics and log line.
func (s *Server) observe(ctx context.Context, req any, in *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	md, _ := metadata.FromIncomingContext(ctx)
	rid := first(md, "x-request-id")
	if !validRequestID(rid) {
		rid = fmt.Sprintf("%016x", uint64(start.UnixNano()))
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-request-id", rid))
	ci := &callInfo{status: 200}
	ctx = context.WithValue(ctx, callInfoKey{}, ci)
	authenticated, _ := ctx.Value(admittedKey{}).(bool)
	ctx, span := s.startSpan(ctx, md, in.FullMethod, authenticated)
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Metrics.Panics.Inc()
			s.cfg.Log.Error("handler panicked", "request_id", rid, "method", in.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
			ci.status = 500
		}
		took := time.Since(start)
		code := status.Code(err)
		s.count(in.FullMethod, code, took)
		endSpan(span, code, rid, ci)
		if ci.done != nil {
			ci.done(ci.status, took)
		}
		if strings.HasPrefix(in.FullMethod, "/grpc.health.") {
			return // probes would drown the log
		}
		remote := ""
		if p, ok := peer.FromContext(ctx); ok {
			remote = p.Addr.String()
		}
		args := []any{"protocol", "grpc", "request_id", rid, "method", in.FullMethod, "code", code.String(),
			"latency_ms", float64(took.Microseconds()) / 1000, "model_version", ci.version, "key_id", ci.keyID, "remote", remote}
		if sc := span.SpanContext(); sc.IsValid() {
			args = append(args, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String(), "trace_sampled", sc.IsSampled())
		}
		s.cfg.Log.Info("request", args...)
	}()
	if scope, ok := methodScopes[in.FullMethod]; ok {
		if err := s.authorize(ctx, ci, []auth.Scope{scope}); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// observeStream counts the streaming calls (reflection, health's Watch).
func (s *Server) observeStream(srv any, ss grpc.ServerStream, in *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	s.count(in.FullMethod, status.Code(err), time.Since(start))
	return err
}

// count counts a call in inference_grpc_requests_total and
// inference_grpc_latency_seconds.
func (s *Server) count(method string, code codes.Code, took time.Duration) {
	s.cfg.Set.GetOrCreateCounter(fmt.Sprintf(`inference_grpc_requests_total{method=%q,code=%q}`, method, code)).Inc()
	s.cfg.Set.GetOrCreatePrometheusHistogram(fmt.Sprintf(`inference_grpc_latency_seconds{method=%q}`, method)).Update(took.Seconds())
}

// admittedKey marks the context of a call whose API key admit accepted.
type admittedKey struct{}

// admit runs when a call's headers arrive, before its message is read
// (grpc.InTapHandle; on the connection's reader goroutine, so it only
// looks up the key): a call to a method that needs an API key (ModelInfer
// and those of methodScopes) is refused as its handler would refuse it
// (UNAUTHENTICATED, PERMISSION_DENIED, or RESOURCE_EXHAUSTED with retry
// info when the key's rate limiter is empty), so that a client without a
// valid key cannot make the proxy buffer a message of up to
// MaxMessageBytes. It takes no token: the handler does (authorize), once
// it knows the call's images and version.
func (s *Server) admit(ctx context.Context, info *tap.Info) (context.Context, error) {
	if s.cfg.Auth == nil {
		return ctx, nil
	}
	scope, ok := methodScopes[info.FullMethodName]
	if info.FullMethodName == pb.GRPCInferenceService_ModelInfer_FullMethodName {
		scope, ok = auth.Predict, true
	}
	if !ok {
		return ctx, nil
	}
	d := s.cfg.Auth.CheckAll([]byte(first(info.Header, "authorization")), []byte(first(info.Header, "x-api-key")), []auth.Scope{scope}, false)
	if d.Allowed() {
		return context.WithValue(ctx, admittedKey{}, true), nil
	}
	// No stream exists yet: the retry-after trailer cannot be set, but
	// the status keeps its RetryInfo detail.
	err := s.authError(ctx, &callInfo{}, d)
	code := status.Code(err)
	s.count(info.FullMethodName, code, 0)
	s.cfg.Log.Info("request", "protocol", "grpc", "method", info.FullMethodName, "code", code.String(),
		"key_id", d.KeyID, "refused", "before its message was read")
	return nil, err
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// validRequestID: as the HTTP API's X-Request-Id, 1 to 128 bytes of
// letters, digits and -_.:/+=@.
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-_.:/+=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

const unauthorized = "missing or invalid API key: send the metadata authorization: Bearer <key>, or x-api-key: <key>"

// authorize checks the call's API key (metadata authorization or
// x-api-key) for scopes, taking a token from its limiter as the HTTP API
// does, and records the key's id in ci.
func (s *Server) authorize(ctx context.Context, ci *callInfo, scopes []auth.Scope) error {
	if s.cfg.Auth == nil {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	d := s.cfg.Auth.CheckAll([]byte(first(md, "authorization")), []byte(first(md, "x-api-key")), scopes, true)
	ci.keyID = d.KeyID
	if d.Allowed() {
		return nil
	}
	return s.authError(ctx, ci, d)
}

// authError is a refused key's status: as the HTTP API's 401, 403 or 429.
func (s *Server) authError(ctx context.Context, ci *callInfo, d auth.Decision) error {
	var msg string
	switch d.Status {
	case 403:
		if d.Scope == auth.Versions {
			msg = fmt.Sprintf("API key %q does not have the %q scope needed to choose a model version: "+
				"leave model_version empty to be routed by the routing file's weights, or ask for a key with that scope", d.KeyID, auth.Versions)
		} else {
			msg = fmt.Sprintf("API key %q does not have the %q scope this method needs", d.KeyID, d.Scope)
		}
	case 429:
		switch {
		case d.Limit > 0:
			msg = fmt.Sprintf("API key %q may have at most %d images per request or in flight: send this request's images in requests of at most %d", d.KeyID, d.Limit, d.Limit)
		default:
			msg = fmt.Sprintf("API key %q is over its rate or concurrency limit: retry later", d.KeyID)
		}
	default:
		d.Status, msg = 401, unauthorized
	}
	return s.fail(ctx, ci, &apiError{status: d.Status, msg: msg, reason: authReasons[d.Reason], retry: d.RetryAfter})
}

// authReasons maps auth's reasons to inference_rejections_total's, as the
// HTTP API does.
var authReasons = map[string]string{
	auth.ReasonMissing: "auth_missing", auth.ReasonMalformed: "auth_invalid", auth.ReasonUnknown: "auth_invalid",
	auth.ReasonSecret: "auth_invalid", auth.ReasonScope: "auth_scope", auth.ReasonRate: "auth_rate",
	auth.ReasonConcurrency: "auth_concurrency",
}

// chargeImages charges n images to the call's key, as the HTTP API does
// once it knows a request's images.
func (s *Server) chargeImages(ctx context.Context, ci *callInfo, n int) (release func(), err error) {
	if s.cfg.Auth == nil || ci.keyID == "" {
		return func() {}, nil
	}
	release, d := s.cfg.Auth.AcquireImages(ci.keyID, n)
	if d.Allowed() {
		if d = s.cfg.Auth.TakeImages(ci.keyID, n); !d.Allowed() {
			release()
		}
	}
	if d.Allowed() {
		return release, nil
	}
	return func() {}, s.authError(ctx, ci, d)
}

// apiError is a failure as the HTTP API words it.
type apiError struct {
	status      int
	msg, reason string
	retry       time.Duration // > 0: when to retry (Retry-After on HTTP)
}

func (e *apiError) Error() string { return e.msg }

// fail counts and logs err as the HTTP API does and returns its gRPC
// status: the code Code maps its HTTP status to, the HTTP API's message,
// and for overload and unavailability when to retry (RetryInfo in the
// status details, and a retry-after trailer in seconds).
func (s *Server) fail(ctx context.Context, ci *callInfo, err error) error {
	var ae *apiError
	if errors.Is(err, context.Canceled) {
		// The client's grpc-timeout ends its stream (RST_STREAM) as the
		// server's own timer does: a call cancelled past its deadline
		// missed the deadline.
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			err = context.DeadlineExceeded
		}
	}
	if !errors.As(err, &ae) {
		st, msg, reason := httpapi.ErrorStatus(err)
		ae = &apiError{status: st, msg: msg, reason: reason}
		var pe *flight.PanicError
		var qf *batching.QueueFullError
		switch {
		case errors.As(err, &pe):
			s.cfg.Metrics.Panics.Inc()
			s.cfg.Log.Error("panic in shared work", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		case st == 500:
			s.cfg.Log.Error("inference failed", "protocol", "grpc", "error", err)
		}
		switch {
		case errors.As(err, &qf):
			ae.retry = qf.RetryAfter
		case st == 429 || st == 503:
			ae.retry = time.Second
		}
	}
	if ae.reason != "" {
		s.cfg.Metrics.Rejected(ae.reason)
	}
	ci.status = ae.status
	code := Code(ae.status)
	if ae.retry > 0 && (code == codes.ResourceExhausted || code == codes.Unavailable) {
		secs := max(1, int(math.Ceil(ae.retry.Seconds())))
		grpc.SetTrailer(ctx, metadata.Pairs("retry-after", strconv.Itoa(secs)))
		return retryStatus(code, ae.msg, time.Duration(secs)*time.Second)
	}
	return status.Error(code, ae.msg)
}

// Code is the gRPC code of an HTTP status of the HTTP API, as Triton's
// clients expect it: 400, 415 INVALID_ARGUMENT; 401 UNAUTHENTICATED; 403
// PERMISSION_DENIED; 404 NOT_FOUND; 408, 504 DEADLINE_EXCEEDED; 413, 429
// RESOURCE_EXHAUSTED; 499 CANCELLED; 503 UNAVAILABLE; any other 4xx
// FAILED_PRECONDITION; 5xx INTERNAL.
func Code(httpStatus int) codes.Code {
	switch httpStatus {
	case 200:
		return codes.OK
	case 400, 415:
		return codes.InvalidArgument
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.NotFound
	case 405:
		return codes.Unimplemented
	case 408, 504:
		return codes.DeadlineExceeded
	case 413, 429:
		return codes.ResourceExhausted
	case 499:
		return codes.Canceled
	case 503:
		return codes.Unavailable
	}
	if httpStatus >= 400 && httpStatus < 500 {
		return codes.FailedPrecondition
	}
	return codes.Internal
}

// ctxOf is a call's context as the HTTP API makes a request's: its
// deadline (grpc-timeout, at most RequestTimeout), its client for the
// fair shares of decoding, and its key's cache partition.
func (s *Server) ctxOf(ctx context.Context, ci *callInfo) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	client := ""
	if p, ok := peer.FromContext(ctx); ok {
		client = p.Addr.String()
		if host, _, err := net.SplitHostPort(client); err == nil {
			client = host
		}
	}
	c = classify.WithClient(c, client)
	if ci.keyID != "" && !s.cfg.SharedCacheAcrossKeys {
		c = classify.WithPartition(c, ci.keyID)
	}
	return c, cancel
}

// retryStatus is code with msg and a google.rpc.RetryInfo detail.
func retryStatus(code codes.Code, msg string, after time.Duration) error {
	st := status.New(code, msg)
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = withInfo
	}
	return st.Err()
}
