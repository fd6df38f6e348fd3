package helm_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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
// clients' new connections over the new pods; 5 s, so that the share
// check below sees many connections: rnShareClients).
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
  connMaxAge: 5s
`

// rnAutoscale: KEDA's operator and metrics adapter, and a Prometheus that
// scrapes the pods by the chart's prometheus.io annotations (rnPrometheus),
// on the real node. Load through the Service grows the Deployment; the new
// pods become Ready and serve a share of the requests; the Deployment
// shrinks once the load stops. No request fails but 429s with Retry-After.
// The replicas and each pod's requests over time are written as a CSV and
// an SVG plot to the folder the test logs. A second release of the same
// chart and triggers, in a namespace of its own and without load, stays at
// one replica throughout: each release scales on its own pods' metrics.
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
	// The idle release: small CPU requests, so that it schedules beside
	// three replicas of the loaded one on 2 cores.
	n.KubectlT(t, "create", "namespace", rnIdleNamespace)
	iv := filepath.Join(t.TempDir(), "idle.yaml")
	if err := os.WriteFile(iv, []byte("proxy: {resources: {requests: {cpu: 10m}}}\nruntime: {resources: {requests: {cpu: 50m}}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runHelm("install", rnIdleRelease, chartDir(t), "-n", rnIdleNamespace, "-f", values, "-f", av, "-f", iv)
	defer runHelm("uninstall", rnIdleRelease, "-n", rnIdleNamespace, "--wait", "--timeout", "120s")
	idle := rnRecordScaling(t, n, rnIdleNamespace, rnIdleRelease)
	defer idle.stop()
	for _, r := range []struct {
		ns, deploy string
		rec        *rnScaling
	}{{ns, deploy, rec}, {rnIdleNamespace, rnIdleRelease + "-batchgate", idle}} {
		if out, err := n.Kubectl("rollout", "status", "-n", r.ns, "deploy/"+r.deploy, "--timeout=240s"); err != nil {
			t.Fatalf("rollout of %s/%s: %v\n%s", r.ns, r.deploy, err, out)
		}
		l.waitFor("the ScaledObject Ready, its HPA created in "+r.ns, 120*time.Second, func() (bool, string) {
			out, err := n.Kubectl("get", "scaledobject", "-n", r.ns, r.deploy, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.hpaName}`)
			return err == nil && strings.HasPrefix(string(out), "True keda-hpa-"), string(out)
		})
		// Until the first pod exports its series (after the runtime's
		// warm-up, then two scrapes), the queries have no value, which
		// KEDA counts as failures: past keda.fallback.failureThreshold
		// polls the fallback (2 replicas) applies
		// (docs/autoscaling-tests.md). Wait for the queries to work and the
		// Deployment to be back at 1, so that growth comes from the load.
		l.waitFor("the ScaledObject's queries working (no fallback) in "+r.ns, 180*time.Second, func() (bool, string) {
			out, _ := n.Kubectl("get", "scaledobject", "-n", r.ns, r.deploy, "-o", `jsonpath={.status.conditions[?(@.type=="Fallback")].status}`)
			last := r.rec.last()
			return string(out) == "False" && last.replicas == 1 && len(last.ready) == 1, fmt.Sprintf("fallback %q, %s", out, last)
		})
		t.Logf("%s: between the install and the load, at most %d replicas (the fallback while the first pod had no series)", r.ns, r.rec.maxReplicas())
	}
	clusterIP := strings.TrimSpace(n.KubectlT(t, "get", "service", "-n", ns, deploy, "-o", "jsonpath={.spec.clusterIP}"))
	load := rnStartLoad(fmt.Sprintf("http://%s:9999/predict?top_k=1", clusterIP), rnShareClients, 200*time.Millisecond, 6000)
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
	time.Sleep(10 * time.Second)
	mid := rec.last()
	// What each release's HPA sees now: the loaded one above its target,
	// the idle one near 0 (its own pod has no load).
	loadedM, idleM := rnHPAMetrics(t, n, ns), rnHPAMetrics(t, n, rnIdleNamespace)
	t.Logf("HPA metrics under load: %s %v; %s %v (target 0.7 per replica)", ns, loadedM, rnIdleNamespace, idleM)
	for _, v := range idleM {
		if v > 0.35 {
			t.Errorf("the idle release's HPA sees %v while only %s has load: its triggers count the other release's pods", idleM, ns)
			break
		}
	}
	time.Sleep(rnShareWindow)
	end := rec.last()
	res := load.stop()
	stopped := time.Now()
	report, problems := rnLoadCheck(res, 0)
	t.Logf("load: %s", report)
	for _, p := range problems {
		t.Error(p)
	}
	// Each pod Ready through the last rnShareWindow of load served a share.
	shares := rnShares(mid, end)
	for _, s := range shares {
		t.Logf("pod %s: %.0f%% of the last %v of requests", s.pod, 100*s.share, rnShareWindow)
		if s.share < rnMinShare {
			t.Errorf("pod %s Ready but served %.0f%% of the requests: the new pods do not take traffic", s.pod, 100*s.share)
		}
	}
	if len(shares) < 2 {
		t.Errorf("%d pods Ready through the last %v of load (%s, then %s): no new pod to check", len(shares), rnShareWindow, mid, end)
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
	if most := idle.maxReplicasSince(l0); most != 1 {
		t.Errorf("the idle release in %s went to %d replicas while only %s had load: it scales on the other release's metric", rnIdleNamespace, most, ns)
	}
	dir, err := rec.write(l0)
	if err != nil {
		t.Error(err)
	}
	t.Logf("replicas and per-pod requests over time: %s", dir)
}

