// Package helm_test checks the batchgate chart: lint and render every values
// profile, per-namespace scoping, every PromQL expression with promtool, and
// the ScaledObject's exact query on a real Prometheus scraping a proxy under
// load.
package helm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/internal/testenv"
)

// tool returns the path of a binary that `make test` installs.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p := filepath.Join(testenv.Root(t), ".deps", "tools", name); fileExists(p) {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make test`, which installs it", name)
	}
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func chartDir(t *testing.T) string { return filepath.Join(testenv.Root(t), "helm", "batchgate") }

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

type object = map[string]any

// render runs helm template and returns the documents.
func render(t *testing.T, release, namespace string, args ...string) []object {
	t.Helper()
	out := run(t, tool(t, "helm"), append([]string{"template", release, chartDir(t), "-n", namespace}, args...)...)
	var docs []object
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o object
		if err := dec.Decode(&o); err != nil {
			break
		}
		if o != nil {
			docs = append(docs, o)
		}
	}
	return docs
}

// get walks a path of map keys and slice indexes.
func get(o any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := o.(object)
			o = m[k]
		case int:
			s, _ := o.([]any)
			if k >= len(s) {
				return nil
			}
			o = s[k]
		}
	}
	return o
}

func find(docs []object, kind string) object {
	for _, d := range docs {
		if d["kind"] == kind {
			return d
		}
	}
	return nil
}

// namespaced lists every kind the chart may create: nothing cluster-scoped.
var namespaced = []string{"Deployment", "Service", "Ingress", "ScaledObject", "HorizontalPodAutoscaler",
	"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Pod"}

func TestProfiles(t *testing.T) {
	for _, tc := range []struct {
		profile string
		kinds   []string // present
		absent  []string
		check   func(t *testing.T, docs []object)
	}{
		{"", []string{"Deployment", "Service", "ScaledObject", "PodDisruptionBudget"}, []string{"HorizontalPodAutoscaler", "PrometheusRule"}, nil},
		{"ci/keda-off.yaml", []string{"HorizontalPodAutoscaler"}, []string{"ScaledObject"}, nil},
		{"ci/monitoring-on.yaml", []string{"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "Ingress"}, nil,
			func(t *testing.T, docs []object) {
				cm := find(docs, "ConfigMap")
				var dash map[string]any
				if err := json.Unmarshal([]byte(get(cm, "data", "batchgate.json").(string)), &dash); err != nil {
					t.Errorf("dashboard is not JSON: %v", err)
				}
				if get(cm, "metadata", "labels", "grafana_dashboard") != "1" {
					t.Error("dashboard ConfigMap lacks the Grafana sidecar label")
				}
			}},
		{"ci/model-pvc.yaml", nil, nil, func(t *testing.T, docs []object) {
			spec := get(find(docs, "Deployment"), "spec", "template", "spec")
			if get(spec, "initContainers", 0, "name") != "fetch-model" {
				t.Error("no fetch-model initContainer first")
			}
			vols, _ := get(spec, "volumes").([]any)
			found := false
			for _, v := range vols {
				found = found || get(v, "persistentVolumeClaim", "claimName") == "batchgate-models"
			}
			if !found {
				t.Error("model volume is not the PVC")
			}
		}},
	} {
		name := strings.TrimSuffix(filepath.Base(tc.profile), ".yaml")
		if tc.profile == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			var args []string
			if tc.profile != "" {
				args = []string{"-f", filepath.Join(chartDir(t), tc.profile)}
			}
			run(t, tool(t, "helm"), append([]string{"lint", "--strict", chartDir(t)}, args...)...)
			docs := render(t, "rel", "ns1", args...)
			var kinds []string
			for _, d := range docs {
				kind := d["kind"].(string)
				kinds = append(kinds, kind)
				if !slices.Contains(namespaced, kind) {
					t.Errorf("kind %s is not in the namespaced allow-list", kind)
				}
				if name := get(d, "metadata", "name").(string); !strings.HasPrefix(name, "rel-batchgate") {
					t.Errorf("%s %q does not derive from the release", kind, name)
				}
				if ns := get(d, "metadata", "namespace"); ns != nil {
					t.Errorf("%s sets namespace %v itself", kind, ns)
				}
			}
			for _, k := range tc.kinds {
				if !slices.Contains(kinds, k) {
					t.Errorf("no %s in %v", k, kinds)
				}
			}
			for _, k := range tc.absent {
				if slices.Contains(kinds, k) {
					t.Errorf("unexpected %s", k)
				}
			}
			checkDeployment(t, find(docs, "Deployment"))
			if tc.check != nil {
				tc.check(t, docs)
			}
		})
	}
}

