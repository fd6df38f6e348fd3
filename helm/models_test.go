package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/proxy/stats"
)

// valuesFile writes a values file for one render.
func valuesFile(t *testing.T, content string) []string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"-f", f}
}

// named returns the document of a kind and name.
func named(docs []object, kind, name string) object {
	for _, d := range docs {
		if d["kind"] == kind && get(d, "metadata", "name") == name {
			return d
		}
	}
	return nil
}

// runtimeSidecars returns the pod's runtime containers (native sidecars:
// init containers with restartPolicy Always), by name.
func runtimeSidecars(spec any) map[string]any {
	out := map[string]any{}
	cs, _ := get(spec, "initContainers").([]any)
	for _, c := range cs {
		if get(c, "restartPolicy") == "Always" {
			out[get(c, "name").(string)] = c
		}
	}
	return out
}

// routingFileOf returns the routing file the chart renders, parsed and
// validated by the proxy's own parser, and the ConfigMap's data key.
func routingFileOf(t *testing.T, docs []object) (*routing.File, string) {
	t.Helper()
	cm := named(docs, "ConfigMap", "rel-batchgate-routing")
	if cm == nil {
		t.Fatal("no ConfigMap rel-batchgate-routing")
	}
	data, _ := get(cm, "data").(object)
	if len(data) != 1 {
		t.Fatalf("routing ConfigMap data %v: want one file", data)
	}
	for key, v := range data {
		f, err := routing.Parse([]byte(v.(string)))
		if err != nil {
			t.Fatalf("the proxy refuses the rendered routing file: %v\n%s", err, v)
		}
		return f, key
	}
	return nil, ""
}

