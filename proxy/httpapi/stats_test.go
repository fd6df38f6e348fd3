package httpapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/modelstats"
)

// statsRouter adds statistics to a test Router: each version's are its
// name and version with counts that show in the JSON, and it notes what it
// was asked.
type statsRouter struct {
	Router
	versions []string // the versions of testInfo.Model
	mu       sync.Mutex
	asked    []string
}

func (r *statsRouter) Statistics(name, version string) ([]modelstats.ModelStats, error) {
	r.mu.Lock()
	r.asked = append(r.asked, name+"@"+version)
	r.mu.Unlock()
	if name != "" && name != testInfo.Model {
		return nil, &NotFoundError{Msg: fmt.Sprintf("unknown model %q", name)}
	}
	var out []modelstats.ModelStats
	for _, v := range r.versions {
		if version != "" && v != version {
			continue
		}
		out = append(out, modelstats.ModelStats{Name: testInfo.Model, Version: v, LastInference: 1_700_000_000_123,
			InferenceCount: 12, ExecutionCount: 3,
			InferenceStats: modelstats.InferStats{Success: modelstats.Duration{Count: 4, NS: 9_007_199_254_740_993}},
			BatchStats:     []modelstats.BatchStats{{BatchSize: 4, ComputeInfer: modelstats.Duration{Count: 3, NS: 600}}}})
	}
	if out == nil {
		return nil, &NotFoundError{Msg: fmt.Sprintf("unknown version %q", version)}
	}
	return out, nil
}

func (r *statsRouter) lastAsked() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.asked) == 0 {
		return ""
	}
	return r.asked[len(r.asked)-1]
}

// The three statistics routes ask the router for every model, one model,
// or one version, and answer Triton's JSON; unknown models and versions
// are 404 in JSON, with a routing file or without (version "1" only).
func TestStatsRoutes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		declared bool
		path     string
		status   int
		asked    string // the router's arguments; "" not asked
		versions string // the versions answered
	}{
		{"every model", true, "/v2/models/stats", 200, "@", "v1,v2"},
		{"one model", true, "/v2/models/resnet50/stats", 200, "resnet50@", "v1,v2"},
		{"one version", true, "/v2/models/resnet50/versions/v2/stats", 200, "resnet50@v2", "v2"},
		{"unknown model", true, "/v2/models/nope/stats", 404, "nope@", ""},
		{"unknown version", true, "/v2/models/resnet50/versions/v9/stats", 404, "resnet50@v9", ""},
		{"empty version", true, "/v2/models/resnet50/versions//stats", 404, "", ""},
		{"one runtime", false, "/v2/models/resnet50/stats", 200, "resnet50@", "1"},
		{"one runtime, its version", false, "/v2/models/resnet50/versions/1/stats", 200, "resnet50@", "1"},
		{"one runtime, another version", false, "/v2/models/resnet50/versions/2/stats", 404, "", ""},
		{"one runtime, every model", false, "/v2/models/stats", 200, "@", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sr *statsRouter
			ts := startServer(t, func(c *Config) {
				sr = &statsRouter{Router: c.Router, versions: []string{"1"}}
				if tc.declared {
					sr.Router, sr.versions = fakeRouter{c.Router.(oneRuntime).cls}, []string{"v1", "v2"}
				}
				c.Router = sr
			})
			r := ts.do(t, ts.get(tc.path))
			if r.status != tc.status || sr.lastAsked() != tc.asked {
				t.Fatalf("GET %s = %d %s, asked %q; want %d, asked %q", tc.path, r.status, r.raw, sr.lastAsked(), tc.status, tc.asked)
			}
			if tc.status != 200 {
				if r.jsonError() == "" {
					t.Errorf("GET %s: no JSON error: %s", tc.path, r.raw)
				}
				return
			}
			var got struct {
				ModelStats []struct{ Version string } `json:"model_stats"`
			}
			if err := json.Unmarshal(r.raw, &got); err != nil {
				t.Fatal(err)
			}
			var versions []string
			for _, m := range got.ModelStats {
				versions = append(versions, m.Version)
			}
			if strings.Join(versions, ",") != tc.versions {
				t.Errorf("versions %v, want %s", versions, tc.versions)
			}
			// Numbers as JSON numbers, exact past 2^53.
			for _, want := range []string{`"last_inference":1700000000123`, `"inference_count":12`, `"execution_count":3`,
				`"success":{"count":4,"ns":9007199254740993}`, `"batch_stats":[{"batch_size":4,`,
				`"compute_infer":{"count":3,"ns":600}`, `"cache_miss":{"count":0,"ns":0}`, `"name":"resnet50"`} {
				if !strings.Contains(string(r.raw), want) {
					t.Errorf("answer lacks %s: %s", want, r.raw)
				}
			}
		})
	}
}

// A Router without statistics answers 404 in JSON.
func TestStatsWithoutRouter(t *testing.T) {
	ts := startServer(t, nil)
	if r := ts.do(t, ts.get("/v2/models/stats")); r.status != 404 || r.jsonError() == "" {
		t.Errorf("GET /v2/models/stats = %d %s, want 404 in JSON", r.status, r.raw)
	}
}

// The statistics need the metadata scope, as model metadata does.
func TestStatsScope(t *testing.T) {
	ts, keys, _ := startKeyServer(t, []auth.Key{
		{ID: "meta", Scopes: []auth.Scope{auth.Metadata}},
		{ID: "predict", Scopes: []auth.Scope{auth.Predict}},
	}, func(c *Config) { c.Router = &statsRouter{Router: c.Router, versions: []string{"1"}} })
	for _, tc := range []struct {
		key    string
		status int
	}{{"", 401}, {"predict", 403}, {"meta", 200}} {
		req := ts.get("/v2/models/resnet50/stats")
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+keys[tc.key])
		}
		if r := ts.do(t, req); r.status != tc.status {
			t.Errorf("key %q: %d %s, want %d", tc.key, r.status, r.raw, tc.status)
		}
	}
}
