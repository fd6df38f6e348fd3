// Package helm_test checks the batchgate chart: lint and render every values
// profile, per-namespace scoping, every PromQL expression with promtool, and
// the ScaledObject's exact query on a real Prometheus scraping a proxy under
// load.
package helm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
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

// kubeVersion is the Kubernetes version charts are rendered for: the one
// apiserver_test.go runs. (A helm built from its Go module, as `make test`
// builds it, defaults to v1.20.0, which the chart's kubeVersion refuses.)
const kubeVersion = "v1.37.2"

// monitoringAPI is the --api-versions flag of a cluster that serves the
// Prometheus Operator's PodMonitor.
const monitoringAPI = "monitoring.coreos.com/v1/PodMonitor"

// templateArgs returns helm template's arguments.
func templateArgs(t *testing.T, release, namespace string, args ...string) []string {
	return append([]string{"template", release, chartDir(t), "-n", namespace, "--kube-version", kubeVersion}, args...)
}

// render runs helm template and returns the documents.
func render(t *testing.T, release, namespace string, args ...string) []object {
	t.Helper()
	return parseDocs(run(t, tool(t, "helm"), templateArgs(t, release, namespace, args...)...))
}

// renderErr runs helm template where it should fail and returns its output.
func renderErr(t *testing.T, release, namespace string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(tool(t, "helm"), templateArgs(t, release, namespace, args...)...).CombinedOutput()
	return string(out), err
}

