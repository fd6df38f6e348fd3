package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/kubenode"
	"github.com/batchgate/batchgate/internal/testenv"
)

// The serving scenarios' values: the chart's defaults except what a
// 2-core node forces. The defaults reserve 2 CPUs per pod (proxy 1 +
// runtime 1), so a second pod, or a rolling update's surge pod, would stay
// Pending; these requests let three pods schedule (3 x 0.55 CPU) while the
// limits stay the chart's (1 CPU each: the runtime keeps its one thread).
// No autoscaler runs here: two fixed replicas.
const rnServingValues = `
proxy:
  image: {repository: localhost/batchgate-proxy, tag: test}
  resources: {requests: {cpu: 100m}}
runtime:
  image: {repository: localhost/batchgate-runtime, tag: test}
  resources: {requests: {cpu: 450m}}
keda: {enabled: false}
hpa: {enabled: false}
replicaCount: 2
`

// TestRealNodeServing runs the chart's pods on a real node under load
// through the Service's ClusterIP and checks that nothing is lost:
//   - RollingUpdate: `helm upgrade` changing the pod template while three
//     clients send requests: no failed request, no connection reset, no
//     503 (the drain, Connection: close, readiness and the surge pod).
//   - DeletePod: `kubectl delete pod` under the same load: the same.
//   - RuntimeKilled: SIGKILL of one pod's runtime container: the kubelet
//     restarts the sidecar alone (not the proxy), requests to that pod get
//     fast 503s with Retry-After meanwhile, and the pod is Ready again.
//   - RuntimeStopped: SIGSTOP of the runtime: the liveness probe finds it
//     and the kubelet restarts it (the probe's short grace period: a
//     stopped process ignores SIGTERM), the proxy stays up.
//   - Resources: over the whole test, every container's memory working
//     set (the kubelet's /metrics/resource) stays under its limit, nothing
//     is OOM-killed, and only the faulted runtime restarted.
//   - ModelVersions: a 70/30 split of two versions holds through the
//     Service, and the canary gets no more than its share while the
//     primary restarts (rnModelVersions).
//   - TwoNamespaces: two releases, each Service reaching its own pod only.
//   - Autoscaling: KEDA, Prometheus finding the pods, load through the
//     Service: more pods, Ready and serving, then fewer (rnAutoscale).
//
// TestRealNodeChecks shows the checks failing on the defects they name.
func TestRealNodeServing(t *testing.T) {
	n, helm, env := rnStart(t)
	const ns, release = "serve", "rn"
	deploy := "deploy/" + release + "-batchgate"
	n.KubectlT(t, "create", "namespace", ns)
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte(rnServingValues), 0o644); err != nil {
		t.Fatal(err)
	}
	runHelm := func(args ...string) {
		t.Helper()
		cmd := exec.Command(helm, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	defer func() {
		if t.Failed() {
			out, _ := n.Kubectl("describe", "pods", "-n", ns)
			t.Logf("pods:\n%.20000s", out)
			out, _ = n.Kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp")
			t.Logf("events:\n%s", out)
		}
	}()
	t0 := time.Now()
	runHelm("install", release, chartDir(t), "-n", ns, "-f", values)
	rollout := func() {
		t.Helper()
		if out, err := n.Kubectl("rollout", "status", "-n", ns, deploy, "--timeout=240s"); err != nil {
			t.Fatalf("rollout: %v\n%s", err, out)
		}
	}
	rollout()
	t.Logf("2 replicas ready %v after helm install", time.Since(t0).Round(100*time.Millisecond))
	clusterIP := strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", ns, release+"-batchgate", "-o", "jsonpath={.spec.clusterIP}"))
	serviceURL := fmt.Sprintf("http://%s:9999/predict?top_k=1", clusterIP)
	mem := rnSampleMemory(t, n, ns)
	defer mem.stop()

	// Waits until the release has exactly two pods, both Ready, none
	// terminating (a rollout's old pods drain for several seconds after
	// `rollout status` returns).
	settled := func(timeout time.Duration) []rnPod {
		t.Helper()
		var pods []rnPod
		for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			pods = rnListPods(t, n, ns, release)
			ready := 0
			for _, p := range pods {
				if p.ready() && p.Metadata.DeletionTimestamp == nil {
					ready++
				}
			}
			if len(pods) == 2 && ready == 2 {
				return pods
			}
		}
		t.Fatalf("no 2 Ready pods (and nothing else) within %v: %d pods", timeout, len(pods))
		return nil
	}
	underLoad := func(t *testing.T, disrupt func()) {
		load := rnStartLoad(serviceURL, 3, 100*time.Millisecond, 3000)
		load.waitOK(t, 20, 60*time.Second)
		disrupt()
		settled(120 * time.Second)
		time.Sleep(2 * time.Second) // requests on the settled pods
		res := load.stop()
		report, problems := rnLoadCheck(res, 0)
		t.Log(report)
		for _, p := range problems {
			t.Error(p)
		}
	}

	t.Run("RollingUpdate", func(t *testing.T) {
		before := settled(60 * time.Second)
		underLoad(t, func() {
			u0 := time.Now()
			runHelm("upgrade", release, chartDir(t), "-n", ns, "-f", values, "--set", "podAnnotations.rollout=two")
			rollout()
			t.Logf("rolled out %v after helm upgrade", time.Since(u0).Round(100*time.Millisecond))
		})
		for _, p := range settled(10 * time.Second) {
			for _, old := range before {
				if p.Metadata.Name == old.Metadata.Name {
					t.Errorf("pod %s survived the upgrade: the pod template did not change", p.Metadata.Name)
				}
			}
		}
	})

	t.Run("DeletePod", func(t *testing.T) {
		victim := settled(60 * time.Second)[0].Metadata.Name
		underLoad(t, func() {
			n.KubectlT(t, "delete", "pod", "-n", ns, victim, "--wait=false")
			t.Logf("deleted pod %s", victim)
		})
	})

	// The fault scenarios send their requests to one pod's IP: the
	// Service would spread them over the healthy pod too.
	pod := settled(60 * time.Second)[0]
	podURL := fmt.Sprintf("http://%s:9999/predict?top_k=1", pod.Status.PodIP)
	runtimeRestarts := func() (runtime, proxy int, p rnPod) {
		t.Helper()
		for _, p := range rnListPods(t, n, ns, release) {
			if p.Metadata.Name == pod.Metadata.Name {
				rs, ps := rnFindStatus(p.Status.InitContainerStatuses, "runtime"), rnFindStatus(p.Status.ContainerStatuses, "proxy")
				if rs == nil || ps == nil {
					t.Fatalf("pod %s has no runtime or proxy status", pod.Metadata.Name)
				}
				return rs.RestartCount, ps.RestartCount, p
			}
		}
		t.Fatalf("pod %s is gone", pod.Metadata.Name)
		return 0, 0, rnPod{}
	}
	// signalRuntime signals the runtime container's process, then polls
	// the pod (and sends requests to it) until the runtime has restarted
	// and the pod is Ready again with the proxy never restarted.
	signalRuntime := func(t *testing.T, sig syscall.Signal, name string, within time.Duration) (restartedAfter time.Duration, res []rnResult) {
		r0, p0, p := runtimeRestarts()
		pid, err := n.ContainerPID(rnFindStatus(p.Status.InitContainerStatuses, "runtime").ContainerID)
		if err != nil {
			t.Fatal(err)
		}
		load := rnStartLoad(podURL, 1, 100*time.Millisecond, 2000)
		load.waitOK(t, 5, 30*time.Second)
		s0 := time.Now()
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatalf("kill -%s %d: %v", name, pid, err)
		}
		defer syscall.Kill(pid, syscall.SIGCONT) // never leave a stopped process behind
		for deadline := s0.Add(within); ; time.Sleep(500 * time.Millisecond) {
			r, pr, p := runtimeRestarts()
			if pr != p0 {
				t.Errorf("the proxy restarted (%d -> %d): a runtime fault must not restart it", p0, pr)
			}
			if r > r0 && restartedAfter == 0 {
				restartedAfter = time.Since(s0)
			}
			if restartedAfter != 0 && p.ready() {
				break
			}
			if time.Now().After(deadline) {
				load.stop()
				t.Fatalf("runtime restarts %d -> %d, pod ready %v, %v after kill -%s: want a restart and a Ready pod within %v",
					r0, r, p.ready(), time.Since(s0).Round(time.Second), name, within)
			}
		}
		t.Logf("kill -%s: runtime restarted %v after the signal, pod Ready again after %v",
			name, restartedAfter.Round(100*time.Millisecond), time.Since(s0).Round(100*time.Millisecond))
		load.waitOK(t, load.okCount()+3, 30*time.Second) // serving again
		return restartedAfter, load.stop()
	}

	t.Run("RuntimeKilled", func(t *testing.T) {
		_, res := signalRuntime(t, syscall.SIGKILL, "KILL", 90*time.Second)
		// The requests on the connection fail at once (connection lost),
		// new ones get 503 at once while the runtime restarts.
		report, problems := rnLoadCheck(res, time.Second)
		t.Log(report)
		for _, p := range problems {
			t.Error(p)
		}
	})

	t.Run("RuntimeStopped", func(t *testing.T) {
		after, res := signalRuntime(t, syscall.SIGSTOP, "STOP", 60*time.Second)
		events := n.KubectlT(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+pod.Metadata.Name)
		if !strings.Contains(events, "failed liveness probe") {
			t.Errorf("no liveness probe failure among the pod's events: the runtime restarted for another reason\n%s", events)
		}
		// The requests waiting on the stopped runtime get 503 when the proxy
		// declares the stall (about 3 s, docs/reliability.md), new ones at once.
		report, problems := rnLoadCheck(res, 5*time.Second)
		t.Logf("%s; restarted %v after SIGSTOP", report, after.Round(100*time.Millisecond))
		for _, p := range problems {
			t.Error(p)
		}
	})

	t.Run("Resources", func(t *testing.T) {
		peaks := mem.stop()
		pods := rnListPods(t, n, ns, release)
		if len(pods) == 0 {
			t.Fatal("no pods")
		}
		report, problems := rnResourceCheck(pods, peaks, map[string]int{pod.Metadata.Name + "/runtime": 2})
		t.Log(report)
		for _, p := range problems {
			t.Error(p)
		}
	})

	// The next releases need the node's CPU: the first one goes.
	runHelm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")

	t.Run("ModelVersions", func(t *testing.T) {
		rnModelVersions(t, n, runHelm, values)
	})
	t.Run("TwoNamespaces", func(t *testing.T) {
		rnTwoNamespaces(t, n, runHelm, values)
	})
	t.Run("Autoscaling", func(t *testing.T) {
		rnAutoscale(t, n, runHelm, values)
	})
}