// checkDeployment checks the pod shape every profile shares.
func checkDeployment(t *testing.T, d object) {
	t.Helper()
	spec := get(d, "spec", "template", "spec")
	if get(spec, "automountServiceAccountToken") != false || get(spec, "securityContext", "runAsNonRoot") != true ||
		get(spec, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
		t.Error("pod security: want no token, runAsNonRoot, seccomp RuntimeDefault")
	}
	var runtime, proxy any
	for _, c := range get(spec, "initContainers").([]any) {
		if get(c, "name") == "runtime" {
			runtime = c
		}
	}
	proxy = get(spec, "containers", 0)
	if runtime == nil || get(runtime, "restartPolicy") != "Always" || get(proxy, "name") != "proxy" {
		t.Fatal("want the runtime as a native sidecar (initContainer, restartPolicy Always) and the proxy as the container")
	}
	for _, c := range []any{runtime, proxy} {
		if get(c, "securityContext", "readOnlyRootFilesystem") != true || get(c, "securityContext", "capabilities", "drop", 0) != "ALL" {
			t.Errorf("%v: want a read-only root and no capabilities", get(c, "name"))
		}
	}
	if get(runtime, "resources", "limits", "cpu") != "1" || get(runtime, "startupProbe") == nil {
		t.Error("runtime: want a CPU limit of 1 and a startup probe")
	}
	if get(proxy, "readinessProbe", "httpGet", "path") != "/readyz" || get(proxy, "livenessProbe", "httpGet", "path") != "/healthz" {
		t.Error("proxy probes: want /readyz and /healthz")
	}
	if get(spec, "volumes", 0, "emptyDir", "medium") != "Memory" {
		t.Error("socket volume: want a memory-backed emptyDir")
	}
	// The grace period covers preStop, the drain and the slowest request.
	env := map[string]string{}
	for _, e := range get(proxy, "env").([]any) {
		env[get(e, "name").(string)] = fmt.Sprint(get(e, "value"))
	}
	drain, _ := time.ParseDuration(env["DRAIN_DELAY"])
	timeout, _ := time.ParseDuration(env["REQUEST_TIMEOUT"])
	pre := get(proxy, "lifecycle", "preStop", "sleep", "seconds").(int)
	grace := get(spec, "terminationGracePeriodSeconds").(int)
	if need := time.Duration(pre)*time.Second + drain + timeout; time.Duration(grace)*time.Second < need {
		t.Errorf("terminationGracePeriodSeconds %d < preStop %ds + DRAIN_DELAY %v + REQUEST_TIMEOUT %v", grace, pre, drain, timeout)
	}
}

func queryOf(t *testing.T, docs []object) string {
	t.Helper()
	q, _ := get(find(docs, "ScaledObject"), "spec", "triggers", 0, "metadata", "query").(string)
	if q == "" {
		t.Fatal("no ScaledObject query")
	}
	return q
}

// TestTwoNamespaces: the same chart in two namespaces scales each on its
// own pods only.
func TestTwoNamespaces(t *testing.T) {
	q1, q2 := queryOf(t, render(t, "rel", "ns1")), queryOf(t, render(t, "rel", "ns2"))
	for q, ns := range map[string]string{q1: "ns1", q2: "ns2"} {
		if !strings.Contains(q, `namespace="`+ns+`"`) || !strings.Contains(q, `pod=~"rel-batchgate-.*"`) {
			t.Errorf("query %q is not scoped to namespace %s and the release's pods", q, ns)
		}
	}
}

