// Package httpapi is the proxy's HTTP API on fasthttp: the drop-in POST
// /predict, the Open Inference Protocol v2, health, metrics and docs. It
// reads request bodies within a memory budget, turns every failure into a
// JSON error with the right status, and survives a panicking handler.
//
// Handlers never keep the RequestCtx or its byte slices after returning:
// request bodies are read into buffers of their own, reserved from the
// upload budget, which the classifier may keep until it has decoded them.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/docs"
	"github.com/batchgate/batchgate/proxy/fairshare"
	"github.com/batchgate/batchgate/proxy/flight"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/tracing"
)

// Classifier is what the API needs of the classification service.
type Classifier interface {
	// Model returns the model's handshake and whether a ready runtime
	// serves it.
	Model() (wire.Info, bool)
	// LastModel returns the latest handshake, ready or not.
	LastModel() (wire.Info, bool)
	// Classify classifies an encoded image, taking over one reference
	// of lease (see classify.Service.Classify).
	Classify(ctx context.Context, data []byte, lease *budget.Lease, noCache bool) (*classify.Outcome, error)
	// InferTensor runs one preprocessed image.
	InferTensor(ctx context.Context, tensor []float32) (*classify.Outcome, error)
}

// Config configures a Server.
type Config struct {
	// Router routes /predict and the OIP model routes to a model
	// version's Classifier: a routing file's versions, or the one
	// runtime's (Router.Declared false). Required.
	Router  Router
	Metrics *stats.Metrics
	Log     *slog.Logger
	// Ready reports whether the model can serve (the proxy adds its own
	// draining state).
	Ready func() bool
	// Version is the server version reported by GET /v2.
	Version string
	// RequestTimeout is every request's deadline, lowered by
	// X-Request-Timeout-Ms.
	RequestTimeout time.Duration
	// ConnMaxAge: a response on a connection older than this carries
	// Connection: close, so that clients reconnect (and a load balancer
	// spreads them over new replicas). Zero: connections live on. Needs
	// the fasthttp server's ConnState set to Server.ConnState.
	ConnMaxAge time.Duration
	// MaxBodyBytes is the largest image, and the largest request body.
	MaxBodyBytes int
	// Uploads bounds the memory of request bodies read at once.
	Uploads *budget.Budget
	// UploadWait is the longest a request waits for room in Uploads
	// before it gets 429 (at the start of its body, and at each growth of
	// its reservation).
	UploadWait time.Duration
	// UploadMinRate is the average rate, in bytes a second, below which a
	// body is cut off with 408 once UploadRateGrace has passed since its
	// read began. Zero: no minimum (the request's deadline still ends it).
	UploadMinRate   int64
	UploadRateGrace time.Duration
	// SharedCacheAcrossKeys lets requests of different API keys share
	// cached answers and coalesced work. False (the default): each key
	// has its own, so that no key can tell (from cached, coalesced or the
	// answer's speed) that another sent the same image.
	SharedCacheAcrossKeys bool
	// UploadsPerClient and UploadsPerKey bound the bodies over 64 KiB
	// read at once from one client address and with one API key; beyond
	// them 429. Zero: no bound.
	UploadsPerClient int
	UploadsPerKey    int
	// UploadMemoryPerClient bounds the part of Uploads that one client
	// address's bodies being read hold; beyond it 429. Zero means half of
	// Uploads; negative, no bound.
	UploadMemoryPerClient int64
	// MaxElements is the most images in one OIP request.
	MaxElements int
	// Tracing makes a span of each request (docs/tracing.md), continuing
	// an incoming W3C traceparent; the global tracer provider exports
	// them. False: no spans, no trace ids in the log.
	Tracing bool
	// TrustRemoteSampling says whose incoming sampled flag is honoured
	// (TRACING_TRUST_REMOTE); the zero value is
	// tracing.TrustAuthenticated. A request refused by auth has no span.
	TrustRemoteSampling tracing.TrustRemote
	// Auth, if set, checks API keys (docs/auth.md) before a request's body
	// is read; nil serves everyone, as the replaced server did.
	Auth *auth.Authenticator
	// Refusals, if set, charges each client address for the requests it
	// gets refused (4xx) and holds its next requests, their bodies unread,
	// while it owes more than its allowance (docs/memory.md); nil: off.
	Refusals *fairshare.Debt
}

