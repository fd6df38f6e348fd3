package helm_test

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/kubenode"
	"github.com/batchgate/batchgate/internal/testenv"
)

// The chart's images as containers/test.sh builds them (podman, local
// bases, the generated fp32 model).
const (
	proxyImage   = "localhost/batchgate-proxy:test"
	runtimeImage = "localhost/batchgate-runtime:test"
)

// TestRealNodeInstall installs the chart with its default values (only the
// image references set) on a real node (internal/kubenode: kubelet,
// containerd, kube-proxy) with KEDA's CRDs, waits for the pod to be Ready
// and sends POST /predict through the Service's ClusterIP (kube-proxy's
// rules), recording the time from `helm install` to the first 200.
func TestRealNodeInstall(t *testing.T) {
	kubenode.Check(t, "")
	helm := tool(t, "helm")
	crds := crdDirs(t)
	root := testenv.Root(t)
	b0 := time.Now()
	if out, err := exec.Command(filepath.Join(root, "containers", "test.sh"), "--build-only").CombinedOutput(); err != nil {
		t.Fatalf("containers/test.sh --build-only: %v\n%s", err, out)
	}
	t.Logf("images built (podman, cached layers reused) in %v", time.Since(b0).Round(100*time.Millisecond))

	n := kubenode.Start(t, kubenode.Options{})
	t.Logf("node usable in %v", n.BringUp.Round(10*time.Millisecond))
	i0 := time.Now()
	n.ImportPodmanImage(proxyImage)
	n.ImportPodmanImage(runtimeImage)
	t.Logf("images imported in %v", time.Since(i0).Round(100*time.Millisecond))
	n.KubectlT(t, "apply", "--server-side", "-f", crds[0]) // KEDA's: the default values render a ScaledObject
	n.KubectlT(t, "wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
	n.KubectlT(t, "create", "namespace", "bg")

	env := append(os.Environ(), "KUBECONFIG="+n.Kubeconfig, "HELM_CACHE_HOME="+t.TempDir(),
		"HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir(), "KUBECACHEDIR="+t.TempDir())
	t0 := time.Now()
	cmd := exec.Command(helm, "install", "bg", chartDir(t), "-n", "bg",
		"--set", "proxy.image.repository=localhost/batchgate-proxy,proxy.image.tag=test",
		"--set", "runtime.image.repository=localhost/batchgate-runtime,runtime.image.tag=test")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	defer func() {
		if t.Failed() {
			out, _ := n.Kubectl("describe", "pods", "-n", "bg")
			t.Logf("pods:\n%s", out)
			for _, c := range []string{"runtime", "proxy"} {
				out, _ := n.Kubectl("logs", "-n", "bg", "deploy/bg-batchgate", "-c", c, "--tail=30")
				t.Logf("%s log:\n%s", c, out)
			}
		}
	}()
	if out, err := n.Kubectl("rollout", "status", "-n", "bg", "deploy/bg-batchgate", "--timeout=180s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	t.Logf("Deployment rolled out %v after helm install", time.Since(t0).Round(100*time.Millisecond))
	clusterIP := strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", "bg", "bg-batchgate", "-o", "jsonpath={.spec.clusterIP}"))

	jpeg, err := os.ReadFile(filepath.Join(root, "proxy", "testdata", "grace_hopper.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:9999/predict?top_k=3", clusterIP)
	client := &http.Client{Timeout: 10 * time.Second}
	var status int
	var body string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "grace_hopper.jpg")
		fw.Write(jpeg)
		mw.Close()
		resp, err := client.Post(url, mw.FormDataContentType(), &buf)
		if err != nil {
			body = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status, body = resp.StatusCode, string(b)
		if status == 200 {
			break
		}
	}
	if status != 200 {
		t.Fatalf("POST %s: no 200 within 60 s after the rollout (last: %d %.300s)", url, status, body)
	}
	t.Logf("helm install to the first 200 through the ClusterIP: %v", time.Since(t0).Round(100*time.Millisecond))
	if !strings.Contains(body, `"predictions":[{"label"`) {
		t.Errorf("POST /predict answered %.300s", body)
	}
	restarts := n.KubectlT(t, "get", "pods", "-n", "bg", "-o", "jsonpath={range .items[*].status.initContainerStatuses[*]}{.name}={.restartCount} {end}{range .items[*].status.containerStatuses[*]}{.name}={.restartCount} {end}")
	t.Logf("restart counts: %s", restarts)
	for _, f := range strings.Fields(restarts) {
		if !strings.HasSuffix(f, "=0") {
			t.Errorf("container restarted: %s", f)
		}
	}
}