// rnListPods lists a release's pods.
func rnListPods(t *testing.T, n *kubenode.Node, ns, release string) []rnPod {
	t.Helper()
	out := n.KubectlT(t, "get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance="+release, "-o", "json")
	var pods struct{ Items []rnPod }
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		t.Fatalf("pods: %v\n%.2000s", err, out)
	}
	return pods.Items
}

// rnResult is one request of a load.
type rnResult struct {
	At         time.Time
	Took       time.Duration
	Status     int    // 0: no answer
	RetryAfter bool   // the answer had a Retry-After header
	Err        string // the transport's error, with no answer
}

// rnLoad sends POST /predict from `clients` goroutines, each on its own
// keep-alive connection, one request every `interval`, each a different
// JPEG (no cache hit), until stop or `max` requests in all.
type rnLoad struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	res  []rnResult
	ok   int
}

func rnStartLoad(url string, clients int, interval time.Duration, max int) *rnLoad {
	l := &rnLoad{done: make(chan struct{})}
	var seq sync.Mutex
	next := 0
	for c := 0; c < clients; c++ {
		l.wg.Add(1)
		go func() { // exits at stop, or once max requests were sent
			defer l.wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				seq.Lock()
				i := next
				next++
				seq.Unlock()
				if i >= max {
					return
				}
				r := rnPost(client, url, testenv.UniqueJPEG(i))
				l.mu.Lock()
				l.res = append(l.res, r)
				if r.Status == 200 {
					l.ok++
				}
				l.mu.Unlock()
				select {
				case <-l.done:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return l
}

func rnPost(client *http.Client, url string, img []byte) rnResult {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "image.jpg")
	fw.Write(img)
	mw.Close()
	r := rnResult{At: time.Now()}
	resp, err := client.Post(url, mw.FormDataContentType(), &buf)
	r.Took = time.Since(r.At)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	r.Status, r.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After") != ""
	return r
}

func (l *rnLoad) okCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok
}

// waitOK waits until the load has had n answers 200.
func (l *rnLoad) waitOK(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); l.okCount() < n; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			res := l.stop()
			t.Fatalf("%d answers 200 within %v, want %d; %s", l.okCount(), timeout, n, rnTally(res))
		}
	}
}

