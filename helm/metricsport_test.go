package helm_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// selects reports whether a matchLabels selector selects an object's labels.
func selects(sel, labels any) bool {
	s, _ := sel.(object)
	l, _ := labels.(object)
	if len(s) == 0 {
		return false
	}
	for k, v := range s {
		if l[k] != v {
			return false
		}
	}
	return true
}

// servicePorts returns a Service's ports as "name:port->targetPort".
func servicePorts(svc any) []string {
	var out []string
	ps, _ := get(svc, "spec", "ports").([]any)
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%v:%v->%v", get(p, "name"), get(p, "port"), get(p, "targetPort")))
	}
	return out
}

// TestMetricsPort: the proxy serves /metrics on METRICS_PORT only
// (monitoring.metricsPort), so everything that scrapes targets that port:
// the container port `metrics`, the prometheus.io/port annotation, the
// PodMonitor, and the ServiceMonitor through a headless Service of its own
// that carries the metrics port only. The API's Service keeps the API port
// alone (a LoadBalancer never publishes metrics), and the probes stay
// /readyz and /healthz on the API port.
func TestMetricsPort(t *testing.T) {
	api := []string{"--api-versions", monitoringAPI}
	type ports struct {
		PORT, METRICS_PORT string // the proxy's env
		http, metrics      int    // its container ports
		annotation, path   any    // prometheus.io/port and /path
		apiService         []string
		metricsService     []string // <fullname>-metrics, "" when absent
		monitor            string   // the monitor's endpoint: kind port path
		probes             []string // path@port of the proxy's probes
	}
	probes := []string{"/readyz@http", "/healthz@http"}
	for _, tc := range []struct {
		name string
		args []string
		want ports
	}{
		{"default", nil, ports{"9999", "9464", 9999, 9464, "9464", "/metrics",
			[]string{"http:9999->http", "grpc:8001->grpc"}, nil, "", probes}},
		{"PodMonitor", api, ports{"9999", "9464", 9999, 9464, "9464", "/metrics",
			[]string{"http:9999->http", "grpc:8001->grpc"}, nil, "PodMonitor metrics /metrics", probes}},
		{"ServiceMonitor", append([]string{"--set", "monitoring.serviceMonitor.enabled=true"}, api...), ports{"9999", "9464", 9999, 9464, "9464", "/metrics",
			[]string{"http:9999->http", "grpc:8001->grpc"}, []string{"metrics:9464->metrics"}, "ServiceMonitor metrics /metrics", probes}},
		{"own ports", append([]string{"--set", "monitoring.metricsPort=9100,service.port=8080"}, api...), ports{"8080", "9100", 8080, 9100, "9100", "/metrics",
			[]string{"http:8080->http", "grpc:8001->grpc"}, nil, "PodMonitor metrics /metrics", probes}},
		{"LoadBalancer API with a ServiceMonitor", []string{"--set", "service.type=LoadBalancer,monitoring.serviceMonitor.enabled=true,monitoring.metricsPort=9100"},
			ports{"9999", "9100", 9999, 9100, "9100", "/metrics",
				[]string{"http:9999->http", "grpc:8001->grpc"}, []string{"metrics:9100->metrics"}, "ServiceMonitor metrics /metrics", probes}},
		{"models", append([]string{"-f", filepath.Join(chartDir(t), "ci/models.yaml")}, api...), ports{"9999", "9464", 9999, 9464, "9464", "/metrics",
			[]string{"http:9999->http", "grpc:8001->grpc"}, nil, "PodMonitor metrics /metrics", probes}},
		{"annotations off", []string{"--set", "monitoring.scrapeAnnotations=false"}, ports{"9999", "9464", 9999, 9464, nil, nil,
			[]string{"http:9999->http", "grpc:8001->grpc"}, nil, "", probes}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := render(t, "rel", "ns1", tc.args...)
			dep := find(docs, "Deployment")
			tmpl := get(dep, "spec", "template")
			proxy := get(tmpl, "spec", "containers", 0)
			env := envOf(proxy)
			got := ports{
				PORT: env["PORT"], METRICS_PORT: env["METRICS_PORT"],
				http: containerPort(proxy, "http"), metrics: containerPort(proxy, "metrics"),
				annotation: get(tmpl, "metadata", "annotations", "prometheus.io/port"),
				path:       get(tmpl, "metadata", "annotations", "prometheus.io/path"),
				apiService: servicePorts(named(docs, "Service", "rel-batchgate")),
			}
			if ms := named(docs, "Service", "rel-batchgate-metrics"); ms != nil {
				got.metricsService = servicePorts(ms)
				// Headless, whatever service.type is: Prometheus scrapes
				// each pod, nothing is load-balanced or published.
				if get(ms, "spec", "clusterIP") != "None" || get(ms, "spec", "type") != "ClusterIP" {
					t.Errorf("Service rel-batchgate-metrics: type %v clusterIP %v, want a headless ClusterIP", get(ms, "spec", "type"), get(ms, "spec", "clusterIP"))
				}
				if !reflect.DeepEqual(get(ms, "spec", "selector"), get(dep, "spec", "selector", "matchLabels")) {
					t.Errorf("Service rel-batchgate-metrics selects %v, the Deployment's pods are %v", get(ms, "spec", "selector"), get(dep, "spec", "selector", "matchLabels"))
				}
			}
			if pm := find(docs, "PodMonitor"); pm != nil {
				e := get(pm, "spec", "podMetricsEndpoints", 0)
				got.monitor = fmt.Sprintf("PodMonitor %v %v", get(e, "port"), get(e, "path"))
			}
			if sm := find(docs, "ServiceMonitor"); sm != nil {
				e := get(sm, "spec", "endpoints", 0)
				got.monitor = fmt.Sprintf("ServiceMonitor %v %v", get(e, "port"), get(e, "path"))
				// It selects the metrics Service, not the API's.
				sel := get(sm, "spec", "selector", "matchLabels")
				var selected []string
				for _, d := range docs {
					if d["kind"] == "Service" && selects(sel, get(d, "metadata", "labels")) {
						selected = append(selected, get(d, "metadata", "name").(string))
					}
				}
				if want := []string{"rel-batchgate-metrics"}; !slices.Equal(selected, want) {
					t.Errorf("the ServiceMonitor selects Services %v, want %v", selected, want)
				}
			}
			for _, p := range []string{"readinessProbe", "livenessProbe"} {
				got.probes = append(got.probes, fmt.Sprintf("%v@%v", get(proxy, p, "httpGet", "path"), get(proxy, p, "httpGet", "port")))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			// helm test checks that the API port does not serve /metrics.
			script, _ := get(find(docs, "Pod"), "spec", "containers", 0, "command", 2).(string)
			if !strings.Contains(script, "$api/metrics)") || !strings.Contains(script, `[ "$code" != 200 ]`) {
				t.Errorf("helm test does not check /metrics off the API port:\n%s", script)
			}
		})
	}
	refused(t, []refusal{
		{"monitoring.metricsPort=9999", "METRICS_PORT must differ from PORT"},
		{"monitoring.metricsPort=8080,service.port=8080", "METRICS_PORT must differ from PORT"},
		{"monitoring.metricsPort=0", "metricsPort"},
		{"monitoring.metricsPort=65536", "metricsPort"},
		{"monitoring.metricsPort=abc", "metricsPort"},
		{"networkPolicy.metricsNamespace=monitoring", "additional properties"},
	})
}

