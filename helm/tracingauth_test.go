package helm_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// podContainers returns a pod spec's init containers and containers, in
// order.
func podContainers(spec any) []any {
	var out []any
	for _, k := range []string{"initContainers", "containers"} {
		cs, _ := get(spec, k).([]any)
		out = append(out, cs...)
	}
	return out
}

// TestTracing: tracing.endpoint renders the standard OpenTelemetry env on
// the proxy and on every runtime container (the single runtime, or each
// version of `models`), nothing on the download init containers or the
// test pod, and nothing at all while the endpoint is empty. The resource
// attributes name the namespace and pod through the downward API (defined
// before OTEL_RESOURCE_ATTRIBUTES, which expands them), the container, and
// on runtimes the model.
func TestTracing(t *testing.T) {
	const ep = "http://otel-collector.observability:4318"
	type otel struct{ endpoint, service, sampler, arg, attrs string }
	const k8s = "k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.pod.name=$(K8S_POD_NAME)"
	proxy := otel{ep, "batchgate-proxy", "parentbased_traceidratio", "0.01", "k8s.container.name=proxy," + k8s}
	runtime := otel{ep, "batchgate-runtime", "parentbased_traceidratio", "0.01", "batchgate.model.variant=fp32,k8s.container.name=runtime," + k8s}
	with := func(o otel, f func(*otel)) otel { f(&o); return o }
	models := []string{"-f", filepath.Join(chartDir(t), "ci/models.yaml")}
	for _, tc := range []struct {
		name string
		args []string
		want map[string]otel // by container; any other container has no OTEL_ env
	}{
		{"off by default", nil, map[string]otel{}},
		{"off: sampler and ratio without an endpoint", []string{"--set", "tracing.sampler=always_on,tracing.ratio=0.5"}, map[string]otel{}},
		{"off with models", models, map[string]otel{}},
		{"single runtime", []string{"--set", "tracing.endpoint=" + ep}, map[string]otel{"proxy": proxy, "runtime": runtime}},
		{"int8 runtime", []string{"--set", "tracing.endpoint=" + ep + ",model.variant=int8"}, map[string]otel{"proxy": proxy,
			"runtime": with(runtime, func(o *otel) { o.attrs = "batchgate.model.variant=int8,k8s.container.name=runtime," + k8s })}},
		{"models: 2 versions", append(slices.Clone(models), "--set", "tracing.endpoint="+ep), map[string]otel{"proxy": proxy,
			"runtime-v1": with(runtime, func(o *otel) {
				o.attrs = "batchgate.model.name=resnet50,batchgate.model.variant=fp32,batchgate.model.version=v1,k8s.container.name=runtime-v1," + k8s
			}),
			"runtime-v2": with(runtime, func(o *otel) {
				o.attrs = "batchgate.model.name=resnet50,batchgate.model.variant=int8,batchgate.model.version=v2,k8s.container.name=runtime-v2," + k8s
			}),
		}},
		{"always_on: no ratio", []string{"--set", "tracing.endpoint=" + ep + ",tracing.sampler=parentbased_always_on"}, map[string]otel{
			"proxy":   with(proxy, func(o *otel) { o.sampler, o.arg = "parentbased_always_on", "" }),
			"runtime": with(runtime, func(o *otel) { o.sampler, o.arg = "parentbased_always_on", "" }),
		}},
		{"ratio from --set (a string)", []string{"--set", "tracing.endpoint=" + ep + ",tracing.ratio=0.25"}, map[string]otel{
			"proxy":   with(proxy, func(o *otel) { o.arg = "0.25" }),
			"runtime": with(runtime, func(o *otel) { o.arg = "0.25" }),
		}},
		{"traceidratio 1", []string{"--set", "tracing.endpoint=" + ep + ",tracing.sampler=traceidratio,tracing.ratio=1"}, map[string]otel{
			"proxy":   with(proxy, func(o *otel) { o.sampler, o.arg = "traceidratio", "1" }),
			"runtime": with(runtime, func(o *otel) { o.sampler, o.arg = "traceidratio", "1" }),
		}},
		{"ci/tracing-auth.yaml: own resource attributes", []string{"-f", filepath.Join(chartDir(t), "ci/tracing-auth.yaml")}, map[string]otel{
			"proxy": with(proxy, func(o *otel) {
				o.arg, o.attrs = "0.05", "deployment.environment=staging,k8s.container.name=proxy,"+k8s
			}),
			"runtime": with(runtime, func(o *otel) {
				o.arg, o.attrs = "0.05", "batchgate.model.variant=fp32,deployment.environment=staging,k8s.container.name=runtime,"+k8s
			}),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := render(t, "rel", "ns1", tc.args...)
			spec := get(find(docs, "Deployment"), "spec", "template", "spec")
			got := map[string]otel{}
			for _, c := range podContainers(spec) {
				name := get(c, "name").(string)
				env := envOf(c)
				var names []string
				es, _ := get(c, "env").([]any)
				for _, e := range es {
					names = append(names, get(e, "name").(string))
				}
				traced := slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "OTEL_") || strings.HasPrefix(n, "K8S_") })
				if !traced {
					continue
				}
				got[name] = otel{env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_SERVICE_NAME"], env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"], env["OTEL_RESOURCE_ATTRIBUTES"]}
				// $(K8S_POD_NAME) expands only from an entry above it.
				for v, field := range map[string]string{"K8S_POD_NAME": "metadata.name", "K8S_NAMESPACE_NAME": "metadata.namespace"} {
					if envFrom(c, v) == nil || get(envFrom(c, v), "fieldRef", "fieldPath") != field {
						t.Errorf("%s: %s is not the downward API's %s: %v", name, v, field, envFrom(c, v))
					}
					if slices.Index(names, v) > slices.Index(names, "OTEL_RESOURCE_ATTRIBUTES") {
						t.Errorf("%s: %s comes after OTEL_RESOURCE_ATTRIBUTES, which cannot expand it: %v", name, v, names)
					}
				}
				if _, ok := env["OTEL_TRACES_SAMPLER_ARG"]; ok != (got[name].arg != "") {
					t.Errorf("%s: OTEL_TRACES_SAMPLER_ARG present but empty", name)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("OTEL env by container\n got  %+v\n want %+v", got, tc.want)
			}
			// Every runtime container is traced when the proxy is.
			for name := range runtimeSidecars(spec) {
				if _, ok := got[name]; ok != (len(tc.want) > 0) {
					t.Errorf("runtime %s traced: %v, the proxy: %v", name, ok, len(tc.want) > 0)
				}
			}
			if s := fmt.Sprint(get(find(docs, "Pod"), "spec", "containers", 0, "env")); strings.Contains(s, "OTEL_") {
				t.Errorf("the helm test pod has OTEL env: %s", s)
			}
		})
	}
	for _, tc := range []struct{ values, want string }{
		{"tracing: {ratio: 1.5}", "ratio"},
		{"tracing: {ratio: -0.1}", "ratio"},
		{`tracing: {ratio: "1.5"}`, "ratio"},
		{`tracing: {ratio: "10%"}`, "ratio"},
		{"tracing: {sampler: sometimes}", "sampler"},
		{"tracing: {sampler: jaeger_remote}", "sampler"},
		{"tracing: {endpoint: 'otel-collector:4318'}", "endpoint"},
		{"tracing: {endpoint: 'grpc://otel-collector:4317'}", "endpoint"},
		{"tracing: {resourceAttributes: {team: 'a,b=c'}}", "resourceAttributes"},
		{"tracing: {resourceAttributes: {version: 2}}", "resourceAttributes"},
		{"tracing: {enabled: true}", "additional properties"},
	} {
		t.Run("refused: "+tc.values, func(t *testing.T) {
			out, err := renderErr(t, "rel", "ns1", valuesFile(t, tc.values)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("want a failure naming %q, got %v\n%.400s", tc.want, err, out)
			}
		})
	}
}

