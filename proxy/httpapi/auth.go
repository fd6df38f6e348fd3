package httpapi

import (
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
}

const unauthorized = "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>"

// authorize checks the request's API key for route's scope (docs/auth.md)
// and reports whether it may go on, with the key's id ("" without Auth, on
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
	d := s.cfg.Auth.Check(ctx.Request.Header.Peek("Authorization"), ctx.Request.Header.Peek("X-API-Key"), scope, !beforeBody)
	if d.Allowed() {
		return d.KeyID, true
	}
	ae := &apiError{status: d.Status, reason: authReasons[d.Reason]}
	switch d.Status {
	case 403:
		ae.msg = fmt.Sprintf("API key %q does not have the %q scope this route needs", d.KeyID, scope)
	case 429:
		secs := retryAfterSeconds(d.RetryAfter)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
		ae.msg = fmt.Sprintf("API key %q is over its rate limit: retry after %d s", d.KeyID, secs)
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
