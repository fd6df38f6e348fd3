package httpapi

import (
	"bytes"
	"io"
	"math"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/topk"
)

type prediction struct {
	Label       string  `json:"label"`
	ClassID     int     `json:"class_id"`
	Probability float64 `json:"probability"`
}

// predict serves the drop-in endpoint: a multipart "file" or an image body.
// Everything that can be checked from the headers is, before the body is
// read.
func (s *Server) predict(ctx *fasthttp.RequestCtx) reply {
	begin := time.Now()
	info, ok := s.cfg.Router.LastModel("", "")
	if !ok {
		s.failErr(ctx, classify.ErrUnavailable)
		return reply{}
	}
	args := ctx.QueryArgs()
	k, ae := parseTopK(args.Peek("top_k"), args.Has("top_k"), info.Classes)
	if ae != nil {
		s.fail(ctx, ae)
		return reply{}
	}
	rctx, cancel, ae := s.deadline(ctx)
	if ae != nil {
		s.fail(ctx, ae)
		return reply{}
	}
	defer cancel()
	noCache := bytes.Contains(bytes.ToLower(ctx.Request.Header.Peek("Cache-Control")), []byte("no-cache"))
	contentType := ctx.Request.Header.ContentType()
	limit := s.cfg.MaxBodyBytes
	if bytes.HasPrefix(contentType, []byte("multipart/")) {
		limit += multipartSlack
	}
	readStart := time.Now()
	data, lease, ae := s.readBody(rctx, ctx, limit, 1, func(r io.Reader, n int, buf []byte) ([]byte, *apiError) {
		return readImage(contentType, r, n, s.cfg.MaxBodyBytes, buf)
	})
	read := time.Since(readStart)
	if ae != nil {
		s.failErr(ctx, ae)
		return reply{}
	}
	defer lease.Release()
	release, ae := s.chargeImages(ctx, 1) // the key's images in flight
	if ae != nil {
		s.fail(ctx, ae)
		return reply{}
	}
	defer release()
	var version string // one runtime: nothing to choose
	if s.cfg.Router.Declared() {
		version = string(ctx.Request.Header.Peek("X-Model-Version"))
	}
	rt, err := s.cfg.Router.Route("", version, routeKeys(ctx, data))
	if err != nil {
		s.failErr(ctx, err)
		return reply{}
	}
	rep := reply{version: rt.Version, done: rt.Done}
	lease.Retain() // the classifier's, released once the image is decoded
	out, err := rt.Classifier.Classify(rctx, data, lease, noCache)
	if err != nil {
		s.failErr(ctx, err)
		return rep
	}
	probs := softmax(out.Scores)
	preds := []prediction{}
	for _, i := range topk.Indices(probs, k) {
		preds = append(preds, prediction{Label: out.Model.Labels[i], ClassID: i, Probability: probs[i]})
	}
	resp := map[string]any{
		"model":        out.Model.Model,
		"model_sha256": out.Model.ModelSHA256,
		"predictions":  preds,
		"cached":       out.Cached,
		"coalesced":    out.Coalesced,
	}
	if v := out.Model.Variant; v != "" {
		resp["model_variant"] = v
	}
	if rep.version != "" {
		resp["model_version"] = rep.version
	}
	rep.cached, rep.coalesced, rep.model = out.Cached, out.Coalesced, out.Model.Model
	if inf := out.Inference; inf != nil {
		rep.batchSize, rep.queueWait = inf.BatchSize, inf.QueueWait
	}
	if out.Model.Generated {
		resp["generated_weights"] = true
		resp["warning"] = "the model has generated pseudo-random weights: these predictions are meaningless"
	}
	resp["timings"] = timings(out, read, time.Since(begin))
	jsonReply(ctx, 200, resp)
	return rep
}

// timings is where a /predict answer's server time went, in ms: reading
// the body (read_ms), decoding and resizing (preprocess_ms), the batcher's
// queue (queue_ms), the runtime call less the model (transfer_ms: the
// tensors over the socket, the runtime's checks, the scores back), the
// model's execution (inference_ms), and the rest (other_ms: routing, the
// wait for a decode slot, handing the result back, top-k, the answer's
// map). They add up to server_ms, the handler's time until the answer is
// encoded. An answer from the cache, or coalesced with an identical image
// in flight, did no inference of its own: read_ms, other_ms and server_ms
// only.
func timings(out *classify.Outcome, read, server time.Duration) map[string]float64 {
	t := map[string]float64{"read_ms": ms(read), "server_ms": ms(server)}
	other := server - read
	if inf := out.Inference; inf != nil {
		t["preprocess_ms"] = ms(out.Prep)
		t["queue_ms"] = ms(inf.QueueWait)
		t["transfer_ms"] = ms(inf.Transfer)
		t["inference_ms"] = ms(inf.Exec)
		t["batch_size"] = float64(inf.BatchSize)
		other -= out.Prep + inf.QueueWait + inf.Transfer + inf.Exec
	}
	// The parts are measured on their own clocks; rounding and the
	// runtime's clock can leave other a few microseconds below zero.
	t["other_ms"] = ms(max(other, 0))
	return t
}

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