// Server is the HTTP API.
type Server struct {
	cfg           Config
	draining      atomic.Bool
	clientUploads *fairshare.Shares // bodies being read, per client address
	keyUploads    *fairshare.Shares // and per API key
	clientBytes   *fairshare.Shares // their part of Uploads, per client address
	conns         connTimes         // when each open connection was accepted
}

// New returns a Server.
func New(cfg Config) *Server {
	perClient := cfg.UploadMemoryPerClient
	if perClient == 0 && cfg.Uploads != nil {
		perClient = cfg.Uploads.Size() / 2
	}
	return &Server{cfg: cfg, clientUploads: fairshare.NewShares(int64(cfg.UploadsPerClient)), keyUploads: fairshare.NewShares(int64(cfg.UploadsPerKey)),
		clientBytes: fairshare.NewShares(perClient)}
}

// SetDraining makes readiness fail and every response close its
// connection, so clients reconnect elsewhere while the proxy drains.
func (s *Server) SetDraining() { s.draining.Store(true) }

// multipartSlack is the multipart framing allowed around a MaxBodyBytes
// image.
const multipartSlack = 64 << 10

// MaxRequestBody is the body size fasthttp must let through to the
// handlers, which check it themselves.
func (s *Server) MaxRequestBody() int { return s.cfg.MaxBodyBytes + multipartSlack }

// reply is what a handler tells the request log.
type reply struct {
	cached    bool
	batchSize int
	queueWait time.Duration
	coalesced bool
	model     string                               // the model that answered
	version   string                               // routed: the version that served it
	keyID     string                               // the API key's id, with Auth
	done      func(status int, took time.Duration) // routed: Routed.Done
}

// Handler serves one request: route, answer, count and log it. A panic is
// recovered, logged with its stack and answered with a JSON 500.
func (s *Server) Handler(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	id := ctx.Request.Header.Peek("X-Request-Id")
	var rid string
	if validRequestID(id) {
		rid = string(id)
	} else {
		rid = fmt.Sprintf("%016x", ctx.ID()^uint64(start.UnixNano()))
	}
	path := string(ctx.Path())
	route := routeOf(path) // for a panic; route() names it once served
	var rep reply
	span := noopSpan // started once authorized: a refused request has none
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Metrics.Panics.Inc()
			s.cfg.Log.Error("handler panicked", "request_id", rid, "route", route, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			ctx.Response.Reset()
			s.fail(ctx, &apiError{500, "internal error", "internal"})
			ctx.SetConnectionClose()
		}
		ctx.Response.Header.Set("X-Request-Id", rid)
		if s.draining.Load() || s.cfg.ConnMaxAge > 0 && s.connAge(ctx, start) > s.cfg.ConnMaxAge {
			ctx.SetConnectionClose()
		}
		took := time.Since(start)
		status := ctx.Response.StatusCode()
		s.chargeRefusal(ctx, route, status)
		s.cfg.Metrics.Request(route, status, took)
		if rep.done != nil {
			rep.done(status, took)
		}
		endSpan(span, ctx.Method(), route, status, &rep, rid)
		if route == "/metrics" || route == "/healthz" || route == "/readyz" {
			return // probes and scrapes would drown the log
		}
		args := []any{"request_id", rid, "method", string(ctx.Method()), "route", route, "status", status,
			"latency_ms", ms(took), "cached", rep.cached, "batch_size", rep.batchSize,
			"queue_wait_ms", ms(rep.queueWait), "model_version", rep.version, "key_id", rep.keyID,
			"remote", ctx.RemoteIP().String()}
		if sc := span.SpanContext(); sc.IsValid() {
			args = append(args, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String(), "trace_sampled", sc.IsSampled())
		}
		s.cfg.Log.Info("request", args...)
	}()
	if !s.owes(ctx, route) {
		return // held, then answered 429
	}
	keyID, ok := s.authorize(ctx, route, false)
	if rep.keyID = keyID; !ok {
		return // answered 401, 403 or 429
	}
	if keyID != "" {
		ctx.SetUserValue(keyIDKey{}, keyID)
	}
	span = s.startSpan(ctx, route, keyID != "")
	route, rep = s.route(ctx, path)
	rep.keyID = keyID
}

