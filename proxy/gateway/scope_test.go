package gateway

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/routing"
)

// TestExplicitTrafficAndRollback: a canary whose runtime fails every batch
// gets 40 requests that choose it explicitly (X-Model-Version). By default
// they do not feed its rollback window, so whoever may choose a version
// cannot push a canary into rollback; with count_explicit: true they do,
// and it is rolled back. Traffic the weights send is always judged.
func TestExplicitTrafficAndRollback(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rollback   string
		rolledBack bool
	}{
		{"explicit traffic not counted (default)", "{window: 1m, min_requests: 10, max_error_rate: 0.2}", false},
		{"count_explicit: false", "{window: 1m, min_requests: 10, max_error_rate: 0.2, count_explicit: false}", false},
		{"count_explicit: true", "{window: 1m, min_requests: 10, max_error_rate: 0.2, count_explicit: true}", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			startVersion(t, dir, "v1")
			canary := startVersion(t, dir, "v2")
			tp := routingProxy(t, dir, `
models:
  - name: resnet50
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 50}
      - name: v2
        socket: %s/v2.sock
        weight: 50
        rollback: `+tc.rollback+"\n")
			canary.fail.Store(true)
			for i := range 40 {
				if status, v := predictVersion(t, tp.url, testenv.UniquePNG(7000+i), "X-Model-Version", "v2"); status != 500 || v != "" {
					t.Fatalf("explicit request %d to the failing canary: %d %q, want 500", i, status, v)
				}
			}
			rolled := metricValue(t, tp.metricsURL, `inference_version_rolled_back{model="resnet50",version="v2"}`) == 1
			if rolled != tc.rolledBack {
				t.Fatalf("after 40 failed explicit requests: rolled back %v, want %v", rolled, tc.rolledBack)
			}
			if tc.rolledBack {
				return
			}
			// The weighted traffic still trips it.
			for i := range 200 {
				predictVersion(t, tp.url, testenv.UniquePNG(7100+i))
				if metricValue(t, tp.metricsURL, `inference_version_rolled_back{model="resnet50",version="v2"}`) == 1 {
					return
				}
			}
			t.Error("the failing canary was not rolled back by its weighted traffic")
		})
	}
}

// The rollback section's count_explicit is read and kept.
func TestCountExplicitParsed(t *testing.T) {
	for _, tc := range []struct {
		rollback string
		want     bool
	}{
		{"{max_error_rate: 0.1}", false},
		{"{max_error_rate: 0.1, count_explicit: true}", true},
		{`{"max_error_rate": 0.1, "count_explicit": false}`, false},
	} {
		f, err := routing.Parse([]byte(`
models:
  - name: m
    versions:
      - {name: v1, socket: /s1, weight: 1, rollback: ` + tc.rollback + "}\n"))
		if err != nil {
			t.Fatalf("%s: %v", tc.rollback, err)
		}
		r := f.Models[0].Versions[0].Rollback
		if r.CountExplicit != tc.want || routing.NewWindow(*r).CountsExplicit() != tc.want {
			t.Errorf("%s: count_explicit %v, want %v", tc.rollback, r.CountExplicit, tc.want)
		}
	}
	if _, err := routing.Parse([]byte("models:\n  - name: m\n    versions:\n      - {name: v1, socket: /s1, weight: 1, rollback: {max_error_rate: 0.1, count_explicit: maybe}}\n")); err == nil {
		t.Error("count_explicit: maybe accepted")
	}
}

// TestVersionsScope: with API keys and a routing file, choosing a version
// (X-Model-Version, /versions/{v}/infer) needs the versions scope: a
// predict-only key gets 403 naming it and is still served by weight; a key
// with versions reaches the weight-0 version.
func TestVersionsScope(t *testing.T) {
	dir := t.TempDir()
	startVersion(t, dir, "v1")
	startVersion(t, dir, "v2")
	var entries []auth.Key
	keys := map[string]string{}
	for id, scopes := range map[string][]auth.Scope{
		"plain":   {auth.Predict, auth.Metadata},
		"chooser": {auth.Predict, auth.Metadata, auth.Versions},
	} {
		key, sum, err := auth.GenerateKey(id)
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = key
		entries = append(entries, auth.Key{ID: id, SHA256: sum, Scopes: scopes})
	}
	file := "keys:\n"
	for _, e := range entries {
		file += e.Entry()
	}
	parsed, err := auth.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	tp := routingProxy(t, dir, `
models:
  - name: resnet50
    versions:
      - {name: v1, socket: %s/v1.sock, weight: 1}
      - {name: v2, socket: %s/v2.sock, weight: 0}
`, func(c *Config) { c.Auth = parsed })
	// routingProxy's wait for every version reads metadata without a key.
	waitFor(t, "every version ready", 3000, func() bool {
		req, _ := http.NewRequest("GET", tp.url+"/v2/models/resnet50", nil)
		req.Header.Set("X-API-Key", keys["plain"])
		r := do(t, req)
		return r.status == 200 && !strings.Contains(string(r.raw), `"ready":false`)
	})
	img := testenv.Image(t, "small.png")
	infer := []byte(fmt.Sprintf(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[%q]}]}`,
		base64.StdEncoding.EncodeToString(img)))
	for _, tc := range []struct {
		name, key, path, version string
		status                   int
		served                   string // model_version
	}{
		{"predict by weight", "plain", "/predict", "", 200, "v1"},
		{"predict choosing v2 without the scope", "plain", "/predict", "v2", 403, ""},
		{"predict choosing v2", "chooser", "/predict", "v2", 200, "v2"},
		{"infer by weight", "plain", "/v2/models/resnet50/infer", "", 200, "v1"},
		{"infer choosing v2 without the scope", "plain", "/v2/models/resnet50/versions/v2/infer", "", 403, ""},
		{"infer choosing v2", "chooser", "/v2/models/resnet50/versions/v2/infer", "", 200, "v2"},
	} {
		req := rawReq(tp.url+tc.path, "image/png", img)
		if strings.HasSuffix(tc.path, "/infer") {
			req = rawReq(tp.url+tc.path, "application/json", infer)
		}
		req.Header.Set("X-API-Key", keys[tc.key])
		if tc.version != "" {
			req.Header.Set("X-Model-Version", tc.version)
		}
		r := do(t, req)
		if r.status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, r.status, r.raw, tc.status)
			continue
		}
		if v, _ := r.body["model_version"].(string); tc.status == 200 && v != tc.served {
			t.Errorf("%s: served by %q, want %q", tc.name, v, tc.served)
		}
		if tc.status == 403 && !strings.Contains(string(r.raw), `\"versions\" scope`) {
			t.Errorf("%s: %s; want the versions scope named", tc.name, r.raw)
		}
	}
}
