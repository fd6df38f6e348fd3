package versions

import (
	"context"
	"fmt"
	"time"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/modelstats"
	"github.com/batchgate/batchgate/proxy/oip"
	"github.com/batchgate/batchgate/proxy/rtconn"
)

// This file records Triton's statistics extension (proxy/modelstats) for
// each version and answers it. A version's Recorder is written by its
// Routed.Done (requests), its versionClassifier (cache lookups and
// preprocessing), its infer (each image computed) and its statsRunner (each
// run of the model); the front ends read it through Statistics. It lives
// and goes with the version: a reload that keeps a version keeps its
// statistics.

// Statistics returns the statistics of model name's versions, of every
// model's with name "", or of version ver only when not "" (in each model
// asked for). An unknown model or version is a *httpapi.NotFoundError.
// Without a routing file the one model is named by its runtime's handshake
// (before the first, a name asked for is classify.ErrUnavailable, and ""
// lists nothing) and its one version is OIP's "1".
func (r *Router) Statistics(name, ver string) ([]modelstats.ModelStats, error) {
	t := r.table.Load()
	if !r.Declared() {
		v := t.models[0].versions[0]
		info, known := v.conn.LastInfo()
		switch {
		case !known && name == "":
			return []modelstats.ModelStats{}, nil
		case !known:
			return nil, classify.ErrUnavailable
		case name != "" && name != info.Model:
			return nil, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown model %.100q; this server serves %q", name, info.Model)}
		case ver != "" && ver != oip.Version:
			return nil, &httpapi.NotFoundError{Msg: fmt.Sprintf("unknown model version %.20q; this server serves version %s", ver, oip.Version)}
		}
		return []modelstats.ModelStats{v.stats.Snapshot(info.Model, oip.Version)}, nil
	}
	models := t.models
	if name != "" {
		m, err := t.model(name)
		if err != nil {
			return nil, err
		}
		models = []*model{m}
	}
	out := []modelstats.ModelStats{}
	for _, m := range models {
		vs := m.versions
		if ver != "" {
			v, err := m.pick(ver, httpapi.RouteKeys{}) // explicit: that version, or NotFound
			if err != nil {
				return nil, err
			}
			vs = []*version{v}
		}
		for _, v := range vs {
			out = append(out, v.stats.Snapshot(m.spec.Name, v.name))
		}
	}
	return out, nil
}

// recordOutcome counts a classification's outcome in rec: a cache hit
// (took: the lookup), or, when the cache was read (looked), a miss; and the
// preprocessing of an image computed here (not one coalesced with another
// request's).
func recordOutcome(rec *modelstats.Recorder, out *classify.Outcome, looked bool, took time.Duration) {
	switch {
	case out.Cached:
		rec.CacheHit(took)
		return
	case looked:
		rec.CacheMiss()
	}
	if out.Inference != nil {
		rec.Prepared(out.Prep)
	}
}

// statsRunner is a version's batching.Runner: the runtime's, each of whose
// runs of the model it counts in the version's statistics.
type statsRunner struct {
	runner batching.Runner[*rtconn.Item, *rtconn.Result]
	stats  *modelstats.Recorder
}

// statsRunner wraps runner to count v's runs of the model.
func (v *version) statsRunner(runner batching.Runner[*rtconn.Item, *rtconn.Result]) statsRunner {
	return statsRunner{runner: runner, stats: &v.stats}
}

// RunBatch implements batching.Runner. A batch may take several calls to
// the runtime (rtconn cuts it to the runtime's max batch size): each is a
// run of the model.
func (s statsRunner) RunBatch(ctx context.Context, items []*rtconn.Item, results []batching.Result[*rtconn.Result]) error {
	if err := s.runner.RunBatch(ctx, items, results); err != nil {
		return err
	}
	end := time.Now()
	eachRun(results, func(size int, exec, transfer time.Duration) { s.stats.Executed(size, exec, transfer, end) })
	return nil
}

// eachRun calls f with the size, the runtime's time and the rest of the
// call (rtconn.Result's Exec and Transfer) of each successful run of the
// model in a batch's results: rtconn gives each item of a run the run's,
// its runs in order. A run whose items all failed is not seen; one with
// some failed items is (as its size).
func eachRun(results []batching.Result[*rtconn.Result], f func(size int, exec, transfer time.Duration)) {
	var run rtconn.Result // the run being read: its BatchSize, Exec and Transfer
	seen := 0
	for _, res := range results {
		v := res.Value
		if res.Err != nil || v == nil {
			continue
		}
		if seen > 0 && seen < run.BatchSize && v.BatchSize == run.BatchSize && v.Exec == run.Exec && v.Transfer == run.Transfer {
			seen++
			continue
		}
		if seen > 0 {
			f(run.BatchSize, run.Exec, run.Transfer)
		}
		run.BatchSize, run.Exec, run.Transfer, seen = v.BatchSize, v.Exec, v.Transfer, 1
	}
	if seen > 0 {
		f(run.BatchSize, run.Exec, run.Transfer)
	}
}