// routeOf names path's route (the metrics' route label) before it is
// served.
func routeOf(path string) string {
	switch {
	case path == "/docs" || strings.HasPrefix(path, "/docs/"):
		return "/docs"
	case !strings.HasPrefix(path, "/v2/models/"):
		for _, r := range stats.Routes {
			if r == path {
				return r
			}
		}
		if strings.HasPrefix(path, "/v2/") {
			return "/v2/other"
		}
		return "other"
	case strings.HasSuffix(path, "/infer"):
		return "/v2/models/infer"
	case strings.HasSuffix(path, "/ready"):
		return "/v2/models/ready"
	}
	return "/v2/models/metadata"
}

func (s *Server) route(ctx *fasthttp.RequestCtx, path string) (string, reply) {
	switch {
	case path == "/predict":
		if !ctx.IsPost() {
			s.fail(ctx, &apiError{405, "use POST", "method_not_allowed"})
			return path, reply{}
		}
		return path, s.predict(ctx)
	case path == "/healthz":
		jsonReply(ctx, 200, map[string]bool{"live": true})
	case path == "/readyz":
		s.readiness(ctx, map[string]any{})
	case path == "/metrics":
		// Served on METRICS_PORT only, so an Ingress to the API never
		// exposes it.
		s.fail(ctx, &apiError{404, "metrics are served on their own port (METRICS_PORT, default 9464), not on the API's", "not_found"})
	case path == "/docs" || strings.HasPrefix(path, "/docs/") || path == "/openapi.json":
		// Swagger UI, its files, the guide and the OpenAPI description.
		body, contentType, ok := docs.Lookup(path)
		if !ok {
			s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
			return "other", reply{}
		}
		ctx.SetContentType(contentType)
		ctx.SetBody(body)
		if path != "/openapi.json" {
			path = "/docs"
		}
	case path == "/v2" || strings.HasPrefix(path, "/v2/"):
		return s.v2(ctx, path)
	default:
		s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
		return "other", reply{}
	}
	return path, reply{}
}

// MetricsHandler serves GET /metrics in Prometheus' text format, on the
// metrics port (METRICS_PORT), apart from the API.
func (s *Server) MetricsHandler(ctx *fasthttp.RequestCtx) {
	switch {
	case string(ctx.Path()) != "/metrics":
		jsonReply(ctx, 404, map[string]string{"error": "this port serves only /metrics"})
	case !ctx.IsGet() && !ctx.IsHead():
		jsonReply(ctx, 405, map[string]string{"error": "use GET"})
	default:
		ctx.SetContentType("text/plain; version=0.0.4")
		s.cfg.Metrics.WritePrometheus(ctx) // the injected set only
	}
}

// Ready is true while the model can serve and the proxy is not draining.
func (s *Server) Ready() bool { return !s.draining.Load() && s.cfg.Ready() }

func (s *Server) readiness(ctx *fasthttp.RequestCtx, body map[string]any) {
	ready := s.Ready()
	body["ready"] = ready
	status := 200
	if !ready {
		status = 503
	}
	jsonReply(ctx, status, body)
}

// deadline returns the request's context: RequestTimeout, lowered by
// X-Request-Timeout-Ms.
func (s *Server) deadline(ctx *fasthttp.RequestCtx) (context.Context, context.CancelFunc, *apiError) {
	timeout, ae := parseTimeout(ctx.Request.Header.Peek("X-Request-Timeout-Ms"), s.cfg.RequestTimeout)
	if ae != nil {
		return nil, nil, ae
	}
	c, cancel := context.WithTimeout(baseContext(ctx), timeout)
	c = classify.WithClient(c, ctx.RemoteIP().String()) // decode workers and queues shared fairly
	if key, _ := ctx.UserValue(keyIDKey{}).(string); key != "" && !s.cfg.SharedCacheAcrossKeys {
		c = classify.WithPartition(c, key) // keys never learn what other keys sent
	}
	return c, cancel, nil
}