// TestModels: with a 2-version `models` list (ci/models.yaml) the chart
// renders one runtime sidecar per version, each on its own socket with its
// own model, resources and the runtime's probes; a routing ConfigMap whose
// file the proxy's parser accepts and that lists both versions, their
// sockets and weights; the proxy's ROUTING_FILE pointing into the
// ConfigMap's folder mount (not a subPath, no checksum annotation: updates
// apply without a restart); an unchanged KEDA query over metrics the proxy
// exports in routed mode; and per-version dashboard panels over the proxy's
// model and version labels. (TestKubeAPIServer applies the profile to a
// real API server.)
func TestModels(t *testing.T) {
	const int8SHA = "c234f30975989788b4405f25253275aae247ab6dbdd34aaa69ab0a59ff76f6d0"
	profile := []string{"-f", filepath.Join(chartDir(t), "ci/models.yaml")}
	run(t, tool(t, "helm"), append([]string{"lint", "--strict", chartDir(t), "--kube-version", kubeVersion}, profile...)...)
	docs := render(t, "rel", "ns1", profile...)
	def := render(t, "rel", "ns1")
	dep := find(docs, "Deployment")
	spec := get(dep, "spec", "template", "spec")

	// One runtime sidecar per version, nothing else.
	rts := runtimeSidecars(spec)
	if len(rts) != 2 || rts["runtime-v1"] == nil || rts["runtime-v2"] == nil {
		t.Fatalf("runtime sidecars %v, want runtime-v1 and runtime-v2", slices.Sorted(maps.Keys(rts)))
	}
	defRuntime := containerNamed(get(find(def, "Deployment"), "spec", "template", "spec"), "runtime")
	want := map[string]struct {
		variant, modelPath, memLimit string
	}{
		"v1": {"fp32", "", "1Gi"}, // in the image; runtime.resources
		"v2": {"int8", "/models/" + int8SHA + ".onnx", "768Mi"},
	}
	sockets, caches := map[string]string{}, map[string]bool{}
	for v, w := range want {
		c := rts["runtime-"+v]
		env := envOf(c)
		sockets[v] = env["RUNTIME_SOCKET"]
		caches[env["ORT_CACHE_DIR"]] = true
		if env["MODEL_VARIANT"] != w.variant || env["MODEL_NAME"] != "resnet50" {
			t.Errorf("runtime-%s: MODEL_VARIANT %q MODEL_NAME %q, want %s and resnet50", v, env["MODEL_VARIANT"], env["MODEL_NAME"], w.variant)
		}
		if got := env["MODEL_PATH"]; got != w.modelPath {
			t.Errorf("runtime-%s: MODEL_PATH %q, want %q", v, got, w.modelPath)
		}
		if got := get(c, "resources", "limits", "memory"); got != w.memLimit {
			t.Errorf("runtime-%s: memory limit %v, want %s", v, got, w.memLimit)
		}
		// The single runtime's settings, through the same helper.
		for _, k := range []string{"startupProbe", "livenessProbe", "securityContext", "image", "imagePullPolicy"} {
			if !reflect.DeepEqual(get(c, k), get(defRuntime, k)) {
				t.Errorf("runtime-%s %s = %v, want the single runtime's %v", v, k, get(c, k), get(defRuntime, k))
			}
		}
		if get(c, "resources", "requests", "cpu") == nil {
			t.Errorf("runtime-%s has no CPU request", v)
		}
	}
	if sockets["v1"] == sockets["v2"] || !strings.HasPrefix(sockets["v1"], "/sock/") || !strings.HasPrefix(sockets["v2"], "/sock/") {
		t.Errorf("sockets %v: want one per version in the shared /sock emptyDir", sockets)
	}
	if len(caches) != 2 {
		t.Errorf("ORT cache folders %v: want one per version", caches)
	}
	// Downloads come first, each to its content-addressed file.
	fetch := containerNamed(spec, "fetch-model-v2")
	if fetch == nil || get(spec, "initContainers", 0, "name") != "fetch-model-v2" || containerNamed(spec, "fetch-model-v1") != nil {
		t.Fatalf("want one fetch-model-v2 init container first (v1's model is in its image), got %v", get(spec, "initContainers"))
	}
	if script, _ := get(fetch, "command", 2).(string); !strings.Contains(script, `resnet50-v1-12-int8.onnx"`) || !strings.Contains(script, "mv -f \"$tmp\" "+want["v2"].modelPath) {
		t.Errorf("fetch-model-v2 does not fetch the int8 model to %s:\n%s", want["v2"].modelPath, script)
	}

	// The proxy reads the routing file from the ConfigMap's folder.
	proxy := get(spec, "containers", 0)
	env := envOf(proxy)
	file := env["ROUTING_FILE"]
	if file == "" || env["ROUTING_POLL_INTERVAL"] != "2s" {
		t.Fatalf("proxy env %v: want ROUTING_FILE and ROUTING_POLL_INTERVAL", env)
	}
	if _, ok := env["RUNTIME_SOCKET"]; ok {
		t.Error("proxy has RUNTIME_SOCKET, which a routing file replaces")
	}
	var mount any
	for _, m := range get(proxy, "volumeMounts").([]any) {
		if get(m, "name") == "routing" {
			mount = m
		}
	}
	if mount == nil || get(mount, "mountPath") != path.Dir(file) || get(mount, "subPath") != nil || get(mount, "readOnly") != true {
		t.Errorf("routing mount %v: want the folder of %s, read-only, no subPath (a subPath mount never sees updates)", mount, file)
	}
	var vol any
	for _, v := range get(spec, "volumes").([]any) {
		if get(v, "name") == "routing" {
			vol = v
		}
	}
	if get(vol, "configMap", "name") != "rel-batchgate-routing" {
		t.Errorf("routing volume %v, want ConfigMap rel-batchgate-routing", vol)
	}
	annotations, _ := get(dep, "spec", "template", "metadata", "annotations").(object)
	for k := range annotations {
		if strings.HasPrefix(k, "checksum/") {
			t.Errorf("pod annotation %s: a routing change would restart the pods, which reload it themselves", k)
		}
	}

	// The routing file, through the proxy's own parser.
	f, key := routingFileOf(t, docs)
	if key != path.Base(file) {
		t.Errorf("ConfigMap key %q, but ROUTING_FILE is %s", key, file)
	}
	if len(f.Models) != 1 || f.Models[0].Name != "resnet50" {
		t.Fatalf("routing file models %+v, want one: resnet50", f.Models)
	}
	m := f.Models[0]
	if m.Sticky == nil || m.Sticky.Header != "X-User-Id" || m.Sticky.Salt != "2026-05" || m.Shadow != nil || m.ShareCache {
		t.Errorf("model settings sticky %+v shadow %+v share_cache %v, want sticky on X-User-Id, salt 2026-05", m.Sticky, m.Shadow, m.ShareCache)
	}
	type vw struct {
		name, socket, variant string
		weight                float64
	}
	var got []vw
	for _, v := range m.Versions {
		got = append(got, vw{v.Name, v.Socket, v.Variant, v.Weight})
	}
	if wantV := []vw{{"v1", sockets["v1"], "fp32", 90}, {"v2", sockets["v2"], "int8", 10}}; !reflect.DeepEqual(got, wantV) {
		t.Errorf("routing versions %+v, want %+v (sockets those of the sidecars)", got, wantV)
	}
	if rb := m.Versions[1].Rollback; rb == nil || *rb != (routing.Rollback{Window: time.Minute, MinRequests: 20, MaxErrorRate: 0.05, MaxP99: 2 * time.Second}) {
		t.Errorf("v2 rollback %+v, want 60s / 20 / 0.05 / 2s", rb)
	} else if m.Versions[0].Rollback != nil {
		t.Errorf("v1 rollback %+v, want none", m.Versions[0].Rollback)
	}

	// KEDA's query is the single-model one, and reads a series the proxy
	// exports unlabelled in routed mode (the sum of the versions' primary
	// queues; proxy/gateway's TestShadow checks shadow work stays out).
	q := queryOf(t, docs)
	if q != queryOf(t, def) {
		t.Errorf("query with models %s differs from %s", q, queryOf(t, def))
	}
	exported := routedMetrics(t)
	if labels, ok := exported["inference_queue_depth"]; !ok || len(labels) != 1 || labels[0] != "" {
		t.Errorf("the proxy exports inference_queue_depth as %q in routed mode; the query wants one unlabelled series per pod", labels)
	}

	// The dashboard's per-version panels: valid PromQL over series the
	// proxy exports with model and version labels.
	dash := get(named(docs, "ConfigMap", "rel-batchgate-dashboard"), "data", "batchgate.json")
	var d struct {
		UID    string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(dash.(string)), &d); err != nil || d.UID == "" {
		t.Fatalf("dashboard: %v (uid %q)", err, d.UID)
	}
	var rec []map[string]string
	perVersion := 0
	name := regexp.MustCompile(`\b(inference_[a-z0-9_]+?)(_bucket|_sum|_count)?\{`)
	versioned := regexp.MustCompile(`^inference_(version|shadow|rollbacks)_`)
	for i, p := range d.Panels {
		for j, tg := range p.Targets {
			rec = append(rec, map[string]string{"record": fmt.Sprintf("dashboard:panel%d_%d", i, j), "expr": tg.Expr})
			byVersion := false
			for _, n := range name.FindAllStringSubmatch(tg.Expr, -1) {
				labels, ok := exported[n[1]]
				if !ok {
					t.Errorf("panel %q reads %s, which the proxy does not export", p.Title, n[1])
				}
				if !versioned.MatchString(n[1]) {
					continue
				}
				byVersion = true
				for _, l := range labels {
					if !strings.Contains(l, `model="resnet50"`) || !strings.Contains(l, `version="v1"`) {
						t.Errorf("the proxy exports %s{%s}: no model and version labels", n[1], l)
					}
				}
			}
			if byVersion {
				perVersion++
				if !strings.Contains(tg.Expr, "model, version") {
					t.Errorf("panel %q: %s is not by model and version", p.Title, tg.Expr)
				}
			}
		}
	}
	if perVersion < 8 || len(d.Panels) <= len(dashboardPanels(t, render(t, "rel", "ns1", "--set", "monitoring.dashboard.enabled=true"))) {
		t.Errorf("%d per-version expressions in %d panels: want the default panels plus per-version ones", perVersion, len(d.Panels))
	}
	b, _ := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rec}}})
	rules := filepath.Join(t.TempDir(), "dashboard.yaml")
	os.WriteFile(rules, b, 0o644)
	run(t, tool(t, "promtool"), "check", "rules", rules)

	// helm test asks every version for an answer by name.
	test, _ := get(find(docs, "Pod"), "spec", "containers", 0, "command", 2).(string)
	for v, w := range want {
		if !strings.Contains(test, "X-Model-Version: "+v) || !strings.Contains(test, `"model_version":"`+v+`"`) || !strings.Contains(test, `"model_variant":"`+w.variant+`"`) {
			t.Errorf("helm test does not check version %s (%s):\n%s", v, w.variant, test)
		}
	}
}