// TestIngressAPIOnly: every Ingress path goes to the API Service's API
// port, whatever the profile; no Service an Ingress names carries the
// metrics port.
func TestIngressAPIOnly(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		paths []string // want: every one to rel-batchgate:http
	}{
		{"monitoring-on", []string{"-f", filepath.Join(chartDir(t), "ci/monitoring-on.yaml")}, []string{"/predict", "/v2", "/docs", "/openapi.json"}},
		{"tracing-auth", []string{"-f", filepath.Join(chartDir(t), "ci/tracing-auth.yaml")}, []string{"/predict", "/v2", "/docs", "/openapi.json"}},
		{"with the metrics Service", []string{"--set", "ingress.enabled=true,monitoring.serviceMonitor.enabled=true"}, []string{"/predict", "/v2", "/docs", "/openapi.json"}},
		// A /metrics path still goes to the API port, which answers 404.
		{"/metrics listed", []string{"--set", "ingress.enabled=true,ingress.paths={/predict,/metrics}"}, []string{"/predict", "/metrics"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := render(t, "rel", "ns1", tc.args...)
			ing := find(docs, "Ingress")
			if ing == nil {
				t.Fatal("no Ingress")
			}
			metricsPort := envOf(get(find(docs, "Deployment"), "spec", "template", "spec", "containers", 0))["METRICS_PORT"]
			var got, want []string
			for _, r := range get(ing, "spec", "rules").([]any) {
				for _, p := range get(r, "http", "paths").([]any) {
					svc, port := get(p, "backend", "service", "name"), get(p, "backend", "service", "port", "name")
					got = append(got, fmt.Sprintf("%v -> %v:%v", get(p, "path"), svc, port))
					for _, sp := range servicePorts(named(docs, "Service", fmt.Sprint(svc))) {
						if strings.HasPrefix(sp, "metrics:") || strings.Contains(sp, ":"+metricsPort+"->") {
							t.Errorf("the Ingress routes to Service %v, which carries the metrics port (%s)", svc, sp)
						}
					}
				}
			}
			for _, p := range tc.paths {
				want = append(want, p+" -> rel-batchgate:http")
			}
			if !slices.Equal(got, want) {
				t.Errorf("Ingress paths\n %v\nwant\n %v", got, want)
			}
		})
	}
}

