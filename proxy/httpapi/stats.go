package httpapi

import (
	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/proxy/modelstats"
)

// StatsRouter is a Router that answers Triton's statistics extension
// (proxy/versions' Router, whose versions record them). It is apart from
// Router so that a Router without statistics still serves everything else;
// the gRPC front end (proxy/oipgrpc's ModelStatistics) answers from it too.
type StatsRouter interface {
	// Statistics returns the statistics of model name's versions (name
	// "": every model's), or of its version version if not "". An unknown
	// model or version is a *NotFoundError.
	Statistics(name, version string) ([]modelstats.ModelStats, error)
}

// statsRoute is the route the statistics are counted and authorized
// under: routeOf names every other /v2/models/ path as model metadata,
// whose scope they need.
const statsRoute = "/v2/models/metadata"

// modelStats serves GET /v2/models/stats, /v2/models/{name}/stats and
// /v2/models/{name}/versions/{version}/stats: Triton's statistics
// extension, {"model_stats":[...]} (docs/api.md, "Statistics").
func (s *Server) modelStats(ctx *fasthttp.RequestCtx, name, version string) (string, reply) {
	sr, ok := s.cfg.Router.(StatsRouter)
	if !ok {
		s.fail(ctx, &apiError{404, "this server keeps no statistics", "not_found"})
		return statsRoute, reply{}
	}
	st, err := sr.Statistics(name, version)
	if err != nil {
		s.failErr(ctx, err)
		return statsRoute, reply{}
	}
	jsonReply(ctx, 200, struct {
		ModelStats []modelstats.ModelStats `json:"model_stats"`
	}{st})
	return statsRoute, reply{}
}