// TestPromQL checks the alert rules and every dashboard expression with
// promtool, and runs unit tests of the alerts.
func TestPromQL(t *testing.T) {
	promtool := tool(t, "promtool")
	docs := render(t, "rel", "ns1", "-f", filepath.Join(chartDir(t), "ci/monitoring-on.yaml"))
	dir := t.TempDir()

	rules, err := yaml.Marshal(get(find(docs, "PrometheusRule"), "spec"))
	if err != nil {
		t.Fatal(err)
	}
	rulesFile := filepath.Join(dir, "rules.yaml")
	os.WriteFile(rulesFile, rules, 0o644)
	run(t, promtool, "check", "rules", rulesFile)

	// Dashboard expressions, checked as recording rules.
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	json.Unmarshal([]byte(get(find(docs, "ConfigMap"), "data", "batchgate.json").(string)), &dash)
	var rec []map[string]string
	for i, p := range dash.Panels {
		for j, tg := range p.Targets {
			rec = append(rec, map[string]string{"record": fmt.Sprintf("dashboard:panel%d_%d", i, j), "expr": tg.Expr})
		}
	}
	if len(rec) < 7 {
		t.Fatalf("dashboard has %d expressions", len(rec))
	}
	b, _ := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rec}}})
	dashFile := filepath.Join(dir, "dashboard.yaml")
	os.WriteFile(dashFile, b, 0o644)
	run(t, promtool, "check", "rules", dashFile)

	// Alert unit tests: a disconnected runtime and a saturated queue fire;
	// a healthy pod does not.
	sel := `namespace="ns1",pod="rel-batchgate-abc"`
	unit := fmt.Sprintf(`rule_files: [%s]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'inference_runtime_connected{%[2]s}'
        values: '1 1 0 0 0 0 0'
      - series: 'inference_queue_depth{%[2]s}'
        values: '0 10 70 70 70 70 70 70 70'
      - series: 'inference_queue_depth{namespace="other",pod="rel-batchgate-x"}'
        values: '99 99 99 99 99 99 99 99 99'
    alert_rule_test:
      - eval_time: 1m
        alertname: BatchgateRuntimeDisconnected
        exp_alerts: []
      - eval_time: 6m
        alertname: BatchgateRuntimeDisconnected
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: "a proxy has no ready runtime"}
      - eval_time: 3m
        alertname: BatchgateQueueSaturated
        exp_alerts: []
      - eval_time: 8m
        alertname: BatchgateQueueSaturated
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "a pod's queue is above 0.9 of its capacity: scale out"}
`, rulesFile, sel)
	unitFile := filepath.Join(dir, "unit.yaml")
	os.WriteFile(unitFile, []byte(unit), 0o644)
	run(t, promtool, "test", "rules", unitFile)
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// start runs a command until the test ends.
func start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

