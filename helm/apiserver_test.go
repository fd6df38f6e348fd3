package helm_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// cluster is a real etcd + kube-apiserver on 127.0.0.1, with no nodes: it
// validates and stores objects, which is what the chart needs checked.
type cluster struct {
	kubeconfig string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	dir := t.TempDir()
	etcdPort, peerPort, apiPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	start(t, exec.Command(tool(t, "etcd"), "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort)))

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	token := "batchgate-test-token"
	os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600)
	start(t, exec.Command(tool(t, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--service-account-key-file="+keyFile, "--service-account-signing-key-file="+keyFile,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/24",
		"--endpoint-reconciler-type=none", "--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC"))

	c := &cluster{kubeconfig: filepath.Join(dir, "kubeconfig")}
	os.WriteFile(c.kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %s}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, apiPort, token)), 0o600)
	for i := 0; ; i++ { // bounded: 90 s
		if out, err := c.kubectlErr("get", "--raw", "/readyz"); err == nil && strings.TrimSpace(string(out)) == "ok" {
			break
		}
		if i == 900 {
			t.Fatal("kube-apiserver not ready after 90 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

func (c *cluster) kubectlErr(args ...string) ([]byte, error) {
	return exec.Command(kubectlPath, append([]string{"--kubeconfig", c.kubeconfig}, args...)...).CombinedOutput()
}

func (c *cluster) kubectl(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := c.kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var kubectlPath string

// crdDirs returns the KEDA and prometheus-operator CRD folders from their
// Go modules (fetched by `make test`).
func crdDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, m := range []struct{ mod, sub string }{
		{"github.com/kedacore/keda/v2@v2.21.0", "config/crd/bases"},
		{"github.com/prometheus-operator/prometheus-operator@v0.85.0", "example/prometheus-operator-crd"},
	} {
		out, err := exec.Command("go", "mod", "download", "-json", m.mod).Output()
		if err != nil {
			t.Fatalf("go mod download %s: %v", m.mod, err)
		}
		dir := jsonField(string(out), "Dir")
		dirs = append(dirs, filepath.Join(dir, m.sub))
	}
	return dirs
}

// jsonField extracts a top-level string field from go mod download's JSON.
func jsonField(js, field string) string {
	i := strings.Index(js, `"`+field+`": "`)
	if i < 0 {
		return ""
	}
	rest := js[i+len(field)+5:]
	return rest[:strings.Index(rest, `"`)]
}

// TestKubeAPIServer validates every rendered profile against a real API
// server with the KEDA and prometheus-operator CRDs, checks that helm renders
// the PodMonitor exactly when the cluster serves its API (and warns in NOTES
// when it does not), then installs the chart into two namespaces with helm
// and uninstalls it.
func TestKubeAPIServer(t *testing.T) {
	kubectlPath = tool(t, "kubectl")
	c := startCluster(t)
	crds := crdDirs(t) // KEDA's, then the Prometheus Operator's
	applyCRDs := func(dir string) {
		// Server-side: client-side apply of scaledjobs fails on the size of
		// its last-applied annotation.
		c.kubectl(t, "apply", "--server-side", "-f", dir)
		c.kubectl(t, "wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
	}
	applyCRDs(crds[0])
	for _, ns := range []string{"ns1", "ns2"} {
		c.kubectl(t, "create", "namespace", ns)
		// kube-controller-manager, which does not run here, would create it;
		// ServiceAccount admission needs it for the helm test pod.
		c.kubectl(t, "create", "serviceaccount", "default", "-n", ns)
	}

	helm := tool(t, "helm")
	env := append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HELM_CACHE_HOME="+t.TempDir(),
		"HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir(), "KUBECACHEDIR="+t.TempDir())
	helmIn := func(args ...string) string {
		cmd := exec.Command(helm, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// helm asks the cluster which APIs it serves: a default install renders
	// a PodMonitor once the Prometheus Operator's CRDs are there, none (and
	// the NOTES warning) before.
	const warning = "WARNING: no PodMonitor or ServiceMonitor is rendered"
	out := helmIn("install", "bg", chartDir(t), "-n", "ns1", "--dry-run=server")
	if strings.Contains(out, "kind: PodMonitor") || !strings.Contains(out, warning) {
		t.Errorf("without the monitoring API: want no PodMonitor and the NOTES warning:\n%s", out)
	}
	applyCRDs(crds[1])
	out = helmIn("install", "bg", chartDir(t), "-n", "ns1", "--dry-run=server")
	if strings.Count(out, "kind: PodMonitor") != 1 || strings.Contains(out, "kind: ServiceMonitor") || strings.Contains(out, warning) {
		t.Errorf("with the monitoring API: want exactly one PodMonitor and no warning:\n%s", out)
	}
	if !strings.Contains(out, "monitoring.prometheusRelease") {
		t.Errorf("NOTES do not mention the kube-prometheus-stack release label:\n%s", out)
	}
	// NOTES on the metrics port, API keys and tracing.
	for _, tc := range []struct {
		name         string
		args         []string
		want, absent []string
	}{
		{"defaults", nil,
			[]string{"GET /metrics on the metrics port 9464 only", "port-forward deploy/bg-batchgate 9464", "a PodMonitor scrapes the pods' port metrics (9464)"},
			[]string{"API keys", "Tracing:", "without API keys", "metricsNamespaces is empty"}},
		{"ci/tracing-auth.yaml", []string{"-f", filepath.Join(chartDir(t), "ci/tracing-auth.yaml")},
			[]string{"API keys: on, from Secret batchgate-keys (key keys.yaml, re-read every 5s", "clients of batchgate.example.com need one",
				"with your API key", "Tracing: the proxy and the runtimes send OTLP/HTTP to http://otel-collector.observability:4318, sampler parentbased_traceidratio (0.05 of root traces)"},
			[]string{"without API keys"}},
		{"an Ingress without keys", []string{"--set", "ingress.enabled=true"}, []string{"publishes the API at batchgate.example.com without API keys"}, []string{"API keys: on"}},
		{"a ServiceMonitor", []string{"--set", "monitoring.serviceMonitor.enabled=true,monitoring.metricsPort=9100"},
			[]string{"a ServiceMonitor scrapes the pods' port metrics (9100) through the headless Service bg-batchgate-metrics"}, nil},
		{"metrics port closed", []string{"--set", "networkPolicy.enabled=true,networkPolicy.metricsNamespaces=null"}, []string{"metricsNamespaces is empty"}, nil},
	} {
		out := helmIn(append([]string{"install", "bg", chartDir(t), "-n", "ns1", "--dry-run=server"}, tc.args...)...)
		_, notes, _ := strings.Cut(out, "NOTES:")
		for _, w := range tc.want {
			if !strings.Contains(notes, w) {
				t.Errorf("%s: NOTES lack %q:\n%s", tc.name, w, notes)
			}
		}
		for _, a := range tc.absent {
			if strings.Contains(notes, a) {
				t.Errorf("%s: NOTES say %q:\n%s", tc.name, a, notes)
			}
		}
	}

	// Every profile, and the default as rendered for a cluster with the
	// monitoring API (its PodMonitor), validated strictly by the server.
	type profileArgs struct {
		name string
		args []string
	}
	var renders []profileArgs
	for _, profile := range profiles {
		r := profileArgs{profile, nil}
		if profile != "" {
			r.args = []string{"-f", filepath.Join(chartDir(t), profile)}
		}
		renders = append(renders, r)
	}
	renders = append(renders, profileArgs{"default, monitoring API", []string{"--api-versions", monitoringAPI}})
	for _, r := range renders {
		manifest := run(t, helm, templateArgs(t, "rel", "ns1", r.args...)...)
		f := filepath.Join(t.TempDir(), "m.yaml")
		os.WriteFile(f, manifest, 0o644)
		out := c.kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-n", "ns1", "-f", f)
		t.Logf("profile %q: %s", r.name, strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; "))
	}

	// Real installs: defaults plus the alerts, the dashboard and the
	// NetworkPolicy, so that every kind exists.
	for _, ns := range []string{"ns1", "ns2"} {
		helmIn("install", "bg", chartDir(t), "-n", ns, "--set",
			"monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true,networkPolicy.enabled=true,monitoring.prometheusRelease=kps")
	}
	uids := map[string]string{}
	for _, ns := range []string{"ns1", "ns2"} {
		q := c.kubectl(t, "get", "scaledobject", "bg-batchgate", "-n", ns, "-o", "jsonpath={.spec.triggers[0].metadata.query}")
		if !strings.Contains(string(q), `namespace="`+ns+`"`) {
			t.Errorf("ScaledObject in %s queries %s", ns, q)
		}
		// Stored as sent: the CRD's schema knows every field.
		if b := c.kubectl(t, "get", "scaledobject", "bg-batchgate", "-n", ns, "-o", "jsonpath={.spec.fallback.behavior} {.spec.triggers[0].metadata.ignoreNullValues}"); string(b) != "currentReplicasIfHigher false" {
			t.Errorf("ScaledObject in %s: fallback.behavior and ignoreNullValues stored as %q", ns, b)
		}
		if b := c.kubectl(t, "get", "pdb", "bg-batchgate", "-n", ns, "-o", "jsonpath={.spec.maxUnavailable} {.spec.unhealthyPodEvictionPolicy}"); string(b) != "1 AlwaysAllow" {
			t.Errorf("PDB in %s stored as %q", ns, b)
		}
		if b := c.kubectl(t, "get", "podmonitor", "bg-batchgate", "-n", ns, "-o", "jsonpath={.metadata.labels.release}"); string(b) != "kps" {
			t.Errorf("PodMonitor in %s: release label %q, want kps", ns, b)
		}
		if b := c.kubectl(t, "get", "servicemonitor", "-n", ns, "-o", "name"); strings.TrimSpace(string(b)) != "" {
			t.Errorf("a ServiceMonitor next to the PodMonitor in %s: %s", ns, b)
		}
		objs := []string{"get", "-n", ns, "configmap/bg-batchgate-dashboard"}
		for _, kind := range []string{"deployment", "service", "pdb", "prometheusrule", "podmonitor", "networkpolicy"} {
			objs = append(objs, kind+"/bg-batchgate")
		}
		c.kubectl(t, objs...) // fails if any is missing
		dash := c.kubectl(t, "get", "configmap", "bg-batchgate-dashboard", "-n", ns, "-o", "jsonpath={.data.batchgate\\.json}")
		var d struct{ UID string }
		if err := json.Unmarshal(dash, &d); err != nil {
			t.Fatalf("dashboard in %s: %v", ns, err)
		}
		uids[ns] = d.UID
	}
	if uids["ns1"] == uids["ns2"] {
		t.Errorf("both releases' dashboards have uid %q: Grafana would keep one", uids["ns1"])
	}
	for _, ns := range []string{"ns1", "ns2"} {
		helmIn("uninstall", "bg", "-n", ns, "--wait")
		if out := c.kubectl(t, "get", "deployment,scaledobject,service,podmonitor", "-n", ns, "-o", "name"); strings.TrimSpace(string(out)) != "" {
			t.Errorf("left after uninstall in %s: %s", ns, out)
		}
	}
}