// dashboardPanels returns the panels of a render's dashboard.
func dashboardPanels(t *testing.T, docs []object) []any {
	t.Helper()
	var d struct{ Panels []any }
	if err := json.Unmarshal([]byte(get(named(docs, "ConfigMap", "rel-batchgate-dashboard"), "data", "batchgate.json").(string)), &d); err != nil {
		t.Fatal(err)
	}
	return d.Panels
}

// routedMetrics returns the series the proxy's metrics package exports with
// a routing file (one version, every series touched once), by name: each
// series' labels.
func routedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	set := metrics.NewSet()
	one := func() float64 { return 1 }
	m := stats.New(set, stats.Gauges{QueueDepth: one, RuntimeDemand: one, RuntimeBusy: one, ExpectedWait: one, RuntimeConnected: one, UploadBytes: one, DecodeBytes: one})
	m.Request("/predict", 200, time.Millisecond)
	m.NewRouting(one).Applied.Inc()
	v := m.NewVersion("resnet50", "v1", stats.VersionGauges{QueueDepth: one, ShadowDepth: one, Connected: one, Weight: one, RolledBack: one})
	v.Request(200, time.Millisecond)
	v.Dispatched([]time.Duration{time.Millisecond})
	v.ShadowLatency.Update(0.01)
	v.ShadowAgree.Inc()
	v.Rollbacks.Inc()
	var buf bytes.Buffer
	m.WritePrometheus(&buf) // as the metrics handler: the set, then go_* and process_*
	out := map[string][]string{}
	series := regexp.MustCompile(`^([a-z_0-9]+)(?:\{(.*)\})? `)
	for _, line := range strings.Split(buf.String(), "\n") {
		if s := series.FindStringSubmatch(line); s != nil {
			name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(s[1], "_bucket"), "_sum"), "_count")
			out[name] = append(out[name], s[2])
		}
	}
	if len(out) < 10 {
		t.Fatalf("proxy metrics: %d names:\n%s", len(out), buf.String())
	}
	return out
}