func waitHTTP(t *testing.T, u string) {
	t.Helper()
	for range 600 { // 60 s
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200", u)
}

// TestScaledObjectOnPrometheus runs the proxy and runtime under a steady
// load of 12 concurrent clients, has a real Prometheus scrape the proxy every
// second with the labels Kubernetes discovery would add, and evaluates the
// exact query rendered into the ScaledObject: about 12 requests queued or
// running, so KEDA's ceil(value / target) gives 3 replicas at a target of 4,
// and is clamped to the maximum of 5 at a target of 1.
func TestScaledObjectOnPrometheus(t *testing.T) {
	const target, clients = 4, 12
	query := queryOf(t, render(t, "rel", "ns1", "--set", fmt.Sprintf("keda.targetQueueDepth=%d", target)))
	exprs := chartExprs(t)
	root, dir := testenv.Root(t), t.TempDir()
	for _, pkg := range []string{"runtime", "proxy"} {
		run(t, "go", "build", "-C", root, "-o", filepath.Join(dir, pkg), "./"+pkg)
	}
	socket, port := filepath.Join(dir, "rt.sock"), freePort(t)
	rt := exec.Command(filepath.Join(dir, "runtime"), "serve", "-socket", socket, "-model", testenv.ResNet50Model(t),
		"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", filepath.Join(root, ".deps", "ort-cache"), "-max-batch-size", "1")
	start(t, rt)
	px := exec.Command(filepath.Join(dir, "proxy"))
	px.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "RUNTIME_SOCKET="+socket, "MAX_BATCH_SIZE=1", "LOG_LEVEL=warn", "DRAIN_DELAY=0s")
	start(t, px)
	proxyURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitHTTP(t, proxyURL+"/readyz")

	promPort := freePort(t)
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: batchgate
    static_configs:
      - targets: ['127.0.0.1:%d']
        labels: {namespace: ns1, pod: rel-batchgate-7d9f8-abcde}
      - targets: ['127.0.0.1:%d']
        labels: {namespace: ns2, pod: rel-batchgate-other}
`, port, port)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	start(t, exec.Command(tool(t, "prometheus"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort)))
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	waitHTTP(t, promURL+"/-/ready")

	// Steady load, bounded: clients stop when the test has its samples or
	// after 90 s.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for c := range clients {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "POST", proxyURL+"/predict", bytes.NewReader(uniquePNG(c*100000+i)))
				req.Header.Set("Content-Type", "image/png")
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		})
	}

	// The query covers ns1 only although the same proxy is scraped twice.
	var samples []float64
	for len(samples) < 5 && ctx.Err() == nil {
		time.Sleep(time.Second)
		v, ok := promQuery(t, promURL, query)
		if ok && v >= clients/2 { // the load has ramped up
			samples = append(samples, v)
		}
	}
	if len(samples) < 5 {
		t.Fatalf("query %q never reached %d: samples %v", query, clients/2, samples)
	}
	slices.Sort(samples)
	median := samples[len(samples)/2]
	if median > clients {
		t.Errorf("queue depth %v above the %d clients: the query counts another namespace", median, clients)
	}
	replicas := func(value, target float64) int {
		return min(max(int(math.Ceil(value/target)), 1), 5) // KEDA: ceil, clamped to min 1, max 5
	}
	if got := replicas(median, target); got != 3 {
		t.Errorf("queue depth %v (samples %v) gives %d replicas at target %d, want 3", median, samples, got, target)
	}
	if got := replicas(median, 1); got != 5 {
		t.Errorf("at target 1: %d replicas, want the maximum 5", got)
	}
	t.Logf("ScaledObject query %s = %v (samples %v): %d replicas at target %d", query, median, samples, replicas(median, target), target)

	// A few requests past their deadline, so that the rejection series
	// exist; then every dashboard and alert expression returns data.
	for range 3 {
		req, _ := http.NewRequest("POST", proxyURL+"/predict", bytes.NewReader(uniquePNG(-1)))
		req.Header.Set("Content-Type", "image/png")
		req.Header.Set("X-Request-Timeout-Ms", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	time.Sleep(3 * time.Second) // two more scrapes
	for name, e := range exprs {
		if n := promSeries(t, promURL, e); n == 0 {
			t.Errorf("%s returns no data under load: %s", name, e)
		}
	}
}

// chartExprs returns every PromQL expression of the dashboard and, without
// their threshold, of the alert rules, rendered for release rel in ns1.
func chartExprs(t *testing.T) map[string]string {
	t.Helper()
	docs := render(t, "rel", "ns1", "-f", filepath.Join(chartDir(t), "ci/monitoring-on.yaml"))
	out := map[string]string{}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	json.Unmarshal([]byte(get(find(docs, "ConfigMap"), "data", "batchgate.json").(string)), &dash)
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			out[fmt.Sprintf("panel %q #%d", p.Title, i)] = tg.Expr
		}
	}
	for _, g := range get(find(docs, "PrometheusRule"), "spec", "groups").([]any) {
		for _, r := range get(g, "rules").([]any) {
			e := get(r, "expr").(string)
			if i := strings.LastIndexAny(e, "<>"); i > 0 {
				e = strings.TrimSpace(e[:i]) // the measured value, not the comparison
			}
			out["alert "+get(r, "alert").(string)] = e
		}
	}
	if len(out) < 12 {
		t.Fatalf("found only %d expressions", len(out))
	}
	return out
}

// promInstant evaluates an instant query and returns each series' value.
func promInstant(base, q string) ([]float64, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("status %q: %s", r.Status, r.Error)
	}
	vs := make([]float64, len(r.Data.Result))
	for i, res := range r.Data.Result {
		if vs[i], err = strconv.ParseFloat(fmt.Sprint(res.Value[1]), 64); err != nil {
			return nil, err
		}
	}
	return vs, nil
}

// promSeries returns how many series an instant query has.
func promSeries(t *testing.T, base, q string) int {
	vs, err := promInstant(base, q)
	if err != nil {
		t.Errorf("query %s: %v", q, err)
	}
	return len(vs)
}

// promQuery returns the value of an instant query that has one series.
func promQuery(t *testing.T, base, q string) (float64, bool) {
	vs, err := promInstant(base, q)
	if err != nil || len(vs) != 1 {
		return 0, false
	}
	return vs[0], true
}

// uniquePNG returns a small PNG that no other seed gives: every request
// costs an inference (no cache hit, no coalescing).
func uniquePNG(seed int) []byte {
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	for i := range img.Pix {
		img.Pix[i] = uint8(seed >> (i % 4 * 8))
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	return buf.Bytes()
}
