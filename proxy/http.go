package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/docs"
)

// api is the HTTP layer. Handlers never keep the RequestCtx or its byte
// slices after returning; what outlives them is copied (service.classify).
type api struct {
	svc            *service
	log            *slog.Logger
	metrics        *proxyMetrics
	requestTimeout time.Duration
	maxBodyBytes   int
	draining       atomic.Bool
	version        string
}

// reply is what a handler hands back to the request wrapper for logging.
type reply struct {
	cached    bool
	batchSize int
	queueWait time.Duration
}

// handler routes requests and writes one JSON log line for each.
func (a *api) handler(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	id := string(ctx.Request.Header.Peek("X-Request-Id"))
	if id == "" || len(id) > 128 {
		id = fmt.Sprintf("%016x", ctx.ID()^uint64(start.UnixNano()))
	}
	ctx.Response.Header.Set("X-Request-Id", id)
	path := string(ctx.Path())
	route, rep := a.route(ctx, path)
	took := time.Since(start)
	status := ctx.Response.StatusCode()
	a.metrics.request(route, status, took)
	if route == "/metrics" || route == "/healthz" || route == "/readyz" {
		return // probes and scrapes would drown the log
	}
	a.log.Info("request", "request_id", id, "method", string(ctx.Method()), "route", route, "status", status,
		"latency_ms", float64(took.Microseconds())/1000, "cached", rep.cached, "batch_size", rep.batchSize,
		"queue_wait_ms", float64(rep.queueWait.Microseconds())/1000, "remote", ctx.RemoteIP().String())
}

func (a *api) route(ctx *fasthttp.RequestCtx, path string) (string, reply) {
	switch {
	case path == "/predict":
		if !ctx.IsPost() {
			a.fail(ctx, 405, "use POST")
			return path, reply{}
		}
		return path, a.predict(ctx)
	case path == "/healthz":
		jsonReply(ctx, 200, map[string]bool{"live": true})
	case path == "/readyz":
		ready := a.ready()
		jsonReply(ctx, map[bool]int{true: 200, false: 503}[ready], map[string]bool{"ready": ready})
	case path == "/metrics":
		ctx.SetContentType("text/plain; version=0.0.4")
		metrics.WritePrometheus(ctx, true)
	case path == "/docs" || strings.HasPrefix(path, "/docs/") || path == "/openapi.json":
		// Swagger UI, its files, the guide and the OpenAPI description,
		// all embedded (package docs).
		body, contentType, ok := docs.Lookup(path)
		if !ok {
			a.fail(ctx, 404, "no such route; see /docs")
			return "other", reply{}
		}
		ctx.SetContentType(contentType)
		ctx.SetBody(body)
	case path == "/v2" || strings.HasPrefix(path, "/v2/"):
		return a.v2(ctx, path)
	default:
		a.fail(ctx, 404, "no such route; see /docs")
		return "other", reply{}
	}
	return path, reply{}
}

// ready is true while the runtime is connected and warmed and the proxy is
// not draining.
func (a *api) ready() bool {
	c, _ := a.svc.rt.current()
	return c != nil && !a.draining.Load()
}

// deadline returns the request's context: REQUEST_TIMEOUT, lowered by
// X-Request-Timeout-Ms.
func (a *api) deadline(ctx *fasthttp.RequestCtx) (context.Context, context.CancelFunc, error) {
	timeout := a.requestTimeout
	if h := ctx.Request.Header.Peek("X-Request-Timeout-Ms"); len(h) > 0 {
		ms, err := strconv.Atoi(string(h))
		if err != nil || ms <= 0 {
			return nil, nil, errors.New("X-Request-Timeout-Ms must be a positive integer")
		}
		timeout = min(timeout, time.Duration(ms)*time.Millisecond)
	}
	c, cancel := context.WithTimeout(context.Background(), timeout)
	return c, cancel, nil
}

type prediction struct {
	Label       string  `json:"label"`
	ClassID     int     `json:"class_id"`
	Probability float64 `json:"probability"`
}

// predict serves the drop-in endpoint: a multipart "file" or an image body.
func (a *api) predict(ctx *fasthttp.RequestCtx) reply {
	data, status, msg := a.imageBody(ctx)
	if status != 0 {
		a.fail(ctx, status, msg)
		return reply{}
	}
	topK := 5
	if v := ctx.QueryArgs().Peek("top_k"); v != nil {
		k, err := strconv.Atoi(string(v))
		if err != nil || k < 1 {
			a.fail(ctx, 400, "top_k must be a positive integer")
			return reply{}
		}
		topK = k
	}
	rctx, cancel, err := a.deadline(ctx)
	if err != nil {
		a.fail(ctx, 400, err.Error())
		return reply{}
	}
	defer cancel()
	noCache := bytes.Contains(bytes.ToLower(ctx.Request.Header.Peek("Cache-Control")), []byte("no-cache"))
	out, err := a.svc.classify(rctx, data, noCache)
	if err != nil {
		a.failErr(ctx, err)
		return reply{}
	}
	if topK > out.info.Classes {
		a.fail(ctx, 400, fmt.Sprintf("top_k must be at most %d", out.info.Classes))
		return reply{}
	}
	probs := softmax(out.scores)
	var preds []prediction
	for _, i := range topIndices(probs, topK) {
		preds = append(preds, prediction{Label: out.info.Labels[i], ClassID: i, Probability: probs[i]})
	}
	resp := map[string]any{
		"model":        out.info.Model,
		"model_sha256": out.info.ModelSHA256,
		"predictions":  preds,
		"cached":       out.cached,
		"coalesced":    out.coalesced,
	}
	timings := map[string]float64{}
	rep := reply{cached: out.cached}
	if out.inf != nil {
		timings["preprocess_ms"] = ms(out.prep)
		timings["queue_ms"] = ms(out.inf.queueWait)
		timings["inference_ms"] = ms(out.inf.exec)
		timings["batch_size"] = float64(out.inf.batchSize)
		rep.batchSize, rep.queueWait = out.inf.batchSize, out.inf.queueWait
	}
	resp["timings"] = timings
	if out.info.Generated {
		resp["generated_weights"] = true
		resp["warning"] = "the model has generated pseudo-random weights: these predictions are meaningless"
	}
	jsonReply(ctx, 200, resp)
	return rep
}