// TestModelsOptions: a shadow version, a weight-0 first version (the CPU
// HPA then measures the first weighted one), per-version images, and
// bad lists refused at render time with a message naming the problem.
func TestModelsOptions(t *testing.T) {
	t.Run("shadow and hpa", func(t *testing.T) {
		docs := render(t, "rel", "ns1", append(valuesFile(t, `
models:
  - {version: canary, weight: 0, image: {tag: "0.2.0"}}
  - {version: stable, weight: 1}
  - {version: next, weight: 0, model: {source: download}, shadow: {percent: 10}}
routing: {modelName: classifier, shareCache: true, pollInterval: 500ms}
keda: {enabled: false}
`), "--set", "runtime.image.tag=0.1.0")...)
		spec := get(find(docs, "Deployment"), "spec", "template", "spec")
		if rts := runtimeSidecars(spec); len(rts) != 3 {
			t.Errorf("%d runtime sidecars, want 3", len(rts))
		}
		if img := get(containerNamed(spec, "runtime-canary"), "image"); img != "batchgate-runtime:0.2.0" {
			t.Errorf("runtime-canary image %v, want the tag of its entry over runtime.image", img)
		}
		if img := get(containerNamed(spec, "runtime-stable"), "image"); img != "batchgate-runtime:0.1.0" {
			t.Errorf("runtime-stable image %v, want runtime.image", img)
		}
		if c := get(find(docs, "HorizontalPodAutoscaler"), "spec", "metrics", 0, "containerResource", "container"); c != "runtime-stable" {
			t.Errorf("HPA measures %v, want runtime-stable (the first version with a weight)", c)
		}
		f, _ := routingFileOf(t, docs)
		m := f.Models[0]
		if m.Name != "classifier" || !m.ShareCache || m.Shadow == nil || *m.Shadow != (routing.Shadow{Version: "next", Percent: 10, MaxQueue: 4}) || m.Sticky != nil {
			t.Errorf("routing model %+v shadow %+v, want classifier, share_cache, shadow next at 10%%", m, m.Shadow)
		}
		if got := envOf(get(spec, "containers", 0))["ROUTING_POLL_INTERVAL"]; got != "500ms" {
			t.Errorf("ROUTING_POLL_INTERVAL %q, want 500ms", got)
		}
		if env := envOf(containerNamed(spec, "runtime-next")); env["MODEL_VARIANT"] != "fp32" || !strings.HasPrefix(env["MODEL_PATH"], "/models/ab65bdc0") {
			t.Errorf("runtime-next env %v: want the pinned fp32 model (model.variant's), downloaded", env)
		}
	})
	for _, tc := range []struct{ name, values, want string }{
		{"duplicate version", "models: [{version: v1, weight: 1}, {version: v1, weight: 1}]", `version "v1" is listed twice`},
		{"every weight 0", "models: [{version: v1, weight: 0}, {version: v2, weight: 0}]", "weight 0"},
		{"two shadows", "models: [{version: v1, weight: 1}, {version: v2, weight: 0, shadow: {percent: 5}}, {version: v3, weight: 0, shadow: {percent: 5}}]", "at most one version is the shadow"},
		{"not a DNS label", "models: [{version: V1.0, weight: 1}]", "version"},
		{"unknown key", "models: [{version: v1, weight: 1, wieght: 2}]", "additional properties"},
		{"no weight", "models: [{version: v1}]", "weight"},
		{"rollback without a limit", "models: [{version: v1, weight: 1, rollback: {window: 60s}}]", "rollback"},
		{"rollback window not a duration", "models: [{version: v1, weight: 1, rollback: {window: 60, maxP99: 1s}}]", "window"},
		{"url without sha256", "models: [{version: v1, weight: 1, model: {source: download, url: 'https://example.com/m.onnx'}}]", "set both models[0].model.url and models[0].model.sha256"},
		{"sticky without a key", "models: [{version: v1, weight: 1}]\nrouting: {sticky: {salt: x}}", "routing.sticky"},
		{"sticky with both keys", "models: [{version: v1, weight: 1}]\nrouting: {sticky: {header: X-User-Id, image: true}}", "not both"},
		{"17 versions", "models: [" + strings.Repeat("{version: v, weight: 1},", 16) + "{version: w, weight: 1}]", "models"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := renderErr(t, "rel", "ns1", valuesFile(t, tc.values)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("want a failure naming %q, got %v\n%.600s", tc.want, err, out)
			}
		})
	}
}

