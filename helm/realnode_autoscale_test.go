package helm_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/kubenode"
	"github.com/batchgate/batchgate/internal/testenv"
)

// rnAutoscaleValues: the chart's KEDA ScaledObject with its default
// triggers and thresholds (utilization 0.7, the same ahead, expected wait
// 1 s); only the timings are shorter so that the test waits less, and the
// connections are recycled sooner (the proxy closes a keep-alive
// connection past proxy.connMaxAge, so that kube-proxy spreads the
// clients' new connections over the new pods).
const rnAutoscaleValues = `
keda:
  enabled: true
  prometheusAddress: %s
  pollingInterval: 5
  utilizationWindowSeconds: 10
  scaleAheadSeconds: 15
  trendWindowSeconds: 30
  maxReplicas: 3
  scaleDown: {stabilizationWindowSeconds: 20}
proxy:
  connMaxAge: 10s
`

// rnAutoscale: KEDA's operator and metrics adapter, and a Prometheus that
// scrapes the pods by the chart's prometheus.io annotations (rnPrometheus),
// on the real node. Load through the Service grows the Deployment; the new
// pods become Ready and serve a share of the requests; the Deployment
// shrinks once the load stops. No request fails but 429s with Retry-After.
// The replicas and each pod's requests over time are written as a CSV and
// an SVG plot to the folder the test logs.
func rnAutoscale(t *testing.T, n *kubenode.Node, runHelm func(...string), values string) {
	const ns, release = "scaling", "as"
	deploy := release + "-batchgate"
	l := &controlLoop{t: t, dir: t.TempDir(), root: testenv.Root(t), kubeconfig: n.Kubeconfig}
	l.api, l.hc = n.API()
	n.KubectlT(t, "create", "namespace", "keda")
	n.KubectlT(t, "create", "namespace", ns)
	l.startKEDA()
	promURL := rnPrometheus(t, l, n)

	av := filepath.Join(t.TempDir(), "autoscale.yaml")
	if err := os.WriteFile(av, []byte(fmt.Sprintf(rnAutoscaleValues, promURL)), 0o644); err != nil {
		t.Fatal(err)
	}
	runHelm("install", release, chartDir(t), "-n", ns, "-f", values, "-f", av)
	defer runHelm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
	rec := rnRecordScaling(t, n, ns, release)
	defer rec.stop()
	if out, err := n.Kubectl("rollout", "status", "-n", ns, "deploy/"+deploy, "--timeout=240s"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
	l.waitFor("the ScaledObject Ready, its HPA created", 120*time.Second, func() (bool, string) {
		out, err := n.Kubectl("get", "scaledobject", "-n", ns, deploy, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.hpaName}`)
		return err == nil && strings.HasPrefix(string(out), "True keda-hpa-"), string(out)
	})
	clusterIP := strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", ns, deploy, "-o", "jsonpath={.spec.clusterIP}"))

	// Until the first pod exports its series (after the runtime's warm-up,
	// then two scrapes), the queries have no value, which KEDA counts as
	// failures: past keda.fallback.failureThreshold polls the fallback (2
	// replicas) applies (docs/autoscaling-tests.md). Wait for the queries
	// to work and the Deployment to be back at 1, so that growth comes
	// from the load.
	l.waitFor("the ScaledObject's queries working (no fallback)", 180*time.Second, func() (bool, string) {
		out, _ := n.Kubectl("get", "scaledobject", "-n", ns, deploy, "-o", `jsonpath={.status.conditions[?(@.type=="Fallback")].status}`)
		r := rec.last()
		return string(out) == "False" && r.replicas == 1 && len(r.ready) == 1, fmt.Sprintf("fallback %q, %s", out, r)
	})
	t.Logf("between the install and the load: at most %d replicas (the fallback while the first pod had no series)", rec.maxReplicas())
	load := rnStartLoad(fmt.Sprintf("http://%s:9999/predict?top_k=1", clusterIP), 4, 100*time.Millisecond, 6000)
	l0 := time.Now()
	var grown time.Time
	for deadline := l0.Add(150 * time.Second); ; time.Sleep(time.Second) {
		if r := rec.last(); r.replicas >= 2 && len(r.ready) >= 2 {
			grown = time.Now()
			t.Logf("%d replicas, %d Ready, %v after the load started", r.replicas, len(r.ready), grown.Sub(l0).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			res := load.stop()
			t.Fatalf("no second Ready pod within 150 s of load: %s; %s", rnTally(res), rec.last())
		}
	}
	// Two connection ages: every client has reconnected since the new
	// pods became Ready.
	time.Sleep(20 * time.Second)
	mid := rec.last()
	time.Sleep(10 * time.Second)
	end := rec.last()
	res := load.stop()
	stopped := time.Now()
	report, problems := rnLoadCheck(res, 0)
	t.Logf("load: %s", report)
	for _, p := range problems {
		t.Error(p)
	}
	// Each pod Ready through the last 10 s of load served a share.
	var total float64
	for _, pod := range end.ready {
		total += end.requests[pod] - mid.requests[pod]
	}
	for _, pod := range end.ready {
		share := (end.requests[pod] - mid.requests[pod]) / total
		t.Logf("pod %s: %.0f%% of the last 10 s of requests", pod, 100*share)
		if share < 0.1 {
			t.Errorf("pod %s Ready but served %.0f%% of the requests: the new pods do not take traffic", pod, 100*share)
		}
	}
	for deadline := stopped.Add(150 * time.Second); ; time.Sleep(time.Second) {
		if r := rec.last(); r.replicas == 1 {
			t.Logf("back to 1 replica %v after the load stopped", time.Since(stopped).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s 150 s after the load stopped", rec.last())
		}
	}
	dir, err := rec.write(l0)
	if err != nil {
		t.Error(err)
	}
	t.Logf("replicas and per-pod requests over time: %s", dir)
}

// rnPrometheus starts Prometheus scraping the pods the chart annotates
// (prometheus.io/scrape, port and path), labelled namespace and pod as the
// chart's queries expect. Debian's Prometheus (2.42) is built without
// Kubernetes discovery (kubernetes_sd_configs is refused), so a goroutine
// plays it: every second it lists the node's pods from the API server and
// writes those annotated, with the labels kubernetes_sd's usual relabelling
// gives, to a file_sd file.
func rnPrometheus(t *testing.T, l *controlLoop, n *kubenode.Node) string {
	dir := filepath.Join(l.dir, "prometheus")
	os.MkdirAll(dir, 0o755)
	targets := filepath.Join(dir, "targets.json")
	if err := os.WriteFile(targets, []byte("[]"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: pods
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, targets)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // exits at the test's end
		defer wg.Done()
		for {
			if out, err := n.Kubectl("get", "pods", "-A", "-o", "json"); err == nil {
				if b, err := rnScrapeTargets(out); err == nil {
					os.WriteFile(targets+".tmp", b, 0o644)
					os.Rename(targets+".tmp", targets)
				}
			}
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait() })

	port := testenv.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	l.prom = l.start("prometheus", nil, l.bin("prometheus"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	l.waitFor("Prometheus /-/ready", 60*time.Second, func() (bool, string) {
		resp, err := loopHTTP.Get(url + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return url
}

// rnScrapeTargets turns a pod list (kubectl get pods -o json) into file_sd
// target groups: the running pods with prometheus.io/scrape "true", at
// podIP:prometheus.io/port, path prometheus.io/path, labelled namespace
// and pod.
func rnScrapeTargets(podList []byte) ([]byte, error) {
	var pods struct {
		Items []struct {
			Metadata struct {
				Name, Namespace string
				Annotations     map[string]string
			}
			Status struct{ Phase, PodIP string }
		}
	}
	if err := json.Unmarshal(podList, &pods); err != nil {
		return nil, err
	}
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := []group{}
	for _, p := range pods.Items {
		a := p.Metadata.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] == "" || p.Status.PodIP == "" || p.Status.Phase != "Running" {
			continue
		}
		labels := map[string]string{"namespace": p.Metadata.Namespace, "pod": p.Metadata.Name}
		if path := a["prometheus.io/path"]; path != "" {
			labels["__metrics_path__"] = path
		}
		groups = append(groups, group{Targets: []string{p.Status.PodIP + ":" + a["prometheus.io/port"]}, Labels: labels})
	}
	return json.Marshal(groups)
}

// rnScaleRow is one sample: the Deployment's spec.replicas, its Ready
// pods, and each pod's /predict requests so far (its own counter).
type rnScaleRow struct {
	at       time.Time
	replicas int
	ready    []string
	requests map[string]float64
}

func (r rnScaleRow) String() string {
	return fmt.Sprintf("%d replicas, Ready %v", r.replicas, r.ready)
}

// rnScaling samples every 2 s until stop.
type rnScaling struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	rows []rnScaleRow
}

func rnRecordScaling(t *testing.T, n *kubenode.Node, ns, release string) *rnScaling {
	s := &rnScaling{done: make(chan struct{})}
	s.wg.Add(1)
	go func() { // exits at stop
		defer s.wg.Done()
		client := &http.Client{Timeout: 2 * time.Second}
		for {
			row := rnScaleRow{at: time.Now(), requests: map[string]float64{}}
			out, _ := n.Kubectl("get", "deploy", "-n", ns, release+"-batchgate", "-o", "jsonpath={.spec.replicas}")
			row.replicas, _ = strconv.Atoi(strings.TrimSpace(string(out)))
			out, _ = n.Kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance="+release, "-o",
				`jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) < 3 {
					continue
				}
				if f[2] == "True" {
					row.ready = append(row.ready, f[0])
				}
				if v, ok := rnPodRequests(client, f[1]); ok {
					row.requests[f[0]] = v
				}
			}
			sort.Strings(row.ready)
			s.mu.Lock()
			s.rows = append(s.rows, row)
			s.mu.Unlock()
			select {
			case <-s.done:
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// rnPodRequests is a pod's /predict request count, from its metrics port.
func rnPodRequests(client *http.Client, podIP string) (float64, bool) {
	resp, err := client.Get(fmt.Sprintf("http://%s:9464/metrics", podIP))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m, err := testenv.ParseMetrics(b)
	if err != nil {
		return 0, false
	}
	// Absent before the first /predict (series are created on first
	// use): 0 then.
	var sum float64
	for _, s := range m.Samples() {
		if s.Name == "inference_requests_total" && s.Labels["route"] == "/predict" {
			sum += s.Value
		}
	}
	return sum, true
}

func (s *rnScaling) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
}

// maxReplicas is the most spec.replicas sampled so far.
func (s *rnScaling) maxReplicas() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	most := 0
	for _, r := range s.rows {
		most = max(most, r.replicas)
	}
	return most
}

func (s *rnScaling) last() rnScaleRow {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rows) == 0 {
		return rnScaleRow{}
	}
	return s.rows[len(s.rows)-1]
}