// The share check. kube-proxy picks a pod per connection, at random, so
// a pod's share of a window is its share of the connections opened in
// it: with 3 pods and rnShareClients clients that reconnect every 5 s, a
// 20 s window holds about 8 × 5 = 40 connections, and a pod that takes
// traffic gets fewer than 5% of them with a probability below 1e-5
// (binomial, p = 1/3). With 4 clients, 10 s connections and a 10 s window
// (about 8 connections), a Ready pod got none in about one run in ten
// (CI on 45806f2).
const (
	rnShareClients = 8
	rnShareWindow  = 20 * time.Second
	rnMinShare     = 0.05
)

type rnShare struct {
	pod   string
	share float64
}

// rnShares: each pod Ready at both samples, and its share of the
// requests all those pods served between them.
func rnShares(mid, end rnScaleRow) []rnShare {
	var pods []string
	var total float64
	for _, pod := range end.ready {
		if slices.Contains(mid.ready, pod) {
			pods = append(pods, pod)
			total += end.requests[pod] - mid.requests[pod]
		}
	}
	out := make([]rnShare, 0, len(pods))
	for _, pod := range pods {
		share := 0.0
		if total > 0 {
			share = (end.requests[pod] - mid.requests[pod]) / total
		}
		out = append(out, rnShare{pod, share})
	}
	return out
}

// The release beside rnAutoscale's that gets no load.
const rnIdleNamespace, rnIdleRelease = "scaling-idle", "idle"

// rnHPAMetrics is the current value of each metric of the (one) HPA in ns,
// per replica as the HPA compares it with its target.
func rnHPAMetrics(t *testing.T, n *kubenode.Node, ns string) []float64 {
	t.Helper()
	out, err := n.Kubectl("get", "hpa", "-n", ns, "-o", "jsonpath={.items[0].status.currentMetrics[*].external.current.averageValue}")
	if err != nil {
		t.Errorf("HPA metrics in %s: %v\n%s", ns, err, out)
		return nil
	}
	var vs []float64
	for _, q := range strings.Fields(string(out)) {
		v, err := rnQuantity(q)
		if err != nil {
			t.Errorf("HPA metric in %s: %v", ns, err)
			continue
		}
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		t.Errorf("the HPA in %s has no current metric (%q)", ns, out)
	}
	return vs
}