// TestNetworkPolicyMetrics: with apiFromAnywhere off, the API port is open
// to the release's namespace and allowNamespaces; the metrics port to
// metricsNamespaces only (the scraper), never to wherever the API is open;
// with no metricsNamespaces there is no rule for it (a rule with an empty
// `from` would admit every source, which only the API's may do: "anywhere").
// The defaults are TestNetworkPolicy's (networkpolicy_test.go).
func TestNetworkPolicyMetrics(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values string
		want   map[string][]string // port: its sources
	}{
		{"API by namespace", "networkPolicy: {enabled: true, apiFromAnywhere: false}", map[string][]string{
			"9999": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
			"8001": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
			"9464": {"namespace monitoring"},
		}},
		{"own namespaces", "networkPolicy: {enabled: true, apiFromAnywhere: false, allowNamespaces: [ingress-nginx], metricsNamespaces: [prometheus, observability]}", map[string][]string{
			"9999": {"namespace ingress-nginx", "own namespace"},
			"8001": {"namespace ingress-nginx", "own namespace"},
			"9464": {"namespace observability", "namespace prometheus"},
		}},
		{"own ports", "networkPolicy: {enabled: true, apiFromAnywhere: false}\nservice: {port: 8080}\nmonitoring: {metricsPort: 9100}", map[string][]string{
			"8080": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
			"8001": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
			"9100": {"namespace monitoring"},
		}},
		{"no metricsNamespaces: metrics port closed", "networkPolicy: {enabled: true, apiFromAnywhere: false, metricsNamespaces: []}", map[string][]string{
			"9999": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
			"8001": {"namespace monitoring", "namespace ingress-nginx", "own namespace"},
		}},
		{"tracing-auth profile", "", map[string][]string{
			"9999": {"anywhere"},
			"8001": {"anywhere"},
			"9464": {"namespace monitoring"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-f", filepath.Join(chartDir(t), "ci/tracing-auth.yaml")}
			if tc.values != "" {
				args = valuesFile(t, tc.values)
			}
			np := find(render(t, "rel", "ns1", args...), "NetworkPolicy")
			got := map[string][]string{}
			for _, r := range get(np, "spec", "ingress").([]any) {
				ps, _ := get(r, "ports").([]any)
				from, _ := get(r, "from").([]any)
				if len(ps) == 0 {
					t.Errorf("rule %v: no port", r)
					continue
				}
				for _, p := range ps { // the API's rule covers HTTP and gRPC
					port := fmt.Sprint(get(p, "port"))
					if len(from) == 0 {
						got[port] = []string{"anywhere"} // no source listed admits every source
					}
					for _, f := range from {
						switch {
						case get(f, "namespaceSelector") != nil:
							got[port] = append(got[port], "namespace "+fmt.Sprint(get(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name")))
						case get(f, "podSelector") != nil && len(get(f, "podSelector").(object)) == 0:
							got[port] = append(got[port], "own namespace")
						default:
							got[port] = append(got[port], fmt.Sprint(f))
						}
					}
					slices.Sort(got[port])
				}
			}
			for _, s := range tc.want {
				slices.Sort(s)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("sources by port\n %v\nwant\n %v", got, tc.want)
			}
		})
	}
}

// refusal is a --set value the chart must refuse, and what its error names.
type refusal struct{ set, want string }

// refused checks that each value fails to render with an error naming want.
func refused(t *testing.T, cases []refusal) {
	t.Helper()
	for _, tc := range cases {
		t.Run("refused: "+tc.set, func(t *testing.T) {
			out, err := renderErr(t, "rel", "ns1", "--set", tc.set)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("want a failure naming %q, got %v\n%.400s", tc.want, err, out)
			}
		})
	}
}