// readBody reads the request body into a buffer of its own, within the
// upload budget: factor bytes of it per byte of buffer, reserved as the
// bytes arrive (meteredBody), at a minimum rate, in one of the client's and
// the key's upload slots. The body must declare its length (411 otherwise)
// and be at most limit bytes (413). A body refused unread is skipped
// (skipBody), so the client reads the answer instead of a reset. The caller
// owns the returned lease's one reference.
func (s *Server) readBody(rctx context.Context, ctx *fasthttp.RequestCtx, limit int, factor int64,
	read func(r io.Reader, n int, buf []byte) ([]byte, *apiError)) ([]byte, *budget.Lease, *apiError) {
	n := ctx.Request.Header.ContentLength()
	if ae := checkLength(n, limit); ae != nil {
		skipBody(ctx, n)
		return nil, nil, ae
	}
	n = max(n, 0)
	if n > uploadChunk {
		// Only bodies past their first chunk take an upload slot: smaller
		// ones hold little, and fasthttp has read most of them already.
		release, ae := s.uploadSlots(ctx)
		if ae != nil {
			skipBody(ctx, n)
			return nil, nil, ae
		}
		defer release()
	}
	// The first chunk's reservation; a body over the whole budget (a
	// small budget for the body limit) grows to all of it: one such
	// request at a time.
	most := min(factor*int64(n), s.cfg.Uploads.Size())
	first, client := min(factor*uploadChunk, most), ctx.RemoteIP().String()
	if !s.clientBytes.Take(client, first) {
		skipBody(ctx, n)
		return nil, nil, s.uploadError(&meteredBody{fail: errClientShare})
	}
	wctx, cancel := context.WithTimeout(rctx, s.cfg.UploadWait)
	lease, err := s.cfg.Uploads.Acquire(wctx, first)
	cancel()
	if err != nil {
		s.clientBytes.Give(client, first)
		skipBody(ctx, n)
		if rctx.Err() != nil {
			return nil, nil, errStatus(rctx.Err())
		}
		return nil, nil, s.uploadError(&meteredBody{fail: errNoRoom})
	}
	span := childSpan(rctx, "read body")
	body := &meteredBody{ctx: ctx, rctx: rctx, r: ctx.RequestBodyStream(), lease: lease, factor: factor, max: most,
		start: time.Now(), grace: s.cfg.UploadRateGrace, rate: s.cfg.UploadMinRate, wait: s.cfg.UploadWait,
		client: client, shares: s.clientBytes, taken: first}
	b, ae := read(body, n, nil)
	countRead(ctx, body.read)
	// The share bounds bodies being read: once read, the bytes are
	// processed at the server's pace, not the client's.
	s.clientBytes.Give(client, body.taken)
	if ue := s.uploadError(body); ue != nil {
		ae = ue // the read was stopped, not the body malformed: say why
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.request.body.size", n), attribute.Int("image.bytes", len(b)))
		if ae != nil {
			span.SetStatus(codes.Error, ae.msg)
		}
	}
	span.End()
	if ae != nil {
		lease.Release()
		// The body may be half read: never reuse the connection, but
		// skip what is left first (the stream ends at the body's end),
		// or closing with unread bytes resets the connection and the
		// client, still sending, may never see this answer. A body too
		// slow or past its deadline is not waited for.
		ctx.SetConnectionClose()
		if ae.reason != "upload_too_slow" && ae.reason != "deadline" {
			skipBody(ctx, n)
		}
		return nil, nil, ae
	}
	return b, lease, nil
}

// checkLength checks a request's Content-Length (-1: chunked, -2: none)
// against limit.
func checkLength(n, limit int) *apiError {
	switch {
	case n == -1:
		return &apiError{411, "send the body with a Content-Length (chunked uploads are not accepted)", "length_required"}
	case n > limit:
		return &apiError{413, fmt.Sprintf("request body larger than %d bytes", limit), "body_too_large"}
	}
	return nil
}