// stop ends the load, waits for its goroutines and returns its results.
func (l *rnLoad) stop() []rnResult {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}

func rnTally(res []rnResult) string {
	counts := map[string]int{}
	for _, r := range res {
		switch {
		case r.Status == 0:
			counts["no answer"]++
		case r.RetryAfter:
			counts[fmt.Sprintf("%d Retry-After", r.Status)]++
		default:
			counts[fmt.Sprint(r.Status)]++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests:", len(res))
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, counts[k])
	}
	return b.String()
}

// rnLoadCheck checks a load's results. Every request is answered 200, or
// 429 with Retry-After (overload, the client's to retry). With fast503 > 0
// (a fault: the pod's runtime is down), a 503 with Retry-After answered
// within fast503 is also within the retry contract (docs/reliability.md):
// the proxy says so quickly rather than holding the request. Never
// allowed: no answer (a reset or a timeout), a 5xx without Retry-After, a
// 503 without a fault.
func rnLoadCheck(res []rnResult, fast503 time.Duration) (report string, problems []string) {
	var slowest time.Duration
	shown := 0
	for _, r := range res {
		var bad string
		switch {
		case r.Status == 200, r.Status == 429 && r.RetryAfter:
		case r.Status == 503 && r.RetryAfter && fast503 > 0:
			slowest = max(slowest, r.Took)
			if r.Took > fast503 {
				bad = fmt.Sprintf("503 after %v (allowed %v): a down runtime must be answered quickly", r.Took.Round(time.Millisecond), fast503)
			}
		case r.Status == 0:
			bad = "no answer: " + r.Err
		default:
			bad = fmt.Sprintf("answered %d (Retry-After %v)", r.Status, r.RetryAfter)
		}
		if bad != "" {
			if shown++; shown <= 10 {
				problems = append(problems, fmt.Sprintf("request at %s: %s", r.At.Format("15:04:05.000"), bad))
			}
		}
	}
	if shown > 10 {
		problems = append(problems, fmt.Sprintf("... %d failed requests in all", shown))
	}
	report = rnTally(res)
	if slowest > 0 {
		report += fmt.Sprintf("; slowest 503 %v", slowest.Round(time.Millisecond))
	}
	if len(res) == 0 {
		problems = append(problems, "no requests sent")
	}
	return report, problems
}