// TestRNShares: only pods Ready at both samples count, and a pod that
// served nothing in the window has share 0.
func TestRNShares(t *testing.T) {
	mid := rnScaleRow{ready: []string{"a", "b"}, requests: map[string]float64{"a": 100, "b": 10}}
	end := rnScaleRow{ready: []string{"a", "b", "c"}, requests: map[string]float64{"a": 160, "b": 10, "c": 40}}
	got := rnShares(mid, end)
	want := []rnShare{{"a", 1}, {"b", 0}}
	if !slices.Equal(got, want) {
		t.Errorf("rnShares = %v, want %v", got, want)
	}
	if got := rnShares(rnScaleRow{}, end); len(got) != 0 {
		t.Errorf("rnShares with none Ready at the first sample = %v, want none", got)
	}
}

// TestRNQuantity: the HPA's quantities as rnHPAMetrics reads them.
func TestRNQuantity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
	}{{"0", 0}, {"1400m", 1.4}, {"2", 2}, {"350u", 0.00035}, {"1k", 1000}} {
		if got, err := rnQuantity(tc.in); err != nil || math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("rnQuantity(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := rnQuantity("1.4Gi"); err == nil {
		t.Error("rnQuantity(1.4Gi): no error")
	}
}

// rnQuantity parses a Kubernetes quantity as an HPA reports a metric:
// a decimal with an optional n, u, m or k suffix.
func rnQuantity(q string) (float64, error) {
	scale := 1.0
	for suffix, f := range map[string]float64{"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3} {
		if strings.HasSuffix(q, suffix) {
			q, scale = strings.TrimSuffix(q, suffix), f
			break
		}
	}
	v, err := strconv.ParseFloat(q, 64)
	if err != nil {
		return 0, fmt.Errorf("quantity %q: %w", q, err)
	}
	return v * scale, nil
}

// rnPrometheus starts Prometheus discovering the node's pods through the
// API server (kubernetes_sd_configs, role pod, with the node's kubeconfig)
// and scraping those the chart annotates (prometheus.io/scrape, port and
// path), labelled namespace and pod as the chart's queries expect: the
// relabelling of Prometheus's own Kubernetes example, which is what users
// run. Debian's Prometheus (2.42, the other chart tests') is built without
// Kubernetes discovery, so this is Prometheus built from its Go module
// with it (scripts/install-tools.sh: prometheus-k8s).
func rnPrometheus(t *testing.T, l *controlLoop, n *kubenode.Node) string {
	dir := filepath.Join(l.dir, "prometheus")
	os.MkdirAll(dir, 0o755)
	cfg := fmt.Sprintf(`global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: pods
    kubernetes_sd_configs: [{role: pod, kubeconfig_file: %q}]
    relabel_configs:
      - {source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape], action: keep, regex: "true"}
      - {source_labels: [__meta_kubernetes_pod_phase], action: drop, regex: Pending|Succeeded|Failed}
      - {source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path], action: replace, target_label: __metrics_path__, regex: (.+)}
      - {source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port], action: replace,
         regex: '([^:]+)(?::\d+)?;(\d+)', replacement: '$1:$2', target_label: __address__}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
`, n.Kubeconfig)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	l.prom = l.start("prometheus", nil, l.bin("prometheus-k8s"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
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

// maxReplicasSince is the most spec.replicas sampled at or after t0.
func (s *rnScaling) maxReplicasSince(t0 time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	most := 0
	for _, r := range s.rows {
		if !r.at.Before(t0) {
			most = max(most, r.replicas)
		}
	}
	return most
}

// maxReplicas is the most spec.replicas sampled so far.
func (s *rnScaling) maxReplicas() int { return s.maxReplicasSince(time.Time{}) }

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
