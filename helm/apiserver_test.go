package helm_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is a real etcd + kube-apiserver on 127.0.0.1, with no nodes: it
// validates and stores objects, which is what the chart needs checked.
type cluster struct {
	kubeconfig string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	dir := t.TempDir()
	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
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
// server with the KEDA and prometheus-operator CRDs, then installs the chart
// into two namespaces with helm and uninstalls it.
func TestKubeAPIServer(t *testing.T) {
	kubectlPath = tool(t, "kubectl")
	c := startCluster(t)
	for _, dir := range crdDirs(t) {
		// Server-side: client-side apply of scaledjobs fails on the size of
		// its last-applied annotation.
		c.kubectl(t, "apply", "--server-side", "-f", dir)
	}
	c.kubectl(t, "wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
	for _, ns := range []string{"ns1", "ns2"} {
		c.kubectl(t, "create", "namespace", ns)
		// kube-controller-manager, which does not run here, would create it;
		// ServiceAccount admission needs it for the helm test pod.
		c.kubectl(t, "create", "serviceaccount", "default", "-n", ns)
	}

	helm := tool(t, "helm")
	for _, profile := range []string{"", "ci/keda-off.yaml", "ci/monitoring-on.yaml", "ci/model-pvc.yaml"} {
		args := []string{"template", "rel", chartDir(t), "-n", "ns1"}
		if profile != "" {
			args = append(args, "-f", filepath.Join(chartDir(t), profile))
		}
		manifest := run(t, helm, args...)
		f := filepath.Join(t.TempDir(), "m.yaml")
		os.WriteFile(f, manifest, 0o644)
		out := c.kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-n", "ns1", "-f", f)
		t.Logf("profile %q: %s", profile, strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; "))
	}

	env := append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HELM_CACHE_HOME="+t.TempDir(),
		"HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	helmIn := func(args ...string) []byte {
		cmd := exec.Command(helm, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	for _, ns := range []string{"ns1", "ns2"} {
		helmIn("install", "bg", chartDir(t), "-n", ns, "-f", filepath.Join(chartDir(t), "ci/monitoring-on.yaml"))
	}
	for _, ns := range []string{"ns1", "ns2"} {
		q := c.kubectl(t, "get", "scaledobject", "bg-batchgate", "-n", ns, "-o", "jsonpath={.spec.triggers[0].metadata.query}")
		if !strings.Contains(string(q), `namespace="`+ns+`"`) {
			t.Errorf("ScaledObject in %s queries %s", ns, q)
		}
		objs := []string{"get", "-n", ns, "configmap/bg-batchgate-dashboard"}
		for _, kind := range []string{"deployment", "service", "pdb", "prometheusrule", "servicemonitor", "podmonitor", "networkpolicy"} {
			objs = append(objs, kind+"/bg-batchgate")
		}
		c.kubectl(t, objs...) // fails if any is missing
	}
	for _, ns := range []string{"ns1", "ns2"} {
		helmIn("uninstall", "bg", "-n", ns, "--wait")
		if out := c.kubectl(t, "get", "deployment,scaledobject,service", "-n", ns, "-o", "name"); strings.TrimSpace(string(out)) != "" {
			t.Errorf("left after uninstall in %s: %s", ns, out)
		}
	}
}
