package httpapi

import (
	"fmt"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/oip"
	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/runtime/wire"
)

// Router routes requests over model versions (proxy/versions'): those of a
// routing file (docs/versions.md), or one runtime's one model and version.
type Router interface {
	// Declared reports whether the models and versions come from a
	// routing file. False: one runtime, whose model is answered under
	// the name its handshake gives and whose one version is OIP's "1",
	// named in no answer: the API of a server of one model.
	Declared() bool
	// LastModel returns the latest handshake of model name ("": the
	// default model): of its version version, or with version "" of
	// any of its versions, a ready one first.
	LastModel(name, version string) (wire.Info, bool)
	// Route picks a version of model name ("": the default model):
	// version if not "" (a *NotFoundError if the model has none of that
	// name), else by the model's policy, with keys for a sticky
	// assignment. The caller must call Routed.Done exactly once.
	Route(name, version string, keys RouteKeys) (*Routed, error)
	// Versions describes model name's versions (nil, false: no such
	// model).
	Versions(name string) ([]VersionStatus, bool)
}

// RouteKeys give Route the request's sticky keys. They are read during the
// call only.
type RouteKeys struct {
	Header func(name string) []byte
	Body   []byte
}

// Routed is a request's version.
type Routed struct {
	Version    string
	Classifier Classifier
	// Done records the request's status and latency in the version's
	// metrics and lets a retired version close once its requests are
	// done.
	Done func(status int, took time.Duration)
}

// VersionStatus is one version in /v2/models/{name}.
type VersionStatus struct {
	Name        string  `json:"name"`
	Ready       bool    `json:"ready"`
	Weight      float64 `json:"weight"`
	RolledBack  bool    `json:"rolled_back,omitempty"`
	Shadow      bool    `json:"shadow,omitempty"`
	Variant     string  `json:"variant,omitempty"`
	ModelSHA256 string  `json:"model_sha256,omitempty"`
}

// NotFoundError is an unknown model or version: 404 with its message.
type NotFoundError struct{ Msg string }

func (e *NotFoundError) Error() string { return e.Msg }

// routeKeys reads the sticky keys of a request. The header function is
// used only during Route, while the handler runs.
func routeKeys(ctx *fasthttp.RequestCtx, body []byte) RouteKeys {
	return RouteKeys{Header: func(name string) []byte { return ctx.Request.Header.Peek(name) }, Body: body}
}

// v2Routed serves /v2/models/{name}[/versions/{version}][/action] with a
// routing file: metadata lists the versions and their readiness, ready
// answers for the model (a ready version with a weight) or the version,
// infer goes to the version asked for or the one the policy picks.
func (s *Server) v2Routed(ctx *fasthttp.RequestCtx, name, version, action string) (string, reply) {
	statuses, ready, err := ModelVersions(s.cfg.Router, name, version)
	if err != nil {
		s.failErr(ctx, err)
		return "/v2/other", reply{}
	}
	ready = ready && !s.draining.Load()
	switch action {
	case "":
		info, ok := s.cfg.Router.LastModel(name, version)
		if !ok {
			s.failErr(ctx, classify.ErrUnavailable)
			return "/v2/models/metadata", reply{}
		}
		md := oip.ModelMetadata(&info)
		md["name"] = name
		names := make([]string, len(statuses))
		for i, st := range statuses {
			names[i] = st.Name
		}
		md["versions"] = names
		if p, ok := md["parameters"].(map[string]any); ok {
			p["versions"] = statuses
			p["ready"] = ready
		}
		jsonReply(ctx, 200, md)
		return "/v2/models/metadata", reply{}
	case "ready":
		status := 200
		if !ready {
			status = 503
		}
		body := map[string]any{"name": name, "ready": ready}
		if version != "" {
			body["version"] = version
		}
		jsonReply(ctx, status, body)
		return "/v2/models/ready", reply{}
	case "infer":
		if !ctx.IsPost() {
			s.fail(ctx, &apiError{405, "use POST", "method_not_allowed"})
			return "/v2/models/infer", reply{}
		}
		if _, ok := s.cfg.Router.LastModel(name, version); !ok {
			s.failErr(ctx, classify.ErrUnavailable)
			return "/v2/models/infer", reply{}
		}
		return "/v2/models/infer", s.infer(ctx, name, version)
	}
	s.fail(ctx, &apiError{404, "no such route; see /docs", "not_found"})
	return "/v2/other", reply{}
}

// ModelVersions describes model name of a routing file, or its version
// version if not "": its versions (the one asked for), and whether it is
// ready (routing.Serving: its ready versions carry enough of its weight),
// or the version is. An unknown model or version is a *NotFoundError. The
// proxy's draining is the caller's. Every front end (REST, gRPC) answers
// metadata and readiness from it.
func ModelVersions(r Router, name, version string) ([]VersionStatus, bool, error) {
	statuses, ok := r.Versions(name)
	if !ok {
		_, err := r.Route(name, "", RouteKeys{}) // the router's "unknown model" message
		if err == nil {
			err = &NotFoundError{Msg: fmt.Sprintf("unknown model %.100q", name)}
		}
		return nil, false, err
	}
	if version != "" {
		var names []string
		var one []VersionStatus
		for _, st := range statuses {
			names = append(names, st.Name)
			if st.Name == version {
				one = []VersionStatus{st}
			}
		}
		if one == nil {
			return nil, false, &NotFoundError{Msg: fmt.Sprintf("unknown version %.64q of model %q; its versions are %s",
				version, name, strings.Join(names, ", "))}
		}
		return one, one[0].Ready, nil // the one version asked for
	}
	var readyWeight, totalWeight float64
	for _, st := range statuses {
		totalWeight += st.Weight
		if st.Ready {
			readyWeight += st.Weight
		}
	}
	return statuses, routing.Serving(readyWeight, totalWeight), nil
}
