package kubenode_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/kubenode"
)

// helloImage builds testdata/hello (static) into a one-layer image and
// returns the archive.
func helloImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "hello.tar")
	if err := kubenode.WriteImage(archive, "localhost/kubenode-hello:test", []string{"/hello"}, "65532:65532",
		[]kubenode.File{{Name: "hello", Mode: 0o755, Data: data}}); err != nil {
		t.Fatal(err)
	}
	return archive
}

const helloManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
      - name: hello
        image: localhost/kubenode-hello:test
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
`

// runHello applies the hello Deployment and Service and returns the pod's
// IP and the ClusterIP once the pod is Ready.
func runHello(t *testing.T, n *kubenode.Node) (podIP, clusterIP string) {
	t.Helper()
	manifest := filepath.Join(t.TempDir(), "hello.yaml")
	os.WriteFile(manifest, []byte(helloManifest), 0o644)
	n.KubectlT(t, "apply", "-f", manifest)
	n.KubectlT(t, "wait", "--for=condition=Ready", "pod", "-l", "app=hello", "--timeout=90s")
	podIP = strings.TrimSpace(n.KubectlT(t, "get", "pod", "-l", "app=hello", "-o", "jsonpath={.items[0].status.podIP}"))
	clusterIP = strings.TrimSpace(n.KubectlT(t, "get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}"))
	return podIP, clusterIP
}

// getUntil GETs url until it answers 200 or the deadline passes.
func getUntil(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(b)
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("GET %s: no 200 within %v (last: %s)", url, timeout, last)
	return ""
}

// TestNodeRunsPod brings a node up, runs a Deployment's pod from a locally
// built image, and reaches it by its pod IP and through its Service's
// ClusterIP (kube-proxy's iptables rules). Start's cleanup then checks that
// nothing is left.
func TestNodeRunsPod(t *testing.T) {
	kubenode.Check(t, "")
	archive := helloImage(t)
	n := kubenode.Start(t, kubenode.Options{})
	for _, p := range n.Phases {
		t.Logf("bring-up: %-40s %v", p.Name, p.At)
	}
	t.Logf("bring-up: node usable in %v", n.BringUp.Round(10*time.Millisecond))
	t0 := time.Now()
	n.ImportImage(archive)
	podIP, clusterIP := runHello(t, n)
	t.Logf("pod Ready %v after apply (image import included)", time.Since(t0).Round(10*time.Millisecond))
	if out := getUntil(t, fmt.Sprintf("http://%s:8080/", podIP), 30*time.Second); !strings.HasPrefix(out, "hello from hello-") {
		t.Errorf("pod IP %s answered %q", podIP, out)
	}
	if out := getUntil(t, fmt.Sprintf("http://%s/", clusterIP), 30*time.Second); !strings.HasPrefix(out, "hello from hello-") {
		t.Errorf("ClusterIP %s answered %q", clusterIP, out)
	}
	t.Logf("ClusterIP answered %v after apply", time.Since(t0).Round(10*time.Millisecond))
}

// TestTeardownLeavesNothing runs a pod, then kills the kubelet and
// containerd with SIGKILL (as a crashed test would leave them: running
// containers, shims, mounts, a network namespace, iptables rules), tears
// down and asserts that no process, mount, cgroup, network namespace,
// link, iptables chain or rule, nftables table, changed sysctl or folder of
// the node remains.
func TestTeardownLeavesNothing(t *testing.T) {
	kubenode.Check(t, "")
	archive := helloImage(t)
	n := kubenode.Start(t, kubenode.Options{})
	n.ImportImage(archive)
	runHello(t, n)
	n.Kill("kubelet")
	n.Kill("containerd")
	// The crash must have left something for the teardown to find.
	netns, _ := os.ReadDir("/run/netns")
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	mounts := strings.Count(string(mountinfo), n.Dir+"/")
	t.Logf("after the crash: %d network namespaces, %d mounts under %s", len(netns), mounts, n.Dir)
	if len(netns) == 0 || mounts == 0 {
		t.Errorf("the crash left no network namespace or mount: the teardown's fallbacks are not exercised")
	}
	t0 := time.Now()
	if err := n.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("teardown after a crash took %v", time.Since(t0).Round(10*time.Millisecond))
	if left := n.Leftovers(); len(left) > 0 {
		t.Errorf("left behind:\n  %s", strings.Join(left, "\n  "))
	}
}
