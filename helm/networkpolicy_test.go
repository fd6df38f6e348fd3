package helm_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// peers describes a NetworkPolicy rule's `from` entries, sorted: "anywhere"
// (no `from`: every source), "own namespace" (podSelector {}), "namespace
// <name>", "ipBlock <cidr>", each with " pods k=v,..." when a podSelector
// narrows it.
func peers(rule any) []string {
	from, _ := get(rule, "from").([]any)
	if len(from) == 0 {
		return []string{"anywhere"}
	}
	var out []string
	for _, f := range from {
		var s string
		switch {
		case get(f, "namespaceSelector") != nil:
			s = "namespace " + fmt.Sprint(get(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"))
		case get(f, "ipBlock") != nil:
			s = "ipBlock " + fmt.Sprint(get(f, "ipBlock", "cidr"))
		default:
			s = "own namespace"
		}
		if labels, _ := get(f, "podSelector", "matchLabels").(object); len(labels) > 0 {
			var kv []string
			for k, v := range labels {
				kv = append(kv, fmt.Sprintf("%s=%v", k, v))
			}
			sort.Strings(kv)
			s += " pods " + strings.Join(kv, ",")
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// TestNetworkPolicy: a default install renders the NetworkPolicy. It
// selects the Deployment's pods, restricts ingress only, admits every
// source to the API port (clients must not be cut off) and only the
// scraper (Prometheus's namespace, narrowed to its pods when asked) to the
// metrics port, so no other pod reads /metrics or holds its connections.
// Each container port of the pod has exactly one rule; no other port is
// open. With apiFromAnywhere off, the API port takes the namespaces and
// peers listed; with no scraper listed the metrics port has no rule (a
// rule without `from` would admit everyone).
func TestNetworkPolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string            // helm template's; values files via valuesFile
		values string              // a values file, when not ""
		want   map[string][]string // port: its sources; nil: no NetworkPolicy
	}{
		{"defaults", nil, "", map[string][]string{
			"9999": {"anywhere"},
			"9464": {"namespace monitoring"},
		}},
		{"model versions", []string{"-f", filepath.Join(chartDir(t), "ci/models.yaml")}, "", map[string][]string{
			"9999": {"anywhere"},
			"9464": {"namespace monitoring"},
		}},
		{"own ports", []string{"--set", "service.port=8080,monitoring.metricsPort=9100"}, "", map[string][]string{
			"8080": {"anywhere"},
			"9100": {"namespace monitoring"},
		}},
		{"kube-prometheus-stack's Prometheus pods", nil, `
networkPolicy:
  metricsNamespaces: [monitoring, observability]
  metricsPodSelector: {app.kubernetes.io/name: prometheus}`, map[string][]string{
			"9999": {"anywhere"},
			"9464": {"namespace monitoring pods app.kubernetes.io/name=prometheus", "namespace observability pods app.kubernetes.io/name=prometheus"},
		}},
		{"metricsFrom", nil, `
networkPolicy:
  metricsFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prom}}
      podSelector: {matchLabels: {app: prometheus}}
    - ipBlock: {cidr: 10.1.0.0/16}`, map[string][]string{
			"9999": {"anywhere"},
			"9464": {"ipBlock 10.1.0.0/16", "namespace monitoring", "namespace prom pods app=prometheus"},
		}},
		{"metricsFrom alone", nil, "networkPolicy: {metricsNamespaces: [], metricsFrom: [{ipBlock: {cidr: 10.1.0.0/16}}]}", map[string][]string{
			"9999": {"anywhere"},
			"9464": {"ipBlock 10.1.0.0/16"},
		}},
		{"no scraper: metrics port closed", nil, "networkPolicy: {metricsNamespaces: []}", map[string][]string{
			"9999": {"anywhere"},
		}},
		{"API restricted", nil, "networkPolicy: {apiFromAnywhere: false}", map[string][]string{
			"9999": {"namespace ingress-nginx", "namespace monitoring", "own namespace"},
			"9464": {"namespace monitoring"},
		}},
		{"API restricted to the ingress controller's pods", nil, `
networkPolicy:
  apiFromAnywhere: false
  allowNamespaces: []
  apiFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
      podSelector: {matchLabels: {app.kubernetes.io/name: ingress-nginx}}`, map[string][]string{
			"9999": {"namespace ingress-nginx pods app.kubernetes.io/name=ingress-nginx", "own namespace"},
			"9464": {"namespace monitoring"},
		}},
		{"off", []string{"--set", "networkPolicy.enabled=false"}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.values != "" {
				args = append(valuesFile(t, tc.values), args...)
			}
			docs := render(t, "rel", "ns1", args...)
			if n := count(docs, "NetworkPolicy"); (tc.want == nil && n != 0) || (tc.want != nil && n != 1) {
				t.Fatalf("%d NetworkPolicies, want %d", n, min(len(tc.want), 1))
			}
			if tc.want == nil {
				return
			}
			np := find(docs, "NetworkPolicy")
			dep := find(docs, "Deployment")
			if get(np, "metadata", "name") != "rel-batchgate" {
				t.Errorf("name %v, want rel-batchgate", get(np, "metadata", "name"))
			}
			if sel, pods := get(np, "spec", "podSelector", "matchLabels"), get(dep, "spec", "selector", "matchLabels"); !reflect.DeepEqual(sel, pods) {
				t.Errorf("selects %v, the Deployment's pods are %v", sel, pods)
			}
			if types := fmt.Sprint(get(np, "spec", "policyTypes")); types != "[Ingress]" {
				t.Errorf("policyTypes %s, want [Ingress]: egress stays open", types)
			}
			got := map[string][]string{}
			for _, r := range get(np, "spec", "ingress").([]any) {
				ps, _ := get(r, "ports").([]any)
				if len(ps) == 0 {
					t.Errorf("rule %v: no port", r)
				}
				for _, p := range ps { // the API's rule: HTTP and gRPC
					if get(p, "protocol") != "TCP" {
						t.Errorf("rule %v: want TCP ports", r)
						continue
					}
					port := fmt.Sprint(get(p, "port"))
					if _, dup := got[port]; dup {
						t.Errorf("two rules for port %s", port)
					}
					got[port] = peers(r)
				}
			}
			// gRPC (service.grpcPort 8001) is the API: the same sources
			// as the HTTP port.
			api := fmt.Sprint(get(named(docs, "Service", "rel-batchgate"), "spec", "ports", 0, "port"))
			if !reflect.DeepEqual(got["8001"], got[api]) {
				t.Errorf("gRPC's port 8001 admits %v, the API port %s %v", got["8001"], api, got[api])
			}
			delete(got, "8001")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("sources by port\n %v\nwant\n %v", got, tc.want)
			}
			// The rules are the pod's ports: the proxy's http and metrics
			// (the runtimes listen on no port).
			var ports []string
			for _, c := range get(dep, "spec", "template", "spec", "containers").([]any) {
				cps, _ := get(c, "ports").([]any)
				for _, p := range cps {
					ports = append(ports, fmt.Sprint(get(p, "containerPort")))
				}
			}
			for port := range got {
				if !slices.Contains(ports, port) {
					t.Errorf("a rule for port %s, which no container listens on (%v)", port, ports)
				}
			}
		})
	}
	refused(t, []refusal{
		{"networkPolicy.apiFromAnywhere=yes", "want boolean"},
		{"networkPolicy.metricsFrom[0].namespace=monitoring", "additional properties 'namespace' not allowed"},
		{"networkPolicy.metricsPodSelector.app=1", "want string"},
		{"networkPolicy.metricsPodSelectors.app=prometheus", "additional properties 'metricsPodSelectors' not allowed"},
	})
}
