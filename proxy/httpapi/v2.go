package httpapi

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/flight"
	"github.com/batchgate/batchgate/proxy/oip"
)

// v2 routes /v2 and /v2/... (the Open Inference Protocol); model paths may
// carry /versions/1.
func (s *Server) v2(ctx *fasthttp.RequestCtx, path string) (string, reply) {
	switch path {
	case "/v2":
		jsonReply(ctx, 200, oip.ServerMetadata(s.cfg.Version))
		return path, reply{}
	case "/v2/health/live":
		jsonReply(ctx, 200, map[string]bool{"live": true})
		return path, reply{}
	case "/v2/health/ready":
		s.readiness(ctx, map[string]any{})
		return path, reply{}
	}
	rest, ok := strings.CutPrefix(path, "/v2/models/")
	if !ok {
		s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
		return "/v2/other", reply{}
	}
	if rest == "stats" { // every model's statistics (stats.go)
		return s.modelStats(ctx, "", "")
	}
	parts := strings.Split(rest, "/")
	name, action, version := parts[0], "", ""
	declared := s.cfg.Router.Declared()
	if len(parts) >= 3 && parts[1] == "versions" {
		switch {
		case declared && parts[2] == "":
			s.fail(ctx, &apiError{404, "empty model version", "not_found"})
			return "/v2/other", reply{}
		case declared:
			version = parts[2] // checked by the router
		case parts[2] != oip.Version: // one runtime: its one version
			s.fail(ctx, &apiError{404, fmt.Sprintf("unknown model version %.20q; this server serves version %s", parts[2], oip.Version), "not_found"})
			return "/v2/other", reply{}
		}
		parts = append(parts[:1], parts[3:]...)
	}
	switch {
	case len(parts) == 2:
		action = parts[1]
	case len(parts) > 2:
		s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
		return "/v2/other", reply{}
	}
	if action == "stats" && name != "" { // the version was checked above
		return s.modelStats(ctx, name, version)
	}
	if declared {
		return s.v2Routed(ctx, name, version, action)
	}
	// One runtime: its model is named by its handshake.
	info, ok := s.cfg.Router.LastModel("", "")
	if !ok {
		s.failErr(ctx, classify.ErrUnavailable)
		return "/v2/models/metadata", reply{}
	}
	if name != info.Model {
		s.fail(ctx, &apiError{404, fmt.Sprintf("unknown model %.100q; this server serves %q", name, info.Model), "not_found"})
		return "/v2/other", reply{}
	}
	switch action {
	case "":
		jsonReply(ctx, 200, oip.ModelMetadata(&info))
		return "/v2/models/metadata", reply{}
	case "ready":
		s.readiness(ctx, map[string]any{"name": info.Model})
		return "/v2/models/ready", reply{}
	case "infer":
		if !ctx.IsPost() {
			s.fail(ctx, &apiError{405, "use POST", "method_not_allowed"})
		} else {
			return "/v2/models/infer", s.infer(ctx, "", "")
		}
		return "/v2/models/infer", reply{}
	}
	s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
	return "/v2/other", reply{}
}

// infer serves POST /v2/models/{name}/infer. The images of one request run
// concurrently (they meet in the batcher); the first failure cancels the
// others.
func (s *Server) infer(ctx *fasthttp.RequestCtx, name, version string) (rep reply) {
	rctx, cancel, ae := s.deadline(ctx)
	if ae != nil {
		s.fail(ctx, ae)
		return
	}
	defer cancel()
	headerLength := ctx.Request.Header.Peek("Inference-Header-Content-Length")
	// The body, and what parsing it allocates: at most twice a JSON body
	// (numbers and base64 decoded), once a binary one (its FP32 copied;
	// BYTES point into the body), plus 64 KiB (proxy/oip).
	factor := int64(3)
	if headerLength != nil {
		factor = 2
	}
	body, lease, ae := s.readBody(rctx, ctx, s.cfg.MaxBodyBytes, factor, func(r io.Reader, n int, buf []byte) ([]byte, *apiError) {
		b, err := readFull(r, n, buf)
		if err != nil {
			return nil, badRequest("cannot read the request body: %v", err)
		}
		return b, nil
	})
	if ae != nil {
		s.failErr(ctx, ae)
		return
	}
	defer lease.Release()
	rt, err := s.cfg.Router.Route(name, version, routeKeys(ctx, body))
	if err != nil {
		s.failErr(ctx, err)
		return
	}
	cls := rt.Classifier
	rep.version, rep.done = rt.Version, rt.Done
	info, ok := cls.LastModel()
	if !ok {
		s.failErr(ctx, classify.ErrUnavailable)
		return
	}
	req, err := oip.ParseInfer(body, headerLength, &info, oip.Limits{MaxElements: s.cfg.MaxElements})
	if err != nil {
		s.failErr(ctx, err)
		return
	}
	release, ae := s.chargeImages(ctx, req.N()) // the key's limits count images
	if ae != nil {
		s.fail(ctx, ae)
		return
	}
	defer release()
	scores, err := InferAll(rctx, cls, req, lease)
	if err != nil {
		s.failErr(ctx, err)
		return
	}
	ver := oip.Version
	if rep.version != "" {
		ver = rep.version
	}
	b, err := oip.InferResponseAt(&info, ver, req, scores)
	if err != nil {
		s.failErr(ctx, err)
		return
	}
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	rep.model = info.Model
	return rep
}

// InferAll runs the images of req on cls concurrently (they meet in the
// batcher), the first failure cancelling the others, and returns each
// image's scores. Each encoded image takes one reference of lease (nil:
// the bytes are not budgeted). An image cancelled once ctx has ended
// fails with ctx's error. Every front end (REST, gRPC) infers through it.
func InferAll(ctx context.Context, cls Classifier, req *oip.Request, lease *budget.Lease) ([][]float32, error) {
	scores := make([][]float32, req.N())
	g, gctx := errgroup.WithContext(ctx)
	for i, img := range req.Images {
		if lease != nil {
			lease.Retain() // one for each image's classification
		}
		g.Go(guard(func() error {
			out, err := cls.Classify(gctx, img, lease, false)
			if err == nil {
				scores[i] = out.Scores
			}
			return err
		}))
	}
	for i, t := range req.Tensors {
		g.Go(guard(func() error {
			out, err := cls.InferTensor(gctx, t)
			if err == nil {
				scores[i] = out.Scores
			}
			return err
		}))
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil && err == context.Canceled {
			err = ctx.Err()
		}
		return nil, err
	}
	return scores, nil
}

// guard turns a panic in f, which runs on an errgroup goroutine out of reach
// of the handler's recover, into a *flight.PanicError.
func guard(f func() error) func() error {
	return func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = &flight.PanicError{Value: p, Stack: debug.Stack()}
			}
		}()
		return f()
	}
}