// imageBody returns the uploaded image bytes (aliasing the request: valid
// until the handler returns), or a status and message.
func (a *api) imageBody(ctx *fasthttp.RequestCtx) ([]byte, int, string) {
	ct := string(ctx.Request.Header.ContentType())
	switch {
	case strings.HasPrefix(ct, "multipart/form-data"):
		fh, err := ctx.FormFile("file")
		if err != nil {
			return nil, 400, `multipart form needs a "file" field holding the image`
		}
		if fh.Size > int64(a.maxBodyBytes) {
			return nil, 413, fmt.Sprintf("image larger than %d bytes", a.maxBodyBytes)
		}
		f, err := fh.Open()
		if err != nil {
			return nil, 400, "cannot read the uploaded file"
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, int64(a.maxBodyBytes)+1))
		if err != nil {
			return nil, 400, "cannot read the uploaded file"
		}
		return data, 0, ""
	case strings.HasPrefix(ct, "image/") || ct == "application/octet-stream":
		body := ctx.Request.Body()
		if len(body) > a.maxBodyBytes {
			return nil, 413, fmt.Sprintf("image larger than %d bytes", a.maxBodyBytes)
		}
		return body, 0, ""
	}
	return nil, 415, `send multipart/form-data with a "file" field, or the image itself with an image/* content type`
}

// failErr answers err, adding Retry-After for overload.
func (a *api) failErr(ctx *fasthttp.RequestCtx, err error) {
	status, msg, reason := errStatus(err)
	if status == 500 {
		a.log.Error("inference failed", "error", err)
	}
	var qf *batching.QueueFullError
	if errors.As(err, &qf) {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds(qf.RetryAfter)))
	}
	if status == 503 || errors.Is(err, errDecodeBusy) {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	a.failReason(ctx, status, msg, reason)
}

// retryAfterSeconds rounds the batcher's estimate up to whole seconds, at
// least 1.
func retryAfterSeconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }

// fail answers with a JSON error and counts the rejection by a reason
// derived from the status.
func (a *api) fail(ctx *fasthttp.RequestCtx, status int, msg string) {
	reasons := map[int]string{400: "bad_request", 404: "not_found", 405: "method_not_allowed",
		413: "body_too_large", 415: "unsupported_format", 503: "unavailable"}
	a.failReason(ctx, status, msg, reasons[status])
}

func (a *api) failReason(ctx *fasthttp.RequestCtx, status int, msg, reason string) {
	if reason != "" {
		a.metrics.rejected(reason)
	}
	jsonReply(ctx, status, map[string]string{"error": msg})
}

func jsonReply(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = 500, []byte(`{"error":"cannot encode response"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// softmax returns probabilities from logits, in float64.
func softmax(logits []float32) []float64 {
	m := float32(math.Inf(-1))
	for _, v := range logits {
		m = max(m, v)
	}
	out := make([]float64, len(logits))
	var sum float64
	for i, v := range logits {
		out[i] = math.Exp(float64(v - m))
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}

// topIndices returns the indices of the k largest values, largest first;
// ties keep index order. It keeps a sorted list of the best k seen, which for
// the usual small k costs far less than sorting everything (a full stable
// sort was half the CPU of a cached request).
func topIndices[T float32 | float64](vs []T, k int) []int {
	k = min(k, len(vs))
	top := make([]int, 0, k)
	for i, v := range vs {
		if len(top) == k && v <= vs[top[k-1]] {
			continue
		}
		// Insert after every kept value >= v, so equal values stay in
		// index order.
		pos := len(top)
		for pos > 0 && vs[top[pos-1]] < v {
			pos--
		}
		if len(top) < k {
			top = append(top, 0)
		}
		copy(top[pos+1:], top[pos:len(top)-1])
		top[pos] = i
	}
	return top
}

// errorHandler answers requests fasthttp could not parse, in JSON.
func (a *api) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		a.fail(ctx, 413, fmt.Sprintf("request body larger than %d bytes", a.maxBodyBytes))
		return
	}
	a.fail(ctx, 400, "malformed HTTP request")
}

// fasthttpLogger sends fasthttp's own messages to slog.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp", "message", fmt.Sprintf(format, args...))
}