// TestModelsDefault: without `models`, one runtime named runtime on
// /sock/runtime.sock, the proxy on RUNTIME_SOCKET, no routing ConfigMap,
// volume or env: the single-model pod as before.
func TestModelsDefault(t *testing.T) {
	for _, args := range [][]string{nil, {"-f", filepath.Join(chartDir(t), "ci/monitoring-on.yaml")}, {"-f", filepath.Join(chartDir(t), "ci/model-pvc.yaml")}} {
		docs := render(t, "rel", "ns1", args...)
		spec := get(find(docs, "Deployment"), "spec", "template", "spec")
		rts := runtimeSidecars(spec)
		if len(rts) != 1 || rts["runtime"] == nil || envOf(rts["runtime"])["RUNTIME_SOCKET"] != "/sock/runtime.sock" {
			t.Errorf("%v: runtime sidecars %v, want the one runtime on /sock/runtime.sock", args, slices.Sorted(maps.Keys(rts)))
		}
		if _, ok := envOf(rts["runtime"])["MODEL_NAME"]; ok {
			t.Errorf("%v: the single runtime gets MODEL_NAME", args)
		}
		env := envOf(get(spec, "containers", 0))
		if env["RUNTIME_SOCKET"] != "/sock/runtime.sock" || env["ROUTING_FILE"] != "" || env["ROUTING_POLL_INTERVAL"] != "" {
			t.Errorf("%v: proxy env %v, want RUNTIME_SOCKET and no routing file", args, env)
		}
		if named(docs, "ConfigMap", "rel-batchgate-routing") != nil {
			t.Errorf("%v: a routing ConfigMap without models", args)
		}
		for _, v := range get(spec, "volumes").([]any) {
			if get(v, "name") == "routing" {
				t.Errorf("%v: a routing volume without models", args)
			}
		}
	}
}