// parseDocs splits a multi-document YAML stream.
func parseDocs(out []byte) []object {
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

// count returns how many documents are of a kind.
func count(docs []object, kind string) int {
	n := 0
	for _, d := range docs {
		if d["kind"] == kind {
			n++
		}
	}
	return n
}

// namespaced lists every kind the chart may create: nothing cluster-scoped.
var namespaced = []string{"Deployment", "Service", "Ingress", "ScaledObject", "HorizontalPodAutoscaler",
	"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Pod"}

// profiles are the values files of helm/batchgate/ci ("" is the defaults);
// apiserver_test.go applies each of them to a real API server.
var profiles = []string{"", "ci/keda-off.yaml", "ci/monitoring-on.yaml", "ci/model-pvc.yaml",
	"ci/servicemonitor.yaml", "ci/fixed-replicas.yaml", "ci/pod-options.yaml", "ci/models.yaml", "ci/tracing-auth.yaml"}

func TestProfiles(t *testing.T) {
	for _, tc := range []struct {
		profile string
		prefix  string   // of every object's name
		kinds   []string // present
		absent  []string
		check   func(t *testing.T, docs []object)
	}{
		{"", "rel-batchgate", []string{"Deployment", "Service", "ScaledObject", "PodDisruptionBudget"},
			[]string{"HorizontalPodAutoscaler", "PrometheusRule", "PodMonitor", "ServiceMonitor"}, nil},
		{"ci/keda-off.yaml", "rel-batchgate", []string{"HorizontalPodAutoscaler"}, []string{"ScaledObject"}, nil},
		{"ci/monitoring-on.yaml", "rel-batchgate", []string{"PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "Ingress"}, []string{"ServiceMonitor"},
			func(t *testing.T, docs []object) {
				cm := find(docs, "ConfigMap")
				var dash map[string]any
				if err := json.Unmarshal([]byte(get(cm, "data", "batchgate.json").(string)), &dash); err != nil {
					t.Errorf("dashboard is not JSON: %v", err)
				}
				if get(cm, "metadata", "labels", "grafana_dashboard") != "1" {
					t.Error("dashboard ConfigMap lacks the Grafana sidecar label")
				}
				// kube-prometheus-stack's default selectors: release: <its release>.
				for _, k := range []string{"PodMonitor", "PrometheusRule"} {
					if get(find(docs, k), "metadata", "labels", "release") != "kube-prometheus-stack" {
						t.Errorf("%s lacks the release label of monitoring.prometheusRelease", k)
					}
				}
				ing := find(docs, "Ingress")
				if get(ing, "spec", "ingressClassName") != "nginx" || get(ing, "metadata", "annotations") == nil {
					t.Error("Ingress: want ingressClassName and annotations from the values")
				}
				var paths []string
				for _, p := range get(ing, "spec", "rules", 0, "http", "paths").([]any) {
					paths = append(paths, get(p, "path").(string))
					if get(p, "pathType") != "Prefix" || get(p, "backend", "service", "port", "name") != "http" {
						t.Errorf("Ingress path %v: want pathType Prefix to port http", p)
					}
				}
				if want := []string{"/predict", "/v2", "/docs", "/openapi.json"}; !slices.Equal(paths, want) {
					t.Errorf("Ingress paths %v, want the API routes only %v", paths, want)
				}
			}},
		{"ci/model-pvc.yaml", "rel-batchgate", nil, nil, func(t *testing.T, docs []object) {
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
		{"ci/servicemonitor.yaml", "rel-batchgate", []string{"ServiceMonitor"}, []string{"PodMonitor"}, func(t *testing.T, docs []object) {
			if named(docs, "Service", "rel-batchgate-metrics") == nil {
				t.Error("no Service rel-batchgate-metrics for the ServiceMonitor")
			}
		}},
		{"ci/fixed-replicas.yaml", "rel-batchgate", nil, []string{"ScaledObject", "HorizontalPodAutoscaler"}, nil},
		{"ci/pod-options.yaml", "classifier", nil, nil, func(t *testing.T, docs []object) {
			pod := get(find(docs, "Deployment"), "spec", "template")
			spec := get(pod, "spec")
			for what, v := range map[string]any{
				"imagePullSecrets":  get(spec, "imagePullSecrets", 0, "name"),
				"podAnnotations":    get(pod, "metadata", "annotations", "example.com/team"),
				"podLabels":         get(pod, "metadata", "labels", "team"),
				"nodeSelector":      get(spec, "nodeSelector", "kubernetes.io/arch"),
				"affinity":          get(spec, "affinity", "nodeAffinity"),
				"tolerations":       get(spec, "tolerations", 0, "key"),
				"priorityClassName": get(spec, "priorityClassName"),
				"proxy extraEnv":    envOf(get(spec, "containers", 0))["GOMAXPROCS"],
				"runtime extraEnv":  envFrom(containerNamed(spec, "runtime"), "GOMEMLIMIT"),
			} {
				if v == nil || v == "" {
					t.Errorf("%s not rendered", what)
				}
			}
			if get(spec, "containers", 0, "image") != "registry.example.com/batchgate-proxy:0.1.0-rc1" {
				t.Errorf("proxy image %v", get(spec, "containers", 0, "image"))
			}
			if q := queryOf(t, docs); !strings.Contains(q, `pod=~"classifier-[a-z0-9]+-[a-z0-9]+"`) {
				t.Errorf("query %s does not follow fullnameOverride", q)
			}
		}},
		{"ci/tracing-auth.yaml", "rel-batchgate", []string{"Ingress", "NetworkPolicy"}, nil, func(t *testing.T, docs []object) {
			spec := get(find(docs, "Deployment"), "spec", "template", "spec")
			for _, c := range []any{get(spec, "containers", 0), containerNamed(spec, "runtime")} {
				if env := envOf(c); env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://otel-collector.observability:4318" || env["OTEL_TRACES_SAMPLER_ARG"] != "0.05" {
					t.Errorf("%v: OTEL env %v, want the profile's endpoint and ratio", get(c, "name"), env)
				}
			}
			if env := envOf(get(spec, "containers", 0)); env["AUTH_KEYS_FILE"] != "/etc/batchgate/auth/keys.yaml" || env["AUTH_POLL_INTERVAL"] != "5s" {
				t.Errorf("proxy env %v: want AUTH_KEYS_FILE and AUTH_POLL_INTERVAL 5s", env)
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
			run(t, tool(t, "helm"), append([]string{"lint", "--strict", chartDir(t), "--kube-version", kubeVersion}, args...)...)
			docs := render(t, "rel", "ns1", args...)
			var kinds []string
			for _, d := range docs {
				kind := d["kind"].(string)
				kinds = append(kinds, kind)
				if !slices.Contains(namespaced, kind) {
					t.Errorf("kind %s is not in the namespaced allow-list", kind)
				}
				if name := get(d, "metadata", "name").(string); !strings.HasPrefix(name, tc.prefix) {
					t.Errorf("%s %q does not derive from the release (%s)", kind, name, tc.prefix)
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
			checkNotSelected(t, docs)
			if tc.check != nil {
				tc.check(t, docs)
			}
		})
	}
}

// containerNamed returns a pod spec's container or init container.
func containerNamed(spec any, name string) any {
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := get(spec, list).([]any)
		for _, c := range cs {
			if get(c, "name") == name {
				return c
			}
		}
	}
	return nil
}

// envOf returns a container's plain env values.
func envOf(c any) map[string]string {
	env := map[string]string{}
	es, _ := get(c, "env").([]any)
	for _, e := range es {
		env[get(e, "name").(string)] = fmt.Sprint(get(e, "value"))
	}
	return env
}

// envFrom returns the valueFrom of a container's env entry.
func envFrom(c any, name string) any {
	es, _ := get(c, "env").([]any)
	for _, e := range es {
		if get(e, "name") == name {
			return get(e, "valueFrom")
		}
	}
	return nil
}

// probeTimeout returns the -timeout of a `runtime probe` command, or its
// default (runtime/main.go: 2s).
func probeTimeout(t *testing.T, cmd []any) time.Duration {
	t.Helper()
	for i, a := range cmd {
		if a == "-timeout" && i+1 < len(cmd) {
			d, err := time.ParseDuration(cmd[i+1].(string))
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	return 2 * time.Second
}

// checkDeployment checks the pod shape every profile shares.
func checkDeployment(t *testing.T, d object) {
	t.Helper()
	spec := get(d, "spec", "template", "spec")
	if get(spec, "automountServiceAccountToken") != false || get(spec, "securityContext", "runAsNonRoot") != true ||
		get(spec, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
		t.Error("pod security: want no token, runAsNonRoot, seccomp RuntimeDefault")
	}
	runtime, proxy := containerNamed(spec, "runtime"), get(spec, "containers", 0)
	if runtime == nil || get(runtime, "restartPolicy") != "Always" || get(proxy, "name") != "proxy" {
		t.Fatal("want the runtime as a native sidecar (initContainer, restartPolicy Always) and the proxy as the container")
	}
	for _, c := range get(spec, "initContainers").([]any) {
		if get(c, "resources", "requests", "cpu") == nil || get(c, "resources", "limits", "memory") == nil {
			t.Errorf("init container %v: want CPU requests and a memory limit", get(c, "name"))
		}
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
	// A probe's timeout must leave room for its command's own timeout,
	// or the kubelet kills a probe that would have answered.
	for _, p := range []string{"startupProbe", "livenessProbe"} {
		cmd, _ := get(runtime, p, "exec", "command").([]any)
		limit, _ := get(runtime, p, "timeoutSeconds").(int)
		if need := probeTimeout(t, cmd); time.Duration(limit)*time.Second <= need {
			t.Errorf("runtime %s: timeoutSeconds %d (default 1) does not exceed the command's %v", p, limit, need)
		}
	}
	for _, p := range []string{"readinessProbe", "livenessProbe"} {
		if ts, _ := get(proxy, p, "timeoutSeconds").(int); ts < 2 {
			t.Errorf("proxy %s: timeoutSeconds %d, want at least 2 (the kubelet's 1 s default fails on a busy node)", p, ts)
		}
	}
	// The startup budget covers model load and the warm-up of every batch
	// size up to MAX_BATCH_SIZE: n(n+1)/2 images at 53 ms (measured, one
	// thread, docs/performance.md) plus 1.2 s of model load (measured, first
	// start), doubled as the least margin.
	n, _ := strconv.Atoi(envOf(runtime)["MAX_BATCH_SIZE"])
	budget := time.Duration(get(runtime, "startupProbe", "periodSeconds").(int)*get(runtime, "startupProbe", "failureThreshold").(int)) * time.Second
	if need := 2 * (1200*time.Millisecond + time.Duration(n*(n+1)/2)*53*time.Millisecond); budget < need {
		t.Errorf("startup budget %v < %v for MAX_BATCH_SIZE %d", budget, need, n)
	}
	if get(spec, "volumes", 0, "emptyDir", "medium") != "Memory" {
		t.Error("socket volume: want a memory-backed emptyDir")
	}
	// The grace period covers preStop, the drain and the slowest request.
	env := envOf(proxy)
	drain, _ := time.ParseDuration(env["DRAIN_DELAY"])
	timeout, _ := time.ParseDuration(env["REQUEST_TIMEOUT"])
	pre := get(proxy, "lifecycle", "preStop", "sleep", "seconds").(int)
	grace := get(spec, "terminationGracePeriodSeconds").(int)
	if need := time.Duration(pre)*time.Second + drain + timeout; time.Duration(grace)*time.Second < need {
		t.Errorf("terminationGracePeriodSeconds %d < preStop %ds + DRAIN_DELAY %v + REQUEST_TIMEOUT %v", grace, pre, drain, timeout)
	}
}

// checkNotSelected: the helm test pod has resources, and is neither selected by the
// Deployment's selector (so the Service, the PDB and the monitors ignore it)
// nor matched by the scaling query's pod regex.
func checkNotSelected(t *testing.T, docs []object) {
	t.Helper()
	sel := get(find(docs, "Deployment"), "spec", "selector", "matchLabels").(object)
	for _, d := range docs {
		if d["kind"] != "Pod" {
			continue
		}
		if get(d, "spec", "containers", 0, "resources", "requests", "cpu") == nil || get(d, "spec", "containers", 0, "resources", "limits", "memory") == nil {
			t.Errorf("test pod %v: want CPU requests and a memory limit", get(d, "metadata", "name"))
		}
		labels, _ := get(d, "metadata", "labels").(object)
		all := true
		for k, v := range sel {
			all = all && labels[k] == v
		}
		if all {
			t.Errorf("test pod %v carries the Deployment's selector labels", get(d, "metadata", "name"))
		}
		if so := find(docs, "ScaledObject"); so != nil && podRegex(t, queryOf(t, docs)).MatchString(get(d, "metadata", "name").(string)) {
			t.Errorf("the scaling query's pod regex matches the test pod %v", get(d, "metadata", "name"))
		}
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

// podRegex returns the pod regex of a query, anchored as PromQL anchors it.
func podRegex(t *testing.T, q string) *regexp.Regexp {
	t.Helper()
	m := regexp.MustCompile(`pod=~"([^"]*)"`).FindStringSubmatch(q)
	if m == nil {
		t.Fatalf("no pod regex in %s", q)
	}
	return regexp.MustCompile("^(?:" + m[1] + ")$")
}

// TestTwoNamespaces: the same chart in two namespaces scales each on its
// own pods only.
func TestTwoNamespaces(t *testing.T) {
	q1, q2 := queryOf(t, render(t, "rel", "ns1")), queryOf(t, render(t, "rel", "ns2"))
	for q, ns := range map[string]string{q1: "ns1", q2: "ns2"} {
		if !strings.Contains(q, `namespace="`+ns+`"`) || !strings.Contains(q, `pod=~"rel-batchgate-[a-z0-9]+-[a-z0-9]+"`) {
			t.Errorf("query %q is not scoped to namespace %s and the release's pods", q, ns)
		}
	}
}

// TestScaledObjectQuery checks the ScaledObject's text: the exact query
// (pod regex anchored to the Deployment's pod names, one value per pod
// before the sum), a missing series as an error, and a fallback that never
// shrinks a busy deployment.
func TestScaledObjectQuery(t *testing.T) {
	// The default: the load triggers (docs/autoscaling.md), each pod
	// counted once; the largest proposal wins.
	sel := `{namespace="ns1",pod=~"rel-batchgate-[a-z0-9]+-[a-z0-9]+"}`
	demand := `sum(max by (namespace, pod) (rate(inference_runtime_demand_seconds_total` + sel + `[30s])))`
	def := find(render(t, "rel", "ns1"), "ScaledObject")
	for i, want := range []struct{ name, query, threshold string }{
		{"utilization", demand, "0.7"},
		{"utilization-ahead", `clamp_min(predict_linear((` + demand + `)[120s:15s], 60), 0) or ` + demand, "0.7"},
		{"expected-wait", `sum(max by (namespace, pod) (inference_expected_wait_seconds` + sel + `))`, "1"},
	} {
		tr := get(def, "spec", "triggers", i)
		if get(tr, "name") != want.name || get(tr, "metadata", "query") != want.query || get(tr, "metadata", "threshold") != want.threshold ||
			get(tr, "metadata", "ignoreNullValues") != "false" || get(tr, "metricType") != "AverageValue" {
			t.Errorf("default trigger %d = %v\nwant %s: %s, threshold %s", i, tr, want.name, want.query, want.threshold)
		}
	}
	if n := len(get(def, "spec", "triggers").([]any)); n != 3 {
		t.Errorf("%d default triggers, want 3", n)
	}

	// targetQueueDepth set: the queue trigger alone, as before.
	docs := render(t, "rel", "ns1", "--set", "keda.targetQueueDepth=8")
	so := find(docs, "ScaledObject")
	q := queryOf(t, docs)
	want := `sum(max by (namespace, pod) (inference_queue_depth{namespace="ns1",pod=~"rel-batchgate-[a-z0-9]+-[a-z0-9]+"}))`
	if q != want {
		t.Errorf("query\n %s\nwant\n %s", q, want)
	}
	if n := len(get(so, "spec", "triggers").([]any)); n != 1 {
		t.Errorf("with targetQueueDepth: %d triggers, want the queue trigger alone", n)
	}
	re := podRegex(t, q)
	for pod, match := range map[string]bool{
		"rel-batchgate-7d9f8c6b5-abcde": true,  // this release's Deployment
		"rel-batchgate-5b7c9d-x2k4p":    true,  // after a rollout
		"rel-batchgate-v2-abc12-xyz89":  false, // release rel-batchgate-v2
		"rel-batchgate-v2-7d9f8-abcde":  false,
		"rel-batchgate-test":            false, // the helm test pod
		"other-rel-batchgate-7d9f8-abc": false,
	} {
		if re.MatchString(pod) != match {
			t.Errorf("pod regex %s on %s: match %v, want %v", re, pod, !match, match)
		}
	}
	md := get(so, "spec", "triggers", 0, "metadata")
	if get(md, "ignoreNullValues") != "false" {
		t.Errorf(`ignoreNullValues %v, want "false": no series must be an error (fallback), not 0`, get(md, "ignoreNullValues"))
	}
	if get(so, "spec", "fallback", "behavior") != "currentReplicasIfHigher" || get(so, "spec", "fallback", "replicas") == nil {
		t.Errorf("fallback %v, want behavior currentReplicasIfHigher", get(so, "spec", "fallback"))
	}
	if get(so, "spec", "minReplicaCount").(int) < 1 {
		t.Error("minReplicaCount below 1: nothing could wake the deployment up")
	}
	if get(md, "activationThreshold") != nil || get(so, "spec", "cooldownPeriod") != nil {
		t.Error("activationThreshold/cooldownPeriod act only between 0 and 1 replicas; minReplicas >= 1 leaves them at KEDA's defaults")
	}
}

// TestMonitorByCapability: exactly one monitor where the cluster serves the
// Prometheus Operator's API, none (and the NOTES warning, checked on the
// real API server) where it does not.
func TestMonitorByCapability(t *testing.T) {
	api := []string{"--api-versions", monitoringAPI}
	for _, tc := range []struct {
		name       string
		args       []string
		pods, svcs int
	}{
		{"default without the API", nil, 0, 0},
		{"default with the API", api, 1, 0},
		{"keda-off with the API", append([]string{"-f", filepath.Join(chartDir(t), "ci/keda-off.yaml")}, api...), 1, 0},
		{"ServiceMonitor asked for", append([]string{"--set", "monitoring.serviceMonitor.enabled=true"}, api...), 0, 1},
		{"PodMonitor off", append([]string{"--set", "monitoring.podMonitor.enabled=false"}, api...), 0, 0},
		{"PodMonitor forced", []string{"--set", "monitoring.podMonitor.enabled=true"}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := render(t, "rel", "ns1", tc.args...)
			if p, s := count(docs, "PodMonitor"), count(docs, "ServiceMonitor"); p != tc.pods || s != tc.svcs {
				t.Fatalf("%d PodMonitor and %d ServiceMonitor, want %d and %d", p, s, tc.pods, tc.svcs)
			}
			pm := find(docs, "PodMonitor")
			if pm == nil {
				return
			}
			// It selects the Deployment's pods, on the proxy's metrics port.
			dep := find(docs, "Deployment")
			if !reflect.DeepEqual(get(pm, "spec", "selector", "matchLabels"), get(dep, "spec", "selector", "matchLabels")) {
				t.Errorf("PodMonitor selects %v, the Deployment %v", get(pm, "spec", "selector"), get(dep, "spec", "selector"))
			}
			port := get(pm, "spec", "podMetricsEndpoints", 0, "port")
			proxy := get(dep, "spec", "template", "spec", "containers", 0)
			if n := containerPort(proxy, fmt.Sprint(port)); n == 0 || strconv.Itoa(n) != envOf(proxy)["METRICS_PORT"] || get(pm, "spec", "podMetricsEndpoints", 0, "path") != "/metrics" {
				t.Errorf("PodMonitor scrapes port %v (container port %d), not the proxy's /metrics on METRICS_PORT %s", port, n, envOf(proxy)["METRICS_PORT"])
			}
		})
	}
	// Both monitors would scrape each pod twice: refused.
	if out, err := renderErr(t, "rel", "ns1", "--set", "monitoring.podMonitor.enabled=true,monitoring.serviceMonitor.enabled=true"); err == nil || !strings.Contains(out, "scraped twice") {
		t.Errorf("both monitors: want an error, got %v\n%s", err, out)
	}
	// The release hook of kube-prometheus-stack.
	docs := render(t, "rel", "ns1", "--api-versions", monitoringAPI, "--set", "monitoring.prometheusRelease=kps,monitoring.podMonitor.labels.team=a")
	if l := get(find(docs, "PodMonitor"), "metadata", "labels"); get(l, "release") != "kps" || get(l, "team") != "a" {
		t.Errorf("PodMonitor labels %v, want release: kps and team: a", l)
	}
}

// TestChartConventions: the HPA, replicaCount, the PDB, kubeVersion, the
// dashboard uid, the schema, the startup budget and probe timeouts.
func TestChartConventions(t *testing.T) {
	ciFile := func(p string) []string { return []string{"-f", filepath.Join(chartDir(t), p)} }

	t.Run("cpu hpa on the runtime container", func(t *testing.T) {
		docs := render(t, "rel", "ns1", ciFile("ci/keda-off.yaml")...)
		m := get(find(docs, "HorizontalPodAutoscaler"), "spec", "metrics", 0)
		if get(m, "type") != "ContainerResource" || get(m, "containerResource", "container") != "runtime" ||
			get(m, "containerResource", "name") != "cpu" || get(m, "containerResource", "target", "averageUtilization") != 80 {
			t.Errorf("HPA metric %v, want ContainerResource cpu of container runtime at 80%%", m)
		}
		if rt := containerNamed(get(find(docs, "Deployment"), "spec", "template", "spec"), "runtime"); get(rt, "resources", "requests", "cpu") != "1" {
			t.Error("the runtime has no CPU request of 1 for the HPA to measure against")
		}
		if r := get(find(docs, "Deployment"), "spec", "replicas"); r != nil {
			t.Errorf("Deployment sets replicas %v under an HPA", r)
		}
	})
	t.Run("replicaCount without autoscaler", func(t *testing.T) {
		docs := render(t, "rel", "ns1", ciFile("ci/fixed-replicas.yaml")...)
		if r := get(find(docs, "Deployment"), "spec", "replicas"); r != 3 {
			t.Errorf("replicas %v, want replicaCount 3", r)
		}
		docs = render(t, "rel", "ns1", "--set", "hpa.enabled=false,replicaCount=4")
		if r := get(find(docs, "Deployment"), "spec", "replicas"); r != nil || find(docs, "ScaledObject") == nil {
			t.Errorf("KEDA on: replicas %v, want none (KEDA owns them)", r)
		}
	})
	t.Run("pdb", func(t *testing.T) {
		docs := render(t, "rel", "ns1")
		pdb := get(find(docs, "PodDisruptionBudget"), "spec")
		if get(pdb, "maxUnavailable") != 1 || get(pdb, "minAvailable") != nil || get(pdb, "unhealthyPodEvictionPolicy") != "AlwaysAllow" {
			t.Errorf("PDB %v, want maxUnavailable 1, unhealthyPodEvictionPolicy AlwaysAllow", pdb)
		}
		if !reflect.DeepEqual(get(pdb, "selector"), get(find(docs, "Deployment"), "spec", "selector")) {
			t.Error("PDB selector differs from the Deployment's")
		}
	})
	t.Run("kubeVersion", func(t *testing.T) {
		var chart struct {
			KubeVersion string `yaml:"kubeVersion"`
		}
		b, _ := os.ReadFile(filepath.Join(chartDir(t), "Chart.yaml"))
		if err := yaml.Unmarshal(b, &chart); err != nil || chart.KubeVersion != ">=1.30.0-0" {
			t.Errorf("kubeVersion %q, want >=1.30.0-0 (native sidecars, preStop sleep)", chart.KubeVersion)
		}
		if out, err := exec.Command(tool(t, "helm"), "template", "rel", chartDir(t), "--kube-version", "v1.29.9").CombinedOutput(); err == nil {
			t.Errorf("rendered for Kubernetes 1.29:\n%.300s", out)
		}
		render(t, "rel", "ns1", "--kube-version", "v1.30.0")
	})
	t.Run("dashboard uid per release", func(t *testing.T) {
		uid := func(rel, ns string) (string, string) {
			docs := render(t, rel, ns, "--set", "monitoring.dashboard.enabled=true")
			var d struct{ UID, Title string }
			if err := json.Unmarshal([]byte(get(find(docs, "ConfigMap"), "data", "batchgate.json").(string)), &d); err != nil {
				t.Fatal(err)
			}
			if d.UID == "" || len(d.UID) > 40 {
				t.Errorf("dashboard uid %q: want 1-40 characters (Grafana's limit)", d.UID)
			}
			return d.UID, d.Title
		}
		u1, t1 := uid("rel", "ns1")
		u2, t2 := uid("rel2", "ns1")
		u3, _ := uid("rel", "ns2")
		if u1 == u2 || u1 == u3 || u2 == u3 || t1 == t2 {
			t.Errorf("dashboard uids %q %q %q (titles %q %q): want one per namespace and release", u1, u2, u3, t1, t2)
		}
		if again, _ := uid("rel", "ns1"); again != u1 {
			t.Errorf("uid not stable across upgrades: %q then %q", u1, again)
		}
	})
	t.Run("schema", func(t *testing.T) {
		for _, tc := range []struct{ set, want string }{
			{"replicas=3", "additional properties"},                         // a typo at the top
			{"keda.cooldownPeriod=60", "additional properties"},             // removed: acts only 0<->1
			{"monitoring.podMonitor.intervall=5s", "additional properties"}, // typo inside monitoring
			{"monitoring.prometheusRule.rejectionRatio=abc", "rejectionRatio"},
			{"keda.minReplicas=0", "minReplicas"},
			{"keda.fallback.behavior=sometimes", "behavior"},
			{"keda.fallback.replicas=9", "fallback.replicas"},
			{"runtime.maxBatchSize=2", "runtime.maxBatchSize"},
			{"fullnameOverride=a-name-that-is-far-too-long-for-pod-names-to-fit-xyz", "fullnameOverride"},
		} {
			out, err := renderErr(t, "rel", "ns1", "--set", tc.set)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("--set %s: want a failure naming %q, got %v\n%.400s", tc.set, tc.want, err, out)
			}
		}
		out, err := exec.Command(tool(t, "helm"), "lint", "--strict", chartDir(t), "--kube-version", kubeVersion, "--set", "replicas=3").CombinedOutput()
		if err == nil {
			t.Errorf("helm lint accepts an unknown key:\n%s", out)
		}
		if out, err := renderErr(t, "a-release-name-that-is-too-long-for-pods", "ns1"); err == nil || !strings.Contains(out, "at most 46") {
			t.Errorf("a 50-character fullname: want a failure, got %v\n%.300s", err, out)
		}
	})
	t.Run("startup budget grows with maxBatchSize", func(t *testing.T) {
		prev := 0
		for _, n := range []int{1, 4, 8, 32, 64} {
			docs := render(t, "rel", "ns1", "--set", fmt.Sprintf("proxy.maxBatchSize=%d,runtime.maxBatchSize=%d", n, n))
			checkDeployment(t, find(docs, "Deployment")) // asserts budget >= 2 x measured
			p := get(containerNamed(get(find(docs, "Deployment"), "spec", "template", "spec"), "runtime"), "startupProbe")
			budget := get(p, "periodSeconds").(int) * get(p, "failureThreshold").(int)
			if budget < prev {
				t.Errorf("maxBatchSize %d: startup budget %d s below the previous %d s", n, budget, prev)
			}
			prev = budget
			t.Logf("maxBatchSize %d: startup budget %d s (failureThreshold %v)", n, budget, get(p, "failureThreshold"))
		}
	})
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
	// a healthy pod does not; neither do pods of another namespace or of a
	// release named rel-batchgate-v2 in the same namespace; the rejection
	// ratio counts every inference route.
	sel := `namespace="ns1",pod="rel-batchgate-7d9f8-abcde"`
	unit := fmt.Sprintf(`rule_files: [%s]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'inference_runtime_connected{%[2]s}'
        values: '1 1 0 0 0 0 0'
      - series: 'inference_queue_depth{%[2]s}'
        values: '0 10 70 70 70 70 70 70 70'
      - series: 'inference_queue_depth{namespace="other",pod="rel-batchgate-7d9f8-xxxxx"}'
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
  # A saturated pod of release rel-batchgate-v2, same namespace: not ours.
  - interval: 1m
    input_series:
      - series: 'inference_queue_depth{%[2]s}'
        values: '1+0x15'
      - series: 'inference_queue_depth{namespace="ns1",pod="rel-batchgate-v2-abc12-xyz89"}'
        values: '99+0x15'
      - series: 'inference_runtime_connected{namespace="ns1",pod="rel-batchgate-v2-abc12-xyz89"}'
        values: '0+0x15'
    alert_rule_test:
      - eval_time: 15m
        alertname: BatchgateQueueSaturated
        exp_alerts: []
      - eval_time: 15m
        alertname: BatchgateRuntimeDisconnected
        exp_alerts: []
  # Mostly Open Inference Protocol traffic: 10 /predict and 1000 OIP infer
  # requests a minute, 20 rejections a minute (2%%, under the 5%% threshold;
  # over /predict alone it would be 200%%).
  - interval: 1m
    input_series:
      - series: 'inference_requests_total{%[2]s,route="/predict",code="200"}'
        values: '0+10x30'
      - series: 'inference_requests_total{%[2]s,route="/v2/models/infer",code="200"}'
        values: '0+980x30'
      - series: 'inference_requests_total{%[2]s,route="/v2/models/infer",code="429"}'
        values: '0+20x30'
      - series: 'inference_requests_total{%[2]s,route="/v2/health/ready",code="200"}'
        values: '0+60x30'
      - series: 'inference_rejections_total{%[2]s,reason="queue_full"}'
        values: '0+20x30'
    alert_rule_test:
      - eval_time: 30m
        alertname: BatchgateRejectionRateHigh
        exp_alerts: []
  # The same traffic with 10%% rejected fires.
  - interval: 1m
    input_series:
      - series: 'inference_requests_total{%[2]s,route="/predict",code="200"}'
        values: '0+10x30'
      - series: 'inference_requests_total{%[2]s,route="/v2/models/infer",code="200"}'
        values: '0+900x30'
      - series: 'inference_requests_total{%[2]s,route="/v2/models/infer",code="429"}'
        values: '0+100x30'
      - series: 'inference_rejections_total{%[2]s,reason="queue_full"}'
        values: '0+100x30'
    alert_rule_test:
      - eval_time: 30m
        alertname: BatchgateRejectionRateHigh
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations: {summary: "more than 0.05 of inference requests rejected for overload"}
`, rulesFile, sel)
	unitFile := filepath.Join(dir, "unit.yaml")
	os.WriteFile(unitFile, []byte(unit), 0o644)
	run(t, promtool, "test", "rules", unitFile)
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

// httpStatus returns the status of a GET.
func httpStatus(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Errorf("GET %s: %v", u, err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// containerPort returns the number of a container's port by name, 0 if none.
func containerPort(c any, name string) int {
	ps, _ := get(c, "ports").([]any)
	for _, p := range ps {
		if get(p, "name") == name {
			n, _ := get(p, "containerPort").(int)
			return n
		}
	}
	return 0
}

// TestScaledObjectOnPrometheus runs the proxy and runtime under a steady
// load of 12 concurrent clients, has a real Prometheus scrape the proxy every
// second with the labels Kubernetes discovery would add, and evaluates the
// exact query rendered into the ScaledObject. The same proxy is also scraped
// as three impostors: the same pod by a second job (a ServiceMonitor next to
// a PodMonitor), a pod of release rel-batchgate-v2 in the same namespace,
// and a pod of another namespace. The query must count the real pod once:
// about 12 requests queued or running, so KEDA's clamp(ceil(value /
// target), min, max) gives 3 replicas at a target of 4, the maximum at a
// target of 1 (the value is above it), the minimum at a target of 1000.
func TestScaledObjectOnPrometheus(t *testing.T) {
	const target, clients = 4, 12
	scaledObject := func(target int) (query string, threshold float64, lo, hi int) {
		docs := render(t, "rel", "ns1", "--set", fmt.Sprintf("keda.targetQueueDepth=%d", target))
		so := find(docs, "ScaledObject")
		threshold, _ = strconv.ParseFloat(get(so, "spec", "triggers", 0, "metadata", "threshold").(string), 64)
		return queryOf(t, docs), threshold, get(so, "spec", "minReplicaCount").(int), get(so, "spec", "maxReplicaCount").(int)
	}
	query, _, _, _ := scaledObject(target)
	exprs := chartExprs(t)
	root, dir := testenv.Root(t), t.TempDir()
	for _, pkg := range []string{"runtime", "proxy"} {
		run(t, "go", "build", "-C", root, "-o", filepath.Join(dir, pkg), "./"+pkg)
	}
	socket, port, metricsPort := filepath.Join(dir, "rt.sock"), testenv.FreePort(t), testenv.FreePort(t)
	rt := exec.Command(filepath.Join(dir, "runtime"), "serve", "-socket", socket, "-model", testenv.ResNet50Model(t),
		"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", filepath.Join(root, ".deps", "ort-cache"), "-max-batch-size", "1")
	start(t, rt)
	px := exec.Command(filepath.Join(dir, "proxy"))
	px.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "METRICS_PORT="+strconv.Itoa(metricsPort), "GRPC_PORT=0",
		"RUNTIME_SOCKET="+socket, "MAX_BATCH_SIZE=1", "LOG_LEVEL=warn", "DRAIN_DELAY=0s")
	start(t, px)
	proxyURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitHTTP(t, proxyURL+"/readyz")
	// /metrics is on METRICS_PORT only, which Prometheus scrapes below, as
	// the chart's monitors and annotations do.
	testenv.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if code := httpStatus(t, proxyURL+"/metrics"); code != 404 {
		t.Errorf("GET /metrics on the API port (PORT): %d, want 404", code)
	}

	promPort := testenv.FreePort(t)
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: batchgate
    static_configs:
      - targets: ['127.0.0.1:%[1]d']
        labels: {namespace: ns1, pod: rel-batchgate-7d9f8c6b5-abcde}
      - targets: ['127.0.0.1:%[1]d']
        labels: {namespace: ns2, pod: rel-batchgate-7d9f8c6b5-other}
      - targets: ['127.0.0.1:%[1]d']
        labels: {namespace: ns1, pod: rel-batchgate-v2-abc12-xyz89}
  - job_name: batchgate-second-monitor
    static_configs:
      - targets: ['127.0.0.1:%[1]d']
        labels: {namespace: ns1, pod: rel-batchgate-7d9f8c6b5-abcde}
`, metricsPort)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	start(t, exec.Command(tool(t, "prometheus"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort)))
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	testenv.WaitHTTP(t, promURL+"/-/ready")

	// Steady load, bounded: clients stop when the test has its samples or
	// after 90 s.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for c := range clients {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "POST", proxyURL+"/predict", bytes.NewReader(testenv.UniquePNG(c*100000+i)))
				req.Header.Set("Content-Type", "image/png")
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		})
	}

	// Five samples once the load has ramped up, one per scrape (the sleep
	// spaces samples; it waits for nothing).
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
	// The impostors are really there: the real pod has two series (two
	// jobs), and ns1 has a third pod, of release rel-batchgate-v2.
	sel := query[strings.Index(query, "{") : strings.LastIndex(query, "}")+1]
	for q, want := range map[string]int{
		"inference_queue_depth" + sel:                       2,
		`inference_queue_depth{namespace="ns1"}`:            3,
		`count by (pod) (inference_queue_depth` + sel + `)`: 1,
	} {
		if n := promSeries(t, promURL, q); n != want {
			t.Errorf("%s: %d series, want %d (the real pod scraped by two jobs; ns1 also has a pod of release rel-batchgate-v2)", q, n, want)
		}
	}
	slices.Sort(samples)
	median := samples[len(samples)/2]
	if median > clients {
		t.Errorf("queue depth %v (samples %v) above the %d clients: the query counts a pod twice or another release's pod", median, samples, clients)
	}
	// KEDA (through the HPA, AverageValue): ceil(value / threshold),
	// clamped to [minReplicaCount, maxReplicaCount], each read from the
	// ScaledObject rendered at that target.
	for _, tc := range []struct {
		target, want int
		why          string
	}{
		{target, 3, "ceil(12 / 4)"},
		{1, 5, "the maximum: the value is above it"},
		{1000, 1, "the minimum"},
	} {
		q, threshold, lo, hi := scaledObject(tc.target)
		if q != query {
			t.Fatalf("the query changes with the target: %s", q)
		}
		if tc.want == hi && median <= float64(hi)*threshold {
			t.Errorf("queue depth %v is not above max %d x target %v: the clamp to the maximum would not be exercised", median, hi, threshold)
		}
		got := min(max(int(math.Ceil(median/threshold)), lo), hi)
		if got != tc.want {
			t.Errorf("queue depth %v (samples %v) at target %v gives %d replicas, want %d (%s)", median, samples, threshold, got, tc.want, tc.why)
		}
		t.Logf("query = %v (samples %v): %d replicas at target %v (min %d, max %d)", median, samples, got, threshold, lo, hi)
	}

	// A few requests past their deadline, so that the rejection series
	// exist; then every dashboard and alert expression returns data.
	for range 3 {
		req, _ := http.NewRequest("POST", proxyURL+"/predict", bytes.NewReader(testenv.UniquePNG(-1)))
		req.Header.Set("Content-Type", "image/png")
		req.Header.Set("X-Request-Timeout-Ms", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	// Wait until Prometheus (scraping every second) has data for each
	// expression, 30 s at most.
	missing, waited := maps.Clone(exprs), time.Now()
	for deadline := waited.Add(30 * time.Second); len(missing) > 0 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		maps.DeleteFunc(missing, func(_, e string) bool { vs, err := promInstant(promURL, e); return err == nil && len(vs) > 0 })
	}
	t.Logf("%d of %d expressions with data after %.1f s", len(exprs)-len(missing), len(exprs), time.Since(waited).Seconds())
	for name, e := range missing {
		if n := promSeries(t, promURL, e); n == 0 {
			t.Errorf("%s returns no data under load (30 s after the expired requests): %s", name, e)
		}
	}
}

// TestModelDownload runs the fetch-model init container's script, as
// rendered, with sh and a stand-in curl (a slow copy): two pods sharing the
// volume download at the same time, each to its own temporary name, and
// both succeed; a third finds the model and downloads nothing; a corrupt
// download fails and leaves nothing behind.
func TestModelDownload(t *testing.T) {
	dir := t.TempDir()
	model := bytes.Repeat([]byte("batchgate model "), 1<<16) // 1 MiB
	src := filepath.Join(dir, "src.onnx")
	os.WriteFile(src, model, 0o644)
	sum := sha256.Sum256(model)
	docs := render(t, "rel", "ns1", "-f", filepath.Join(chartDir(t), "ci/model-pvc.yaml"),
		"--set", "model.url=https://models.example.com/model.onnx", "--set", "model.sha256="+hex.EncodeToString(sum[:]))
	fetch := containerNamed(get(find(docs, "Deployment"), "spec", "template", "spec"), "fetch-model")
	if get(fetch, "env", 0, "name") != "POD_NAME" || get(fetch, "env", 0, "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
		t.Fatalf("fetch-model: want POD_NAME from the downward API, env %v", get(fetch, "env"))
	}
	models := filepath.Join(dir, "models")
	os.Mkdir(models, 0o755)
	script := strings.ReplaceAll(get(fetch, "command", 2).(string), "/models", models)

	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	// curl -fsSL -o OUT URL: logs OUT, writes half, waits, writes the rest.
	os.WriteFile(filepath.Join(bin, "curl"), []byte(`#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
echo "$out" >> "$CURL_LOG"
head -c 524288 "$SRC" > "$out"; sleep 0.5; tail -c +524289 "$SRC" >> "$out"
`), 0o755)
	curlLog := filepath.Join(dir, "curl.log")
	fetchAs := func(pod, from string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "POD_NAME="+pod, "SRC="+from, "CURL_LOG="+curlLog)
		return cmd
	}
	var wg sync.WaitGroup
	for _, pod := range []string{"rel-batchgate-7d9f8-aaaaa", "rel-batchgate-7d9f8-bbbbb"} {
		wg.Go(func() {
			if out, err := fetchAs(pod, src).CombinedOutput(); err != nil {
				t.Errorf("pod %s: %v\n%s", pod, err, out)
			}
		})
	}
	wg.Wait()
	logged, _ := os.ReadFile(curlLog)
	names := strings.Fields(string(logged))
	if len(names) != 2 || names[0] == names[1] || !strings.Contains(strings.Join(names, " "), "aaaaa") || !strings.Contains(strings.Join(names, " "), "bbbbb") {
		t.Errorf("two pods downloaded to %v: want a temporary name per pod", names)
	}
	checkModels := func(wantModel bool) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(models, "model.onnx"))
		if wantModel && !bytes.Equal(got, model) {
			t.Errorf("model.onnx: %d bytes, %v; want the source's %d", len(got), err, len(model))
		}
		if !wantModel && err == nil {
			t.Error("model.onnx exists after a failed download")
		}
		left, _ := filepath.Glob(filepath.Join(models, "*partial*"))
		if len(left) > 0 {
			t.Errorf("temporary files left: %v", left)
		}
	}
	checkModels(true)
	if out, err := fetchAs("rel-batchgate-7d9f8-ccccc", src).CombinedOutput(); err != nil {
		t.Errorf("with the model present: %v\n%s", err, out)
	}
	if again, _ := os.ReadFile(curlLog); len(again) != len(logged) {
		t.Error("downloaded again although the model was there and verified")
	}
	os.Remove(filepath.Join(models, "model.onnx"))
	bad := filepath.Join(dir, "bad.onnx")
	os.WriteFile(bad, bytes.Repeat([]byte("x"), len(model)), 0o644)
	if out, err := fetchAs("rel-batchgate-7d9f8-ddddd", bad).CombinedOutput(); err == nil {
		t.Errorf("a corrupt download succeeded:\n%s", out)
	}
	checkModels(false)
}

// TestChartReadme: the values table of helm/batchgate/README.md (generated
// by helm-docs) has a row for every value, and no row for a value that is
// gone: regenerate it after changing values.yaml.
func TestChartReadme(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(chartDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "## Values")
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\| ([a-zA-Z0-9_.]+) \| `).FindAllStringSubmatch(table, -1) {
		if m[1] != "Key" {
			rows[m[1]] = true
		}
	}
	b, _ := os.ReadFile(filepath.Join(chartDir(t), "values.yaml"))
	var values object
	if err := yaml.Unmarshal(b, &values); err != nil {
		t.Fatal(err)
	}
	// has reports whether a key path exists in values.yaml.
	has := func(key string) bool {
		var o any = values
		for _, k := range strings.Split(key, ".") {
			m, ok := o.(object)
			if !ok {
				return false
			}
			if o, ok = m[k]; !ok {
				return false
			}
		}
		return true
	}
	for k := range rows {
		if !has(k) {
			t.Errorf("README.md documents %s, which values.yaml does not have", k)
		}
	}
	var walk func(prefix string, o any)
	walk = func(prefix string, o any) {
		if rows[prefix] {
			return // documented here, children included
		}
		if m, ok := o.(object); ok && len(m) > 0 {
			for k, v := range m {
				walk(strings.TrimPrefix(prefix+"."+k, "."), v)
			}
			return
		}
		t.Errorf("values.yaml has %s, which README.md's table lacks: run helm-docs", prefix)
	}
	walk("", values)
	if len(rows) < 50 {
		t.Errorf("README.md's values table has %d rows", len(rows))
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

// uniquePNG is testenv.UniquePNG, by the name controlloop_test.go calls.
var uniquePNG = testenv.UniquePNG