// write saves the samples as scaling.csv (seconds since t0, replicas,
// Ready pods, each pod's requests per second since the previous sample)
// and scaling.svg (replicas and per-pod requests per second against time)
// into a folder under the system's temporary folder that outlives the
// test, and returns it.
func (s *rnScaling) write(t0 time.Time) (string, error) {
	s.mu.Lock()
	rows := append([]rnScaleRow(nil), s.rows...)
	s.mu.Unlock()
	dir := filepath.Join(os.TempDir(), "batchgate-realnode-autoscale")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var pods []string
	seen := map[string]bool{}
	for _, r := range rows {
		for p := range r.requests {
			if !seen[p] {
				seen[p] = true
				pods = append(pods, p)
			}
		}
	}
	sort.Strings(pods)
	var csv strings.Builder
	csv.WriteString("seconds,replicas,ready")
	for _, p := range pods {
		csv.WriteString("," + p)
	}
	csv.WriteString("\n")
	type pt struct{ x, y float64 }
	series := make([][]pt, len(pods)+1) // [0]: replicas
	maxRate := 1.0
	for i, r := range rows {
		x := r.at.Sub(t0).Seconds()
		fmt.Fprintf(&csv, "%.1f,%d,%d", x, r.replicas, len(r.ready))
		series[0] = append(series[0], pt{x, float64(r.replicas)})
		for j, p := range pods {
			rate := 0.0
			if i > 0 {
				if prev, ok := rows[i-1].requests[p]; ok {
					rate = (r.requests[p] - prev) / r.at.Sub(rows[i-1].at).Seconds()
				}
			}
			rate = max(rate, 0)
			maxRate = max(maxRate, rate)
			fmt.Fprintf(&csv, ",%.2f", rate)
			series[j+1] = append(series[j+1], pt{x, rate})
		}
		csv.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "scaling.csv"), []byte(csv.String()), 0o644); err != nil {
		return "", err
	}
	const w, h, pad = 800.0, 400.0, 40.0
	xMax := 1.0
	if len(rows) > 0 {
		xMax = max(1, rows[len(rows)-1].at.Sub(t0).Seconds())
	}
	colors := []string{"black", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"}
	var svg strings.Builder
	fmt.Fprintf(&svg, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&svg, `<text x="%.0f" y="20">replicas (black, right axis 0-4) and each pod's requests/s (left axis 0-%.0f) over %.0f s</text>`+"\n", pad, maxRate, xMax)
	for i, ser := range series {
		scale := (h - 2*pad) / maxRate
		if i == 0 {
			scale = (h - 2*pad) / 4
		}
		var pts []string
		for _, p := range ser {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", pad+p.x/xMax*(w-2*pad), h-pad-p.y*scale))
		}
		label := "replicas"
		if i > 0 {
			label = pods[i-1]
		}
		c := colors[i%len(colors)]
		fmt.Fprintf(&svg, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		fmt.Fprintf(&svg, `<text x="%.0f" y="%.0f" fill="%s">%s</text>`+"\n", w-pad-260, 40+14*float64(i), c, label)
	}
	svg.WriteString("</svg>\n")
	return dir, os.WriteFile(filepath.Join(dir, "scaling.svg"), []byte(svg.String()), 0o644)
}