// A body refused unread is read and dropped if it is at most maxSkip bytes
// and arrives within skipTimeout; otherwise the connection closes.
const (
	maxSkip     = 64 << 20
	skipTimeout = 5 * time.Second
)

// skipBody reads and drops the unread body of n bytes, or what is left of
// a body read in part (the stream ends with the body), with a copy buffer's
// memory, so that the client, still sending, gets the answer rather than a
// connection reset. Anything short of n bytes closes the connection.
func skipBody(ctx *fasthttp.RequestCtx, n int) {
	if n < 0 || n > maxSkip {
		ctx.SetConnectionClose()
		return
	}
	ctx.SetReadDeadline(time.Now().Add(skipTimeout))
	skipped, err := io.CopyN(io.Discard, ctx.RequestBodyStream(), int64(n))
	countRead(ctx, skipped)
	if err != nil {
		ctx.SetConnectionClose()
	}
}

// ExpectHandler answers "Expect: 100-continue" before the body is sent: a
// body without a length (411) or over the route's limit (413) is refused
// then, and never sent.
func (s *Server) ExpectHandler(ctx *fasthttp.RequestCtx) int {
	if _, ok := s.authorize(ctx, routeOf(string(ctx.Path())), true); !ok {
		return ctx.Response.StatusCode()
	}
	limit := s.cfg.MaxBodyBytes
	if bytes.HasPrefix(ctx.Request.Header.ContentType(), []byte("multipart/")) {
		limit += multipartSlack
	}
	if ae := checkLength(ctx.Request.Header.ContentLength(), limit); ae != nil {
		// The handler will not run: count and log the refusal here.
		route := routeOf(string(ctx.Path()))
		s.fail(ctx, ae)
		s.cfg.Metrics.Request(route, ae.status, 0)
		s.cfg.Log.Info("request refused before its body", "method", string(ctx.Method()), "route", route,
			"status", ae.status, "remote", ctx.RemoteIP().String())
		return ae.status
	}
	return fasthttp.StatusContinue
}

// fail answers a JSON error, with Retry-After for overload, and counts the
// rejection.
func (s *Server) fail(ctx *fasthttp.RequestCtx, e *apiError) {
	if e.status == 500 {
		s.cfg.Log.Error("request failed", "status", e.status, "reason", e.reason)
	}
	if e.reason != "" {
		s.cfg.Metrics.Rejected(e.reason)
	}
	jsonReply(ctx, e.status, map[string]string{"error": e.msg})
}

// failErr answers err, with Retry-After on overload and unavailability.
func (s *Server) failErr(ctx *fasthttp.RequestCtx, err error) {
	e := errStatus(err)
	var pe *flight.PanicError
	switch {
	case errors.As(err, &pe):
		s.cfg.Metrics.Panics.Inc()
		s.cfg.Log.Error("panic in shared work", "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
	case e.status == 500:
		s.cfg.Log.Error("inference failed", "error", err)
	}
	var qf *batching.QueueFullError
	switch {
	case errors.As(err, &qf):
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds(qf.RetryAfter)))
	case e.status == 503 || e.status == 429:
		ctx.Response.Header.Set("Retry-After", "1")
	}
	s.fail(ctx, e)
}

// retryAfterSeconds rounds the batcher's estimate up to whole seconds, at
// least 1.
func retryAfterSeconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }

func jsonReply(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = 500, []byte(`{"error":"cannot encode response"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// ErrorHandler answers requests fasthttp could not parse, in JSON.
func (s *Server) ErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		s.fail(ctx, &apiError{413, fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes), "body_too_large"})
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		// The headers (HEADER_TIMEOUT), or the body's first bytes, which
		// fasthttp reads before the handler (HeaderReceived), came too
		// slowly: fasthttp has reset the request, so which is not known.
		s.fail(ctx, &apiError{408, fmt.Sprintf("request arrived too slowly: send the headers at once and the body at %d bytes a second or more",
			s.cfg.UploadMinRate), "slow_request"})
		return
	}
	s.fail(ctx, badRequest("malformed HTTP request"))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
