package oipgrpc

import (
	"context"

	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/modelstats"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
)

// ModelStatistics is GET /v2/models[/{name}[/versions/{v}]]/stats:
// Triton's statistics extension, from the router's versions
// (httpapi.StatsRouter; docs/api.md, "Statistics"). Its API key scope is
// model metadata's (methodScopes, checked by observe). An empty name asks
// for every model; an unknown model or version is NOT_FOUND.
func (s *Server) ModelStatistics(ctx context.Context, req *pb.ModelStatisticsRequest) (*pb.ModelStatisticsResponse, error) {
	sr, ok := s.cfg.Router.(httpapi.StatsRouter)
	if !ok {
		return s.UnimplementedGRPCInferenceServiceServer.ModelStatistics(ctx, req)
	}
	st, err := sr.Statistics(req.Name, req.Version)
	if err != nil {
		return nil, s.fail(ctx, callOf(ctx), err)
	}
	out := &pb.ModelStatisticsResponse{ModelStats: make([]*pb.ModelStatistics, len(st))}
	for i := range st {
		out.ModelStats[i] = statsMessage(&st[i])
	}
	return out, nil
}

// statsMessage is one version's statistics as a ModelStatistics message.
func statsMessage(m *modelstats.ModelStats) *pb.ModelStatistics {
	is := &m.InferenceStats
	out := &pb.ModelStatistics{Name: m.Name, Version: m.Version, LastInference: m.LastInference,
		InferenceCount: m.InferenceCount, ExecutionCount: m.ExecutionCount,
		InferenceStats: &pb.InferStatistics{Success: duration(is.Success), Fail: duration(is.Fail),
			Queue: duration(is.Queue), ComputeInput: duration(is.ComputeInput), ComputeInfer: duration(is.ComputeInfer),
			ComputeOutput: duration(is.ComputeOutput), CacheHit: duration(is.CacheHit), CacheMiss: duration(is.CacheMiss)},
		BatchStats: make([]*pb.InferBatchStatistics, len(m.BatchStats))}
	for i, b := range m.BatchStats {
		out.BatchStats[i] = &pb.InferBatchStatistics{BatchSize: b.BatchSize, ComputeInput: duration(b.ComputeInput),
			ComputeInfer: duration(b.ComputeInfer), ComputeOutput: duration(b.ComputeOutput)}
	}
	return out
}

func duration(d modelstats.Duration) *pb.StatisticDuration {
	return &pb.StatisticDuration{Count: d.Count, Ns: d.NS}
}