// rnMemory samples the kubelet's /metrics/resource (through the API
// server's node proxy) every 3 s and keeps each container's peak working
// set, by "pod/container".
type rnMemory struct {
	done  chan struct{}
	over  chan map[string]float64
	once  sync.Once
	peaks map[string]float64
}

func rnSampleMemory(t *testing.T, n *kubenode.Node, ns string) *rnMemory {
	m := &rnMemory{done: make(chan struct{}), over: make(chan map[string]float64, 1)}
	path := "/api/v1/nodes/" + n.Name + "/proxy/metrics/resource"
	go func() { // exits at stop
		peaks := map[string]float64{}
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		for {
			if out, err := n.Kubectl("get", "--raw", path); err == nil {
				if ms, err := testenv.ParseMetrics(out); err == nil {
					for _, s := range ms.Samples() {
						if s.Name == "container_memory_working_set_bytes" && s.Labels["namespace"] == ns {
							k := s.Labels["pod"] + "/" + s.Labels["container"]
							peaks[k] = max(peaks[k], s.Value)
						}
					}
				}
			}
			select {
			case <-m.done:
				m.over <- peaks
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// stop ends the sampling and returns the peaks (the same on every call).
func (m *rnMemory) stop() map[string]float64 {
	m.once.Do(func() {
		close(m.done)
		m.peaks = <-m.over
	})
	return m.peaks
}

// rnResourceCheck checks that each container's peak working set stayed
// under its memory limit, that no container was OOM-killed, and that the
// only restarts are the expected ones ("pod/container": count).
func rnResourceCheck(pods []rnPod, peaks map[string]float64, restarts map[string]int) (report string, problems []string) {
	limits := map[string]float64{}
	for _, p := range pods {
		for _, c := range append(append([]rnContainer(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
			if q := c.Resources.Limits["memory"]; q != "" {
				v, err := rnBytes(q)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s/%s: memory limit %q: %v", p.Metadata.Name, c.Name, q, err))
				}
				limits[c.Name] = v
			}
		}
		for _, s := range append(append([]rnStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			k := p.Metadata.Name + "/" + s.Name
			if s.RestartCount != restarts[k] {
				problems = append(problems, fmt.Sprintf("%s restarted %d times, want %d", k, s.RestartCount, restarts[k]))
			}
			if term := s.LastState.Terminated; term != nil && term.Reason == "OOMKilled" {
				problems = append(problems, fmt.Sprintf("%s was OOM-killed", k))
			}
		}
	}
	keys := make([]string, 0, len(peaks))
	for k := range peaks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	byContainer := map[string]float64{}
	for _, k := range keys {
		_, c, _ := strings.Cut(k, "/")
		byContainer[c] = max(byContainer[c], peaks[k])
		if lim, ok := limits[c]; ok && peaks[k] >= lim {
			problems = append(problems, fmt.Sprintf("%s: working set peaked at %.0f MiB, at or over its limit %.0f MiB", k, peaks[k]/(1<<20), lim/(1<<20)))
		}
	}
	if len(byContainer) == 0 {
		problems = append(problems, "no memory samples from the kubelet's /metrics/resource")
	}
	names := make([]string, 0, len(byContainer))
	for c := range byContainer {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		report += fmt.Sprintf("%s peak working set %.0f MiB (limit %.0f MiB); ", c, byContainer[c]/(1<<20), limits[c]/(1<<20))
	}
	return strings.TrimSuffix(report, "; "), problems
}

// rnBytes parses a Kubernetes memory quantity in the forms the chart uses
// (Ki, Mi, Gi, or plain bytes).
func rnBytes(q string) (float64, error) {
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}} {
		if v, ok := strings.CutSuffix(q, u.suffix); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f * u.mult, err
		}
	}
	var f float64
	_, err := fmt.Sscan(q, &f)
	return f, err
}

// TestRealNodeServingChecks shows, without a node, that the checks of
// TestRealNodeServing fail on the defects they name: a reset connection, a
// 503 during a rollout, a slow 503 or one without Retry-After during a
// fault, a 504; a container over its memory limit, an OOM kill, an
// unexpected restart.
func TestRealNodeServingChecks(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ok := []rnResult{{At: at, Status: 200, Took: 40 * time.Millisecond}, {At: at, Status: 429, RetryAfter: true}}
	fast503 := rnResult{At: at, Status: 503, RetryAfter: true, Took: 30 * time.Millisecond}
	for _, c := range []struct {
		name    string
		res     []rnResult
		fast503 time.Duration
		fails   bool
	}{
		{"200 and 429 with Retry-After", ok, 0, false},
		{"fast 503 during a fault", append(ok, fast503), time.Second, false},
		{"no requests", nil, 0, true},
		{"connection reset", append(ok, rnResult{At: at, Err: "read: connection reset by peer"}), 0, true},
		{"503 during a rollout", append(ok, fast503), 0, true},
		{"slow 503 during a fault", append(ok, rnResult{At: at, Status: 503, RetryAfter: true, Took: 3 * time.Second}), time.Second, true},
		{"503 without Retry-After", append(ok, rnResult{At: at, Status: 503, Took: time.Millisecond}), time.Second, true},
		{"429 without Retry-After", append(ok, rnResult{At: at, Status: 429}), 0, true},
		{"504", append(ok, rnResult{At: at, Status: 504}), time.Second, true},
	} {
		_, problems := rnLoadCheck(c.res, c.fast503)
		if got := len(problems) > 0; got != c.fails {
			t.Errorf("%s: problems %v, want failure %v", c.name, problems, c.fails)
		}
	}

	pod := func(restarts int, reason string) rnPod {
		var p rnPod
		p.Metadata.Name = "p"
		p.Spec.InitContainers = []rnContainer{{Name: "runtime"}}
		p.Spec.InitContainers[0].Resources.Limits = map[string]string{"memory": "1Gi"}
		p.Spec.Containers = []rnContainer{{Name: "proxy"}}
		p.Spec.Containers[0].Resources.Limits = map[string]string{"memory": "512Mi"}
		rs := rnStatus{Name: "runtime", RestartCount: restarts}
		if reason != "" {
			rs.LastState.Terminated = &struct{ Reason string }{reason}
		}
		p.Status.InitContainerStatuses = []rnStatus{rs}
		p.Status.ContainerStatuses = []rnStatus{{Name: "proxy"}}
		return p
	}
	peaks := map[string]float64{"p/runtime": 400 << 20, "p/proxy": 30 << 20}
	for _, c := range []struct {
		name     string
		pod      rnPod
		peaks    map[string]float64
		restarts map[string]int
		fails    bool
	}{
		{"under the limits", pod(0, ""), peaks, nil, false},
		{"an expected restart", pod(1, "Error"), peaks, map[string]int{"p/runtime": 1}, false},
		{"no samples", pod(0, ""), map[string]float64{}, nil, true},
		{"proxy at its limit", pod(0, ""), map[string]float64{"p/runtime": 400 << 20, "p/proxy": 512 << 20}, nil, true},
		{"unexpected restart", pod(1, "Error"), peaks, nil, true},
		{"restart missing", pod(0, ""), peaks, map[string]int{"p/runtime": 1}, true},
		{"OOM-killed", pod(1, "OOMKilled"), peaks, map[string]int{"p/runtime": 1}, true},
	} {
		_, problems := rnResourceCheck([]rnPod{c.pod}, c.peaks, c.restarts)
		if got := len(problems) > 0; got != c.fails {
			t.Errorf("%s: problems %v, want failure %v", c.name, problems, c.fails)
		}
	}
}

// rnVersionsValues: two versions of the model in one pod, 70/30, each
// runtime sidecar with the serving scenarios' CPU request.
const rnVersionsValues = `
models:
  - {version: v1, weight: 70, model: {variant: fp32}, resources: {requests: {cpu: 450m, memory: 512Mi}, limits: {cpu: "1", memory: 1Gi}}}
  - {version: v2, weight: 30, model: {variant: fp32}, resources: {requests: {cpu: 450m, memory: 512Mi}, limits: {cpu: "1", memory: 1Gi}}}
replicaCount: 1
`

// rnModelVersions: a release with two versions in `models`. Both
// sidecars start before the proxy; over 2000 requests through the Service
// the split holds within 3 points; while the primary's runtime restarts
// (SIGKILL), the canary gets no more than its share (the proxy answers
// 503 rather than send the primary's share to it).
func rnModelVersions(t *testing.T, n *kubenode.Node, runHelm func(...string), values string) {
	const ns, release = "versions", "mv"
	n.KubectlT(t, "create", "namespace", ns)
	vv := filepath.Join(t.TempDir(), "versions.yaml")
	if err := os.WriteFile(vv, []byte(rnVersionsValues), 0o644); err != nil {
		t.Fatal(err)
	}
	runHelm("install", release, chartDir(t), "-n", ns, "-f", values, "-f", vv)
	defer runHelm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
	if out, err := n.Kubectl("rollout", "status", "-n", ns, "deploy/"+release+"-batchgate", "--timeout=240s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	pods := rnListPods(t, n, ns, release)
	if len(pods) != 1 {
		t.Fatalf("%d pods, want 1", len(pods))
	}
	pod := pods[0]
	proxy := rnFindStatus(pod.Status.ContainerStatuses, "proxy")
	for _, v := range []string{"runtime-v1", "runtime-v2"} {
		s := rnFindStatus(pod.Status.InitContainerStatuses, v)
		switch {
		case s == nil || s.State.Running == nil || !s.Ready:
			t.Fatalf("sidecar %s not running and ready: %+v", v, s)
		case proxy == nil || proxy.State.Running == nil || proxy.State.Running.StartedAt.Before(s.State.Running.StartedAt):
			t.Errorf("proxy %+v started before sidecar %s", proxy, v)
		}
	}
	clusterIP := strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", ns, release+"-batchgate", "-o", "jsonpath={.spec.clusterIP}"))
	url := fmt.Sprintf("http://%s:9999/predict?top_k=1", clusterIP)
	client := &http.Client{Timeout: 10 * time.Second}
	imgs := make([][]byte, 16) // each version computes each once, then answers from its cache
	for i := range imgs {
		imgs[i] = testenv.UniqueJPEG(100000 + i)
	}
	send := func(i int) (status int, version string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "image.jpg")
		fw.Write(imgs[i%len(imgs)])
		mw.Close()
		resp, err := client.Post(url, mw.FormDataContentType(), &buf)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var body struct {
			ModelVersion string `json:"model_version"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.ModelVersion
	}

	counts := map[string]int{}
	for i := range 2000 {
		status, v := send(i)
		if status != 200 {
			t.Fatalf("request %d: %d %s", i, status, v)
		}
		counts[v]++
	}
	share := float64(counts["v1"]) / 2000
	t.Logf("2000 requests through the Service: v1 %d (%.1f%%), v2 %d; want 70%% +- 3 points", counts["v1"], 100*share, counts["v2"])
	if share < 0.67 || share > 0.73 || counts["v1"]+counts["v2"] != 2000 {
		t.Errorf("split %v over 2000 requests: v1 %.1f%%, want 70%% +- 3 points", counts, 100*share)
	}

	// The primary's runtime restarts: requests meanwhile, until the pod is
	// Ready again.
	pid, err := n.ContainerPID(rnFindStatus(pod.Status.InitContainerStatuses, "runtime-v1").ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	k0 := time.Now()
	during := map[string]int{}
	total := 0
	for i := 0; ; i++ {
		status, v := send(i)
		total++
		switch status {
		case 200:
			during[v]++
		case 503:
			during["503"]++
		default:
			t.Errorf("request during the primary's restart: %d %s", status, v)
		}
		if i%20 == 19 {
			if ps := rnListPods(t, n, ns, release); len(ps) == 1 && ps[0].ready() && during["v1"] > 0 && time.Since(k0) > 2*time.Second {
				break
			}
		}
		if time.Since(k0) > 90*time.Second {
			t.Fatalf("the pod is not serving v1 again 90 s after the primary's runtime was killed: %v", during)
		}
	}
	// The canary's share of every request sent while the primary was
	// down or warming up: at most its weight, plus three standard errors.
	canary := float64(during["v2"]) / float64(total)
	bound := 0.3 + 3*math.Sqrt(0.3*0.7/float64(total))
	t.Logf("while the primary restarted (%v): %d requests, %v; the canary's share %.1f%% (bound %.1f%%)",
		time.Since(k0).Round(100*time.Millisecond), total, during, 100*canary, 100*bound)
	if canary > bound {
		t.Errorf("the canary answered %.1f%% of the requests while the primary restarted, more than its 30%% share (bound %.1f%%)", 100*canary, 100*bound)
	}
	if during["503"] == 0 {
		t.Errorf("no 503 while the primary restarted: was it killed? %v", during)
	}
}

// rnTwoNamespaces: two releases of the chart in two namespaces; requests
// to one release's Service are counted by its pod only.
func rnTwoNamespaces(t *testing.T, n *kubenode.Node, runHelm func(...string), values string) {
	one := filepath.Join(t.TempDir(), "one.yaml")
	if err := os.WriteFile(one, []byte("replicaCount: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type rel struct{ ns, clusterIP, podIP string }
	rels := []*rel{{ns: "team-a"}, {ns: "team-b"}}
	for _, r := range rels {
		n.KubectlT(t, "create", "namespace", r.ns)
		runHelm("install", "bg", chartDir(t), "-n", r.ns, "-f", values, "-f", one)
		defer runHelm("uninstall", "bg", "-n", r.ns, "--wait", "--timeout", "120s")
	}
	for _, r := range rels {
		if out, err := n.Kubectl("rollout", "status", "-n", r.ns, "deploy/bg-batchgate", "--timeout=240s"); err != nil {
			t.Fatalf("rollout in %s: %v\n%s", r.ns, err, out)
		}
		r.clusterIP = strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", r.ns, "bg-batchgate", "-o", "jsonpath={.spec.clusterIP}"))
		pods := rnListPods(t, n, r.ns, "bg")
		if len(pods) != 1 {
			t.Fatalf("%s: %d pods, want 1", r.ns, len(pods))
		}
		r.podIP = pods[0].Status.PodIP
	}
	client := &http.Client{Timeout: 10 * time.Second}
	requests := func(r *rel) float64 {
		v, ok := rnPodRequests(client, r.podIP)
		if !ok {
			t.Fatalf("%s: no metrics from its pod", r.ns)
		}
		return v
	}
	for i, to := range rels {
		before := []float64{requests(rels[0]), requests(rels[1])}
		const k = 20
		for j := range k {
			if r := rnPost(client, fmt.Sprintf("http://%s:9999/predict?top_k=1", to.clusterIP), testenv.UniqueJPEG(200000+100*i+j)); r.Status != 200 {
				t.Fatalf("POST to %s's Service: %d %s", to.ns, r.Status, r.Err)
			}
		}
		for o, r := range rels {
			got, want := requests(r)-before[o], 0.0
			if o == i {
				want = k
			}
			if got != want {
				t.Errorf("%d requests to %s's Service: %s's pod counted %v, want %v", k, to.ns, r.ns, got, want)
			}
		}
	}
	t.Logf("two releases (team-a, team-b): each Service's requests reached its own pod only")
}