// TestAuth: auth.existingSecret mounts the Secret on the proxy as a
// read-only folder (no subPath, no items: the kubelet updates it in place
// and the proxy reloads it) and sets AUTH_KEYS_FILE and AUTH_POLL_INTERVAL;
// nothing on the runtimes; nothing at all while it is empty. The helm test
// pod, which has no key, then checks that inferences are refused instead of
// classifying.
func TestAuth(t *testing.T) {
	type auth struct {
		keysFile, poll     string // the proxy's AUTH_KEYS_FILE, AUTH_POLL_INTERVAL
		secret             any    // the auth volume's secret
		mount              any    // the proxy's auth volumeMount
		mountedElsewhere   []string
		testPodClassifies  bool
		testPodExpects401s bool
	}
	secret := func(name string) any { return object{"secretName": name, "defaultMode": 0o440} }
	mount := object{"name": "auth", "mountPath": "/etc/batchgate/auth", "readOnly": true}
	for _, tc := range []struct {
		name string
		args []string
		want auth
	}{
		{"off by default", nil, auth{testPodClassifies: true}},
		{"off with models", []string{"-f", filepath.Join(chartDir(t), "ci/models.yaml")}, auth{testPodClassifies: true}},
		{"existingSecret", []string{"--set", "auth.existingSecret=batchgate-keys"},
			auth{"/etc/batchgate/auth/keys.yaml", "2s", secret("batchgate-keys"), mount, nil, false, true}},
		{"own key and poll interval", []string{"--set", "auth.existingSecret=team-a-keys,auth.secretKey=api-keys.yaml,auth.pollInterval=10s"},
			auth{"/etc/batchgate/auth/api-keys.yaml", "10s", secret("team-a-keys"), mount, nil, false, true}},
		{"with models", []string{"-f", filepath.Join(chartDir(t), "ci/models.yaml"), "--set", "auth.existingSecret=batchgate-keys"},
			auth{"/etc/batchgate/auth/keys.yaml", "2s", secret("batchgate-keys"), mount, nil, false, true}},
		{"ci/tracing-auth.yaml", []string{"-f", filepath.Join(chartDir(t), "ci/tracing-auth.yaml")},
			auth{"/etc/batchgate/auth/keys.yaml", "5s", secret("batchgate-keys"), mount, nil, false, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := render(t, "rel", "ns1", tc.args...)
			spec := get(find(docs, "Deployment"), "spec", "template", "spec")
			proxy := get(spec, "containers", 0)
			env := envOf(proxy)
			var got auth
			got.keysFile, got.poll = env["AUTH_KEYS_FILE"], env["AUTH_POLL_INTERVAL"]
			for _, v := range get(spec, "volumes").([]any) {
				if get(v, "name") == "auth" {
					got.secret = get(v, "secret")
				}
			}
			for _, c := range podContainers(spec) {
				ms, _ := get(c, "volumeMounts").([]any)
				for _, m := range ms {
					if get(m, "name") != "auth" {
						continue
					}
					if get(c, "name") == "proxy" {
						got.mount = m
					} else {
						got.mountedElsewhere = append(got.mountedElsewhere, get(c, "name").(string))
					}
				}
				if get(c, "name") != "proxy" {
					for n := range envOf(c) {
						if strings.HasPrefix(n, "AUTH_") {
							t.Errorf("%v has %s", get(c, "name"), n)
						}
					}
				}
			}
			script, _ := get(find(docs, "Pod"), "spec", "containers", 0, "command", 2).(string)
			got.testPodClassifies = strings.Contains(script, `grep -q '"predictions":\[{"label"'`)
			got.testPodExpects401s = strings.Contains(script, `[ "$code" = 401 ]`) && strings.Contains(script, "/v2/health/ready")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	refused(t, []refusal{
		{"auth.existingSecret=Batch_Keys", "existingSecret"},
		{"auth.secretKey=dir/keys.yaml", "secretKey"},
		{"auth.secretKey=", "secretKey"},
		{"auth.pollInterval=2", "pollInterval"},
		{"auth.keys=x", "additional properties"},
	})
}
