package httpapi

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/proxy/auth"
)

// routeScopes maps the routes that need an API key to the scope they need.
// Every other route is exempt: health, readiness, docs, /metrics, and
// unknown routes, which answer their 404 whoever asks.
var routeScopes = map[string]auth.Scope{
	"/predict":            auth.Predict,
	"/v2/models/infer":    auth.Predict,
	"/v2":                 auth.Metadata,
	"/v2/models/metadata": auth.Metadata,
	"/v2/models/ready":    auth.Metadata,
}

// authReasons maps auth's reasons to inference_rejections_total's.
var authReasons = map[string]string{
	auth.ReasonMissing: "auth_missing", auth.ReasonMalformed: "auth_invalid", auth.ReasonUnknown: "auth_invalid",
	auth.ReasonSecret: "auth_invalid", auth.ReasonScope: "auth_scope", auth.ReasonRate: "auth_rate",
	auth.ReasonConcurrency: "auth_concurrency",
}

const unauthorized = "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>"

// authorize checks the request's API key for route's scope, and for the
// versions scope when it chooses a model version (explicitVersion), as
// docs/auth.md says, and reports whether it may go on, with the key's id ("" without Auth, on
// an exempt route, or for a key that did not authenticate). A refused
// request is answered here: 401, 403 or 429 in JSON. The presented key is
// never echoed or logged, only its id once verified.
//
// beforeBody is true on "Expect: 100-continue", before the client sends
// the body: the key and scope are checked but no token is taken (the
// handler runs again, with beforeBody false, once the body comes), and a
// refusal, after which the handler does not run, is counted and logged
// here. Otherwise a refused request's unread body is skipped, so the client
// reads the answer rather than a reset, and its connection closes.
func (s *Server) authorize(ctx *fasthttp.RequestCtx, route string, beforeBody bool) (keyID string, ok bool) {
	if s.cfg.Auth == nil {
		return "", true
	}
	scope, need := routeScopes[route]
	if !need {
		return "", true
	}
	scopes := [2]auth.Scope{scope}
	want := scopes[:1]
	if s.explicitVersion(ctx, route) {
		want = append(want, auth.Versions)
	}
	d := s.cfg.Auth.CheckAll(ctx.Request.Header.Peek("Authorization"), ctx.Request.Header.Peek("X-API-Key"), want, !beforeBody)
	if d.Allowed() {
		return d.KeyID, true
	}
	ae := &apiError{status: d.Status, reason: authReasons[d.Reason]}
	switch d.Status {
	case 403:
		if d.Scope == auth.Versions {
			ae.msg = fmt.Sprintf("API key %q does not have the %q scope needed to choose a model version "+
				"(X-Model-Version or /versions/{version}): leave the version out to be routed by the routing file's weights, "+
				"or ask for a key with that scope", d.KeyID, auth.Versions)
		} else {
			ae.msg = fmt.Sprintf("API key %q does not have the %q scope this route needs", d.KeyID, d.Scope)
		}
	case 429:
		limitError(ctx, ae, d)
	default:
		ae.status, ae.msg = 401, unauthorized
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="batchgate"`)
	}
	s.fail(ctx, ae)
	if beforeBody {
		// The handler will not run: count and log the refusal here.
		s.cfg.Metrics.Request(route, ae.status, 0)
		s.cfg.Log.Info("request refused before its body", "method", string(ctx.Method()), "route", route,
			"status", ae.status, "auth", d.Reason, "key_id", d.KeyID, "remote", ctx.RemoteIP().String())
		return d.KeyID, false
	}
	if n := ctx.Request.Header.ContentLength(); n > 0 || n == -1 {
		skipBody(ctx, n)
		ctx.SetConnectionClose()
	}
	return d.KeyID, false
}

// explicitVersion reports whether a request on route chooses its model
// version: /predict with X-Model-Version, or OIP infer on
// /v2/models/{name}/versions/{version}/infer. Only with a routing file:
// without one there is one version, and naming it chooses nothing.
func (s *Server) explicitVersion(ctx *fasthttp.RequestCtx, route string) bool {
	if !s.cfg.Router.Declared() {
		return false
	}
	switch route {
	case "/predict":
		return len(ctx.Request.Header.Peek("X-Model-Version")) > 0
	case "/v2/models/infer":
		rest, ok := bytes.CutPrefix(ctx.Path(), []byte("/v2/models/"))
		if !ok {
			return false
		}
		_, rest, ok = bytes.Cut(rest, []byte("/")) // past the model's name
		rest, ok2 := bytes.CutPrefix(rest, []byte("versions/"))
		return ok && ok2 && len(rest) > 0 && rest[0] != '/'
	}
	return false
}

// limitError words a 429 of a key's limits on ae and sets Retry-After when
// waiting helps; a request over what the key may ever send at once gets
// none, and a message saying how to split it.
func limitError(ctx *fasthttp.RequestCtx, ae *apiError, d auth.Decision) {
	unit := "images per request"
	if d.Reason == auth.ReasonConcurrency {
		unit = "images in flight"
	}
	switch {
	case d.Limit > 0:
		ae.msg = fmt.Sprintf("API key %q may have at most %d %s: send this request's images in requests of at most %d", d.KeyID, d.Limit, unit, d.Limit)
	case d.Reason == auth.ReasonConcurrency:
		secs := retryAfterSeconds(d.RetryAfter)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
		ae.msg = fmt.Sprintf("API key %q has its limit of images in flight: retry after %d s, or once its other requests are answered", d.KeyID, secs)
	default:
		secs := retryAfterSeconds(d.RetryAfter)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
		ae.msg = fmt.Sprintf("API key %q is over its rate limit: retry after %d s", d.KeyID, secs)
	}
}

// chargeImages charges a request's n images to its API key, once its body
// says how many it carries: they count against the key's rate (Check took
// the first image's token from the headers: auth.TakeImages takes the
// rest) and are held against its max_concurrent_images until release,
// which the caller defers. Refused, ae is a 429 (Retry-After set on ctx)
// for the caller to answer. Without Auth, or without a verified key, it
// does nothing.
func (s *Server) chargeImages(ctx *fasthttp.RequestCtx, n int) (release func(), ae *apiError) {
	keyID, _ := ctx.UserValue(keyIDKey{}).(string)
	if s.cfg.Auth == nil || keyID == "" {
		return func() {}, nil
	}
	release, d := s.cfg.Auth.AcquireImages(keyID, n)
	if d.Allowed() {
		if d = s.cfg.Auth.TakeImages(keyID, n); !d.Allowed() {
			release()
		}
	}
	if d.Allowed() {
		return release, nil
	}
	ae = &apiError{status: 429, reason: authReasons[d.Reason]}
	limitError(ctx, ae, d)
	return func() {}, ae
}
