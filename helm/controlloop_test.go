package helm_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/internal/testenv"
)

// The control-loop test: the chart's autoscaling as a cluster runs it, with
// only pods missing (no nodes, no kubelet: the ReplicaSet controller creates
// Pod objects that stay Pending, as in Kubernetes' own HPA integration
// tests). Every piece is the real program:
//
//	proxy + runtime under load  <- scraped by Prometheus (Debian's), labelled
//	                               namespace/pod like Kubernetes discovery
//	KEDA operator (v2.21.0)      -> queries Prometheus, serves KEDA's gRPC
//	                               metrics service (mTLS)
//	KEDA metrics adapter         -> registered as v1beta1.external.metrics.k8s.io
//	                               through kube-apiserver's aggregation layer
//	kube-controller-manager      -> HPA, Deployment and ReplicaSet controllers
//	(v1.37.2)                       read the external metric through the
//	                               aggregator and write spec.replicas
//
// See docs/autoscaling-tests.md for the chain, the timings and what is
// asserted.

const (
	loopNS       = "serving"
	loopRelease  = "bg" // fullname bg-batchgate
	loopFullname = "bg-batchgate"
	loopSecond   = "bg-batchgate-v2" // release and fullname of the second release
	// The chart's defaults (helm/batchgate/values.yaml, docs/autoscaling.md),
	// which the test installs: a chart that drifts from them fails here.
	loopTarget   = 0.7 // keda.targetUtilization
	loopMin      = 1   // keda.minReplicas
	loopMax      = 5   // keda.maxReplicas
	loopFallback = 2   // keda.fallback.replicas
	// loopSpeedup divides every duration of the chart's scaling policy (see
	// loopTimings): the test's Prometheus scrapes every second and its HPA
	// syncs every 5 s (Kubernetes' default: 15 s), so the whole loop runs
	// three times faster than in a cluster, and the test in minutes.
	loopSpeedup = 3
)

// loopExpected is the chart's promise at a steady load (docs/autoscaling.md):
// ceil(load / target) replicas, clamped to [min, max], where load is the
// offered runtime work in runtimes: arrivals per second / one runtime's
// capacity (1 / its measured time per item).
func loopExpected(load float64) int {
	return min(max(int(math.Ceil(load/loopTarget)), loopMin), loopMax)
}

func TestControlLoop(t *testing.T) {
	testStart := time.Now()
	l := &controlLoop{t: t, dir: t.TempDir(), root: testenv.Root(t), timings: loopTimings(t)}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm",
		"keda-operator", "keda-adapter", "prometheus"} {
		l.bin(name) // fails with "run `make test`" when a tool is missing
	}
	t.Cleanup(func() { l.summary(time.Since(testStart)) })
	// How long after the load changes the replicas must follow it: the
	// rate window, a KEDA poll, an HPA sync (5 s), a scale-up period, and
	// 5 s of scrapes and ticks.
	settle := time.Duration(l.timings["keda.utilizationWindowSeconds"]+l.timings["keda.pollingInterval"]+5+
		l.timings["keda.scaleUp.periodSeconds"]+5) * time.Second
	t.Logf("the chart's default policy at %dx speed: %v; settling time %v", loopSpeedup, l.timings, settle)

	// 1. The API server, with the front proxy (aggregation layer) set up.
	began := time.Now()
	l.startAPIServer()
	l.stage("etcd + kube-apiserver ready", time.Since(began))

	began = time.Now()
	l.kubectl("apply", "--server-side", "-f", l.kedaCRDs())
	l.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
	for _, ns := range []string{"keda", loopNS} {
		l.kubectl("create", "namespace", ns)
	}
	// The ServiceAccount controller does not run: ServiceAccount admission
	// needs the default account for the ReplicaSet controller's pods.
	l.kubectl("create", "serviceaccount", "default", "-n", loopNS)
	l.stage("KEDA CRDs + namespaces", time.Since(began))

	// 2. KEDA: operator and metrics adapter, the adapter behind the aggregator.
	began = time.Now()
	l.startKEDA()
	l.stage("KEDA ready (APIService Available, operator /readyz)", time.Since(began))

	// 3. The controllers.
	began = time.Now()
	l.startControllers()
	l.stage("kube-controller-manager healthy", time.Since(began))

	// 4. The workload: a real proxy + runtime, and Prometheus scraping it.
	began = time.Now()
	l.startProxy()
	l.startPrometheus()
	l.stage("proxy + runtime + Prometheus ready (builds included)", time.Since(began))

	// 5. The chart. Prometheus scrapes the one proxy once per Pod of the
	// release, under each Pod's name (l.balance).
	began = time.Now()
	l.install(loopRelease)
	pod := l.podName(loopRelease, loopFullname)
	ctx, stopBalance := context.WithCancel(context.Background())
	t.Cleanup(stopBalance)
	go l.balance(ctx)
	l.waitPods(1)
	triggers := l.triggers(loopFullname)
	for _, tr := range triggers {
		t.Logf("ScaledObject %s: trigger %s, threshold %v: %s", loopFullname, tr.name, tr.threshold, tr.query)
		l.waitFor("a first sample of "+tr.name+" for "+pod, 60*time.Second, func() (bool, string) {
			v, ok := promQuery(t, l.promURL, tr.query)
			return ok, fmt.Sprintf("query %s: %v %v", tr.query, v, ok)
		})
	}
	if len(triggers) != 3 || triggers[0].threshold != loopTarget {
		t.Fatalf("the chart's default ScaledObject has triggers %v, want utilization (%v), utilization-ahead and expected-wait", triggers, loopTarget)
	}
	l.waitFor("the HPA reading the metric through the aggregator", 120*time.Second, func() (bool, string) {
		hpa := l.hpa(loopFullname)
		return condition(hpa, "ScalingActive") == "True" && l.hpaValue(hpa) >= 0, l.describe(loopFullname)
	})
	// Until the first scrapes, the queries have no value, which KEDA
	// counts as failures (every poll and HPA sync, here every 5 s), so
	// the fallback may apply for a while (the trend query proposes the
	// utilization until it has two points of its 15 s subquery).
	l.waitFallback(loopFullname, "False", 90*time.Second)
	l.waitReplicas(loopFullname, loopMin, 120*time.Second)
	if h := l.history(loopFullname, began); len(h) > 1 {
		t.Logf("after install, idle: replicas %v (the fallback while a trigger had no value yet)", h)
	}
	l.stage("helm install -> HPA reads the metric (idle, 1 replica)", time.Since(began))

	// 6. Cost guard: a pod that serves only cache hits must not scale up.
	began = time.Now()
	l.cacheHitsOnly(triggers, settle+10*time.Second)
	l.stage(fmt.Sprintf("cache hits only: 1 replica held (%v)", settle+10*time.Second), time.Since(began))

	// 7. A ramp, then a plateau: the replicas follow ceil(load / target).
	began = time.Now()
	peak := 2.3 // runtimes: 3.3 targets, so 4 replicas, and room below 5 for the trend trigger
	rampFor := 120 * time.Second
	// Long enough for a replica the trend trigger added on the ramp to go:
	// the trend window, the rate window, the scale-down window, and settle.
	plateauFor := time.Duration(l.timings["keda.trendWindowSeconds"]+l.timings["keda.utilizationWindowSeconds"]+
		l.timings["keda.scaleDown.stabilizationWindowSeconds"])*time.Second + settle
	loadCtx, stopLoad := context.WithTimeout(context.Background(), 12*time.Minute) // bounds every request
	ramp := &loopRamp{url: l.proxyURL, pods: l.pods, load: func(d time.Duration) float64 {
		return 0.3 + (peak-0.3)*min(1, d.Seconds()/rampFor.Seconds())
	}}
	t.Cleanup(func() { stopLoad(); ramp.wg.Wait() })
	ramp.start(loadCtx, l.itemTime())
	l.followLoad(ramp, began, rampFor, plateauFor, settle)
	l.stage(fmt.Sprintf("ramp 0.3 -> %.1f runtimes (%v), plateau (%v)", peak, rampFor, plateauFor), time.Since(began))
	atPeak := l.replicas(loopFullname)

	// 8. A second release, <fullname>-v2, in the same namespace: its pod's
	// series (same proxy, its own pod label) must not move the first.
	began = time.Now()
	l.install(loopSecond)
	pod2 := l.podName(loopSecond, loopSecond)
	l.setExtra(map[string]string{pod2: loopSecond})
	var counted, decoy []float64
	sample := func() {
		own := l.ownPods()
		for _, tr := range triggers {
			if tr.name == "utilization-ahead" { // a function of the first; its past differs
				continue
			}
			mine := podRE.ReplaceAllString(tr.query, fmt.Sprintf(`pod=~%q`, strings.Join(own, "|")))
			if v, ok := promQuery(t, l.promURL, fmt.Sprintf("(%s) - (%s)", tr.query, mine)); ok {
				counted = append(counted, v)
			}
			theirs := podRE.ReplaceAllString(tr.query, fmt.Sprintf(`pod=%q`, pod2))
			if v, ok := promQuery(t, l.promURL, theirs); ok {
				decoy = append(decoy, v)
			}
		}
	}
	l.waitFor(loopSecond+"'s HPA reading its own pod's series", 150*time.Second, func() (bool, string) {
		sample()
		hpa := l.hpa(loopSecond)
		return condition(hpa, "ScalingActive") == "True" && l.hpaValue(hpa) > 0, l.describe(loopSecond)
	})
	hold := time.Now()
	for time.Since(hold) < 15*time.Second { // three more HPA syncs of the first release
		sample()
		time.Sleep(time.Second)
	}
	h := l.history(loopFullname, began)
	t.Logf("%s read its own pod's series after %.1fs; %s went %v; its queries minus its own pods' series: %d samples in [%v, %v]; "+
		"the second release's pod series in [%v, %v]", loopSecond, hold.Sub(began).Seconds(), loopFullname, h,
		len(counted), minOf(counted), maxOf(counted), minOf(decoy), maxOf(decoy))
	switch {
	case len(decoy) == 0 || slices.Max(decoy) == 0:
		t.Errorf("the second release's pod series never had a value: nothing was checked")
	case slices.ContainsFunc(counted, func(v float64) bool { return math.Abs(v) > 0.05 }):
		t.Errorf("%s's queries count the second release's pod %s: up to %v above its own pods' series", loopFullname, pod2, maxOf(counted))
	}
	// Not an assertion on the first release's replicas: it is at its
	// plateau under live load, where the trend trigger may add one
	// (CI: [4 5] during this hold). Its queries are what the second
	// release could disturb, and the check above reads exactly that.
	if slices.Max(h) > h[0] {
		t.Logf("%s moved %v during the hold (its own plateau; its queries held none of %s's series)", loopFullname, h, loopSecond)
	}
	l.stage("second release reads its own series, first stays (incl. 15 s hold)", time.Since(began))
	l.helm("uninstall", loopSecond, "-n", loopNS, "--wait", "--timeout=60s")
	// Its HPA belongs to its ScaledObject through an ownerReference: the
	// garbage collector, which does not run here, would delete it.
	l.kubectl("delete", "hpa", "keda-hpa-"+loopSecond, "-n", loopNS, "--ignore-not-found")
	l.setExtra(nil)
	l.waitReplicas(loopFullname, atPeak, 120*time.Second) // waits only where it moved

	// 9. Prometheus gone under load: fallback with currentReplicasIfHigher
	// keeps the busy replicas (static fallback would go down to 2).
	began = time.Now()
	l.prom.stop()
	l.waitFallback(loopFullname, "True", 90*time.Second)
	fallbackAt := time.Now()
	l.stage(fmt.Sprintf("Prometheus stopped -> Fallback condition True (at %d replicas)", atPeak), fallbackAt.Sub(began))
	down := time.Duration(l.timings["keda.scaleDown.stabilizationWindowSeconds"]+l.timings["keda.scaleDown.periodSeconds"]) * time.Second
	time.Sleep(down + 10*time.Second) // > scale-down window + policy period + two HPA syncs
	if h := l.history(loopFullname, fallbackAt); !slices.Equal(h, []int{atPeak}) {
		t.Errorf("with Prometheus down at %d replicas: replicas %v, want [%d] (fallback max(current %d, %d))", atPeak, h, atPeak, atPeak, loopFallback)
	}
	if total := l.hpaTotal(loopFullname); math.Abs(total-float64(atPeak)*loopTarget) > 0.01 {
		t.Errorf("HPA metric in fallback at %d replicas: %v in total, want %v (max(%d, %d) x target %v)", atPeak, total, float64(atPeak)*loopTarget, atPeak, loopFallback, loopTarget)
	}
	began = time.Now()
	l.startPrometheus()
	l.waitFallback(loopFullname, "False", 90*time.Second)
	l.stage("Prometheus back -> Fallback condition False", time.Since(began))

	// 10. The load stops: down to the minimum after the scale-down window,
	// never back up.
	l.waitReplicas(loopFullname, atPeak, 120*time.Second) // waits only where the load dipped
	began = time.Now()
	stopLoad()
	ramp.wg.Wait()
	t.Logf("load: %d requests answered, %d failed %v, %d not sent (too many in flight)", ramp.ok.Load(), ramp.failed.Load(), ramp.statuses(), ramp.dropped.Load())
	l.waitReplicas(loopFullname, loopMin, down+90*time.Second)
	h = l.history(loopFullname, began)
	l.logSteps(loopFullname, began)
	if !slices.IsSortedFunc(h, func(a, b int) int { return b - a }) {
		t.Errorf("scale-down went %v, want no step up", h)
	}
	// The idle level comes a full window after the load stopped. (A pod
	// the plateau's load did not need, kept by an earlier, higher
	// recommendation, may go sooner: that recommendation ages out of the
	// window during the plateau, as in the CI run where 5 -> 4 came 40.9 s
	// after the load stopped, and 4 -> 1 at 51 s.)
	// The window counts from the last high recommendation, which may
	// precede the stop by one HPA sync (5 s) and one KEDA poll: a run
	// reached 1 at 40.1 s for a 42 s window.
	slack := 5*time.Second + time.Duration(l.timings["keda.pollingInterval"])*time.Second
	if idle := l.reached(loopFullname, began, loopMin); idle < time.Duration(l.timings["keda.scaleDown.stabilizationWindowSeconds"])*time.Second-slack {
		t.Errorf("down to %d replica(s) %.1fs after the load stopped: before the scale-down window of %d s", loopMin, idle.Seconds(), l.timings["keda.scaleDown.stabilizationWindowSeconds"])
	}
	l.stage(fmt.Sprintf("load stopped -> scale down %v", h), time.Since(began))

	// 11. Prometheus gone while idle: the fallback replicas apply.
	began = time.Now()
	l.prom.stop()
	l.waitFallback(loopFullname, "True", 90*time.Second)
	l.waitReplicas(loopFullname, loopFallback, 90*time.Second)
	// The HPA controller scales the Deployment before it writes its own
	// status: read right after the scale, the status can still be the
	// previous sync's, whose metric read failed (no current value; CI got
	// -1). Wait, at most two syncs and a poll, for the status of the sync
	// that scaled, then check the value KEDA served.
	l.waitFor("the HPA's status at the fallback's replicas", 20*time.Second, func() (bool, string) {
		hpa := l.hpa(loopFullname)
		n, _ := get(hpa, "status", "currentReplicas").(float64)
		return int(n) == loopFallback && l.hpaValue(hpa) >= 0, l.describe(loopFullname)
	})
	if total := l.hpaTotal(loopFullname); math.Abs(total-loopFallback*loopTarget) > 0.01 {
		t.Errorf("HPA metric in fallback: %v in total, want %v (fallback %d x target %v)",
			total, loopFallback*loopTarget, loopFallback, loopTarget)
	}
	l.stage(fmt.Sprintf("Prometheus stopped at 1 -> fallback %d replicas", loopFallback), time.Since(began))
}

// loopTimings returns every duration of the chart's default scaling policy
// (values.yaml's keda section), divided by loopSpeedup: the values the test
// installs (l.install). Everything else stays the chart's default.
func loopTimings(t *testing.T) map[string]int {
	b, err := os.ReadFile(filepath.Join(chartDir(t), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Keda map[string]any }
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, key := range []string{"pollingInterval", "utilizationWindowSeconds", "trendWindowSeconds", "scaleAheadSeconds",
		"scaleUp.periodSeconds", "scaleUp.stabilizationWindowSeconds", "scaleDown.periodSeconds", "scaleDown.stabilizationWindowSeconds"} {
		var path []any
		for _, p := range strings.Split(key, ".") {
			path = append(path, p)
		}
		s, ok := get(v.Keda, path...).(int)
		if !ok {
			t.Fatalf("values.yaml: keda.%s is not a number of seconds: %v", key, get(v.Keda, path...))
		}
		out["keda."+key] = int(math.Round(float64(s) / loopSpeedup))
	}
	return out
}

func minOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return slices.Min(v)
}

func maxOf(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	return slices.Max(v)
}

// loopHTTP is for the readiness checks: every request bounded.
var loopHTTP = &http.Client{Timeout: 5 * time.Second}

// controlLoop holds the processes and the clients of one test.
type controlLoop struct {
	t           *testing.T
	dir, root   string
	api         string // https://127.0.0.1:port
	token       string
	kubeconfig  string
	hc          *http.Client
	caPEM       []byte
	kedaCerts   string // ca.crt, tls.crt, tls.key for the adapter and the operator
	critical    []*loopProc
	prom        *loopProc
	promURL     string
	promPort    int
	proxyURL    string
	proxyPort   int
	metricsPort int            // the proxy's METRICS_PORT: Prometheus scrapes it, as the chart's monitors do
	timings     map[string]int // the values install sets (loopTimings)
	stages      []string

	mu      sync.Mutex
	watch   map[string][]loopChange // spec.replicas of each Deployment, as it changed
	scraped []string                // the first release's Pods Prometheus scrapes (l.balance)
	extra   map[string]string       // more targets: pod -> release
}

type loopChange struct {
	at       time.Time
	replicas int
}

func (l *controlLoop) bin(name string) string { return tool(l.t, name) }

func (l *controlLoop) stage(what string, d time.Duration) {
	l.t.Helper()
	line := fmt.Sprintf("%-62s %6.1f s", what, d.Seconds())
	l.stages = append(l.stages, line)
	l.t.Logf("TIMING %s", line)
}

func (l *controlLoop) summary(total time.Duration) {
	l.t.Logf("stage timings:\n  %s\n  %-62s %6.1f s", strings.Join(l.stages, "\n  "), "total", total.Seconds())
}

// loopProc is a process that lives until the test ends (or stop), its
// output in a log file whose tail is printed when the test fails.
type loopProc struct {
	name, log string
	cmd       *exec.Cmd
	exited    chan struct{}
}

func (l *controlLoop) start(name string, env []string, bin string, args ...string) *loopProc {
	l.t.Helper()
	logFile := filepath.Join(l.dir, name+".log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	p := &loopProc{name: name, log: logFile, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.exited) }()
	l.t.Cleanup(func() {
		p.stop()
		if l.t.Failed() {
			l.t.Logf("--- last lines of %s (%s):\n%s", name, logFile, tailLines(logFile, 25))
		}
	})
	return p
}

func (p *loopProc) stop() {
	p.cmd.Process.Kill() // an error only says it is gone already
	<-p.exited
}

func (p *loopProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func tailLines(file string, n int) string {
	b, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitFor polls cond every half second until it holds, at most timeout; it
// fails at once if a process the loop needs has exited.
func (l *controlLoop) waitFor(what string, timeout time.Duration, cond func() (bool, string)) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		for _, p := range l.critical {
			if !p.alive() {
				l.t.Fatalf("%s exited while waiting for %s (%s)", p.name, what, status)
			}
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: not within %v (%s)", what, timeout, status)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// --- certificates ---

type loopCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newLoopCA(t *testing.T, cn string) *loopCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &loopCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func serial(t *testing.T) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// issue writes name.crt and name.key (PEM) into dir, signed by the CA.
func (ca *loopCA) issue(t *testing.T, dir, name, cn string, usage []x509.ExtKeyUsage, dns []string, ips ...net.IP) (crt, key string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: usage,
		DNSNames: dns, IPAddresses: ips}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	crt, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return crt, key
}

// --- the API server ---

// startAPIServer starts etcd and kube-apiserver on 127.0.0.1 (the shape of
// apiserver_test.go's, kept here on its own), with its serving certificate
// and the front proxy's CA and client certificate generated here: the
// aggregation layer proxies to the KEDA adapter with that client
// certificate and the X-Remote-* headers.
func (l *controlLoop) startAPIServer() {
	t := l.t
	dir := filepath.Join(l.dir, "apiserver")
	os.MkdirAll(dir, 0o755)
	etcdPort, peerPort, apiPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	l.critical = append(l.critical, l.start("etcd", nil, l.bin("etcd"), "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort)))

	ca := newLoopCA(t, "batchgate-test-cluster-ca")
	frontCA := newLoopCA(t, "batchgate-test-front-proxy-ca")
	l.caPEM = ca.pem
	caFile, frontCAFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "front-proxy-ca.crt")
	os.WriteFile(caFile, ca.pem, 0o644)
	os.WriteFile(frontCAFile, frontCA.pem, 0o644)
	serveCrt, serveKey := ca.issue(t, dir, "apiserver", "kube-apiserver", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, net.IPv4(127, 0, 0, 1))
	proxyCrt, proxyKey := frontCA.issue(t, dir, "front-proxy-client", "front-proxy-client",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	saDER, _ := x509.MarshalPKCS8PrivateKey(saKey)
	saPubDER, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	saFile, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	os.WriteFile(saFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}), 0o600)
	os.WriteFile(saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}), 0o644)
	l.token = "batchgate-control-loop-token"
	os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(l.token+",admin,admin,system:masters\n"), 0o600)

	l.critical = append(l.critical, l.start("kube-apiserver", nil, l.bin("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+serveCrt, "--tls-private-key-file="+serveKey,
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saFile,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/24",
		"--endpoint-reconciler-type=none", "--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		// The aggregation layer: who may assert a user to an extension API
		// server, and the client certificate the proxy shows it.
		"--requestheader-client-ca-file="+frontCAFile, "--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+proxyCrt, "--proxy-client-key-file="+proxyKey,
		// Route to the Service's endpoints, not its cluster IP: there is no kube-proxy.
		"--enable-aggregator-routing=true"))

	l.api = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	l.hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	l.kubeconfig = filepath.Join(dir, "kubeconfig")
	os.WriteFile(l.kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: admin, user: {token: %s}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, l.api, base64.StdEncoding.EncodeToString(ca.pem), l.token)), 0o600)
	l.waitFor("kube-apiserver /readyz", 120*time.Second, func() (bool, string) {
		b, err := l.raw("/readyz")
		return err == nil && string(b) == "ok", fmt.Sprintf("%v %.80s", err, b)
	})
}

// raw GETs a path of the API server.
func (l *controlLoop) raw(path string) ([]byte, error) {
	req, _ := http.NewRequest("GET", l.api+path, nil)
	req.Header.Set("Authorization", "Bearer "+l.token)
	resp, err := l.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// object GETs an object, or nil.
func (l *controlLoop) object(path string) map[string]any {
	b, err := l.raw(path)
	if err != nil {
		return nil
	}
	var o map[string]any
	json.Unmarshal(b, &o)
	return o
}

// condition returns the status of a condition of an object's status.
func condition(o map[string]any, typ string) string {
	conds, _ := get(o, "status", "conditions").([]any)
	for _, c := range conds {
		if get(c, "type") == typ {
			s, _ := get(c, "status").(string)
			return s
		}
	}
	return ""
}

func (l *controlLoop) kubectlIn(stdin string, args ...string) []byte {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin("kubectl"), append([]string{"--kubeconfig", l.kubeconfig, "--request-timeout=60s"}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		l.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (l *controlLoop) kubectl(args ...string) []byte {
	l.t.Helper()
	return l.kubectlIn("", args...)
}

// kedaCRDs returns KEDA's CRD folder from the module the binaries are built
// from (tools/go.mod pins it).
func (l *controlLoop) kedaCRDs() string {
	l.t.Helper()
	out, err := exec.Command("go", "-C", filepath.Join(l.root, "tools"), "list", "-m", "-f", "{{.Dir}}",
		"github.com/kedacore/keda/v2").CombinedOutput()
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "bases")
	if err != nil || !fileExists(dir) {
		l.t.Fatalf("KEDA's module (tools/go.mod) is not downloaded: run `make test`, which builds KEDA from it: %v\n%s", err, out)
	}
	return dir
}

// --- KEDA ---

// startKEDA registers the adapter as v1beta1.external.metrics.k8s.io behind
// a selector-less Service, and starts the operator and the adapter with one
// certificate (server and client: the adapter <-> operator gRPC is mutual
// TLS) signed by the cluster CA, which is also the APIService's caBundle.
func (l *controlLoop) startKEDA() {
	t := l.t
	dir := filepath.Join(l.dir, "keda")
	os.MkdirAll(filepath.Join(dir, "ca"), 0o755)
	l.kedaCerts = dir
	ca := newLoopCA(t, "batchgate-test-keda-ca")
	os.WriteFile(filepath.Join(dir, "ca.crt"), ca.pem, 0o644)
	ca.issue(t, dir, "tls", "keda", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		[]string{"keda-metrics-apiserver.keda.svc", "keda-metrics-apiserver.keda.svc.cluster.local",
			"keda-operator.keda.svc", "keda-operator.keda.svc.cluster.local", "localhost"}, net.IPv4(127, 0, 0, 1))

	adapterPort, grpcPort, probePort, adapterMetrics := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), freePortAnyAddress(t)
	// An IPv4 EndpointSlice may not hold a loopback address (validation:
	// "may not be in the loopback range"); an FQDN one may hold the name
	// "127.0.0.1", and the aggregator dials Addresses[0] whatever the type.
	l.kubectlIn(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: keda}
spec:
  ports: [{name: https, port: 443, targetPort: %[1]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: keda-metrics-apiserver-loopback
  namespace: keda
  labels: {kubernetes.io/service-name: keda-metrics-apiserver}
addressType: FQDN
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
ports: [{name: https, port: %[1]d, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  service: {name: keda-metrics-apiserver, namespace: keda, port: 443}
  caBundle: %[2]s
  groupPriorityMinimum: 100
  versionPriority: 100
`, adapterPort, base64.StdEncoding.EncodeToString(ca.pem)), "apply", "-f", "-")

	env := []string{"KUBECONFIG=" + l.kubeconfig, "WATCH_NAMESPACE=", "POD_NAMESPACE=keda", "POD_NAME=keda-operator-test",
		"KEDA_CLUSTER_OBJECT_NAMESPACE=keda"}
	l.critical = append(l.critical, l.start("keda-operator", env, l.bin("keda-operator"),
		"--leader-elect=false", "--metrics-bind-address=0", fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort),
		fmt.Sprintf("--metrics-service-bind-address=127.0.0.1:%d", grpcPort), "--cert-dir="+dir,
		"--ca-dir="+filepath.Join(dir, "ca"), "--zap-log-level=info"))
	l.critical = append(l.critical, l.start("keda-adapter", env, l.bin("keda-adapter"),
		"--secure-port="+strconv.Itoa(adapterPort), "--bind-address=127.0.0.1", "--cert-dir="+dir,
		"--tls-cert-file="+filepath.Join(dir, "tls.crt"), "--tls-private-key-file="+filepath.Join(dir, "tls.key"),
		"--lister-kubeconfig="+l.kubeconfig, "--authentication-kubeconfig="+l.kubeconfig,
		"--authorization-kubeconfig="+l.kubeconfig,
		fmt.Sprintf("--metrics-service-address=127.0.0.1:%d", grpcPort),
		fmt.Sprintf("--port=%d", adapterMetrics), "--zap-log-level=info"))

	l.waitFor("the KEDA operator's /readyz", 120*time.Second, func() (bool, string) {
		resp, err := loopHTTP.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	l.waitFor("APIService v1beta1.external.metrics.k8s.io Available", 120*time.Second, func() (bool, string) {
		o := l.object("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io")
		return condition(o, "Available") == "True", fmt.Sprint(get(o, "status", "conditions"))
	})
	// Through the aggregator, end to end: discovery of the external metrics
	// API. Available can turn True a moment before the aggregator proxies
	// the group: a cold run got 503 Service Unavailable from a single GET
	// right after it, so the GET is retried (bounded like the waits above).
	l.waitFor("external metrics API discovery through the aggregator", 30*time.Second, func() (bool, string) {
		if _, err := l.raw("/apis/external.metrics.k8s.io/v1beta1"); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// freePortAnyAddress returns a TCP port free on every address now, for
// the adapter's metrics server, which binds :port: a port free on
// 127.0.0.1 may be held on another address (the adapter then panics with
// "bind: address already in use", as it did on a shared VM).
func freePortAnyAddress(t *testing.T) int {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// --- kube-controller-manager ---

func (l *controlLoop) startControllers() {
	port := testenv.FreePort(l.t)
	l.critical = append(l.critical, l.start("kube-controller-manager", nil, l.bin("kube-controller-manager"),
		"--kubeconfig="+l.kubeconfig, "--authentication-kubeconfig="+l.kubeconfig, "--authorization-kubeconfig="+l.kubeconfig,
		"--controllers=horizontalpodautoscaling,deployment,replicaset", "--leader-elect=false",
		"--horizontal-pod-autoscaler-sync-period=5s",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--cert-dir="+filepath.Join(l.dir, "kcm")))
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	l.waitFor("kube-controller-manager /healthz", 120*time.Second, func() (bool, string) {
		resp, err := insecure.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	l.watch = map[string][]loopChange{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l.t.Cleanup(func() { cancel(); <-done })
	go func() { // spec.replicas of both releases' Deployments, every 250 ms
		defer close(done)
		for ctx.Err() == nil {
			for _, name := range []string{loopFullname, loopSecond} {
				d := l.object(fmt.Sprintf("/apis/apps/v1/namespaces/%s/deployments/%s", loopNS, name))
				r, ok := get(d, "spec", "replicas").(float64)
				if !ok {
					continue
				}
				l.mu.Lock()
				if h := l.watch[name]; len(h) == 0 || h[len(h)-1].replicas != int(r) {
					l.watch[name] = append(h, loopChange{time.Now(), int(r)})
				}
				l.mu.Unlock()
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
}

// replicas returns the Deployment's spec.replicas as last seen (0: none yet).
func (l *controlLoop) replicas(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.watch[name]
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].replicas
}

// history returns the values spec.replicas took from since on, the value
// it had then first.
func (l *controlLoop) history(name string, since time.Time) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, c := range l.watch[name] {
		if c.at.After(since) {
			out = append(out, c.replicas)
		} else {
			out = []int{c.replicas}
		}
	}
	return out
}

func (l *controlLoop) logSteps(name string, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.watch[name] {
		if c.at.After(since) {
			l.t.Logf("  %s: %d replicas at +%.1fs", name, c.replicas, c.at.Sub(since).Seconds())
		}
	}
}

func (l *controlLoop) waitReplicas(name string, want int, timeout time.Duration) {
	l.t.Helper()
	l.waitFor(fmt.Sprintf("%s at %d replicas", name, want), timeout, func() (bool, string) {
		return l.replicas(name) == want, l.describe(name)
	})
}

func (l *controlLoop) waitFallback(name, status string, timeout time.Duration) {
	l.t.Helper()
	l.waitFor(fmt.Sprintf("%s's Fallback condition %s", name, status), timeout, func() (bool, string) {
		return condition(l.scaledObject(name), "Fallback") == status, l.describe(name)
	})
}

func (l *controlLoop) scaledObject(name string) map[string]any {
	return l.object(fmt.Sprintf("/apis/keda.sh/v1alpha1/namespaces/%s/scaledobjects/%s", loopNS, name))
}

// loopTrigger is one trigger of a ScaledObject as installed.
type loopTrigger struct {
	name, query string
	threshold   float64
}

func (l *controlLoop) triggers(name string) []loopTrigger {
	l.t.Helper()
	var out []loopTrigger
	trs, _ := get(l.scaledObject(name), "spec", "triggers").([]any)
	for _, tr := range trs {
		q, _ := get(tr, "metadata", "query").(string)
		th, err := strconv.ParseFloat(fmt.Sprint(get(tr, "metadata", "threshold")), 64)
		if q == "" || err != nil {
			l.t.Fatalf("ScaledObject %s: a trigger without a query or threshold: %v", name, tr)
		}
		n, _ := get(tr, "name").(string)
		out = append(out, loopTrigger{n, q, th})
	}
	if len(out) == 0 {
		l.t.Fatalf("ScaledObject %s has no triggers", name)
	}
	return out
}

// podRE is the chart's pod selector in a query.
var podRE = regexp.MustCompile(`pod=~"[^"]*"`)

// hpa returns the HPA KEDA made for the ScaledObject.
func (l *controlLoop) hpa(name string) map[string]any {
	return l.object(fmt.Sprintf("/apis/autoscaling/v2/namespaces/%s/horizontalpodautoscalers/keda-hpa-%s", loopNS, name))
}

// hpaValue is the external metric's current value per replica as the HPA
// last read it through the aggregator (-1: none).
func (l *controlLoop) hpaValue(hpa map[string]any) float64 {
	s, _ := get(hpa, "status", "currentMetrics", 0, "external", "current", "averageValue").(string)
	if s == "" {
		return -1
	}
	return parseQuantity(s)
}

// hpaTotal is the external metric's value as KEDA served it: the HPA's
// per-replica value times the replicas it divided by.
func (l *controlLoop) hpaTotal(name string) float64 {
	hpa := l.hpa(name)
	n, _ := get(hpa, "status", "currentReplicas").(float64)
	return l.hpaValue(hpa) * n
}

// parseQuantity reads the forms a metric value takes in a Kubernetes
// quantity: "12", "5500m", "2k".
func parseQuantity(s string) float64 {
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "m"):
		mult, s = 1e-3, strings.TrimSuffix(s, "m")
	case strings.HasSuffix(s, "k"):
		mult, s = 1e3, strings.TrimSuffix(s, "k")
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return v * mult
}

// describe is the state of one release's scaling, for failure messages.
func (l *controlLoop) describe(name string) string {
	so, hpa := l.scaledObject(name), l.hpa(name)
	var conds []string
	for _, c := range []string{"Ready", "Active", "Fallback"} {
		conds = append(conds, c+"="+condition(so, c))
	}
	for _, c := range []string{"AbleToScale", "ScalingActive", "ScalingLimited"} {
		conds = append(conds, "hpa."+c+"="+condition(hpa, c))
	}
	msg, _ := json.Marshal(get(hpa, "status", "conditions"))
	return fmt.Sprintf("%s: replicas %d, HPA metric %v/replica, desired %v; %s; HPA conditions %s",
		name, l.replicas(name), l.hpaValue(hpa), get(hpa, "status", "desiredReplicas"), strings.Join(conds, " "), msg)
}

// --- the workload and Prometheus ---

func (l *controlLoop) startProxy() {
	t := l.t
	dir := filepath.Join(l.dir, "serve")
	os.MkdirAll(dir, 0o755)
	for _, pkg := range []string{"runtime", "proxy"} {
		run(t, "go", "build", "-C", l.root, "-o", filepath.Join(dir, pkg), "./"+pkg)
	}
	socket := filepath.Join(dir, "rt.sock")
	l.proxyPort, l.metricsPort = testenv.FreePort(t), testenv.FreePort(t)
	l.critical = append(l.critical, l.start("runtime", nil, filepath.Join(dir, "runtime"), "serve", "-socket", socket,
		"-model", testenv.ResNet50Model(t), "-ort-library", testenv.ORTLibrary(t),
		"-ort-cache-dir", filepath.Join(l.root, ".deps", "ort-cache"), "-max-batch-size", "1"))
	l.critical = append(l.critical, l.start("proxy", []string{"PORT=" + strconv.Itoa(l.proxyPort),
		"METRICS_PORT=" + strconv.Itoa(l.metricsPort), "GRPC_PORT=0", "RUNTIME_SOCKET=" + socket,
		"MAX_BATCH_SIZE=1", "LOG_LEVEL=warn", "DRAIN_DELAY=0s",
		// A closed loop keeps the queue at the number of clients as long as
		// no request fails: on a busy machine an inference can take seconds,
		// which the defaults (4 s stall, 15 s batch, 30 s request) would fail.
		"RUNTIME_STALL_TIMEOUT=2m", "RUNTIME_BATCH_TIMEOUT=2m", "REQUEST_TIMEOUT=5m"}, filepath.Join(dir, "proxy")))
	l.proxyURL = fmt.Sprintf("http://127.0.0.1:%d", l.proxyPort)
	for _, w := range []struct{ what, url string }{
		{"the proxy's /readyz", l.proxyURL + "/readyz"},
		{"the proxy's /metrics on METRICS_PORT", fmt.Sprintf("http://127.0.0.1:%d/metrics", l.metricsPort)},
	} {
		l.waitFor(w.what, 120*time.Second, func() (bool, string) {
			resp, err := loopHTTP.Get(w.url)
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == 200, resp.Status
		})
	}
}

// startPrometheus starts (or restarts, same port and storage) Debian's
// Prometheus, scraping every second the targets of targets.json.
func (l *controlLoop) startPrometheus() {
	dir := filepath.Join(l.dir, "prometheus")
	if l.promPort == 0 {
		os.MkdirAll(dir, 0o755)
		l.promPort = testenv.FreePort(l.t)
		l.promURL = fmt.Sprintf("http://127.0.0.1:%d", l.promPort)
		os.WriteFile(filepath.Join(dir, "targets.json"), []byte("[]"), 0o644)
		os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: batchgate
    file_sd_configs: [{files: [targets.json], refresh_interval: 1s}]
`), 0o644)
	}
	l.prom = l.start("prometheus", nil, l.bin("prometheus"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", l.promPort))
	l.waitFor("Prometheus /-/ready", 60*time.Second, func() (bool, string) {
		resp, err := loopHTTP.Get(l.promURL + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
}

// balance plays the Service and Kubernetes' pod discovery for the first
// release: every half second it lists the release's Pods (Pending: they
// never run) and has Prometheus scrape the one proxy once under each
// Pod's name, with the labels pod discovery would give it (and l.extra's
// targets too). The load generator splits its arrivals over the same Pods
// (l.pods), as if each were ready at once and got its share: the one proxy
// shows one Pod's load, the sum over the Pods the whole load.
func (l *controlLoop) balance(ctx context.Context) {
	dir := filepath.Join(l.dir, "prometheus")
	var written []byte
	for ; ctx.Err() == nil; time.Sleep(500 * time.Millisecond) {
		pods := l.object(fmt.Sprintf("/api/v1/namespaces/%s/pods?labelSelector=%s", loopNS,
			url.QueryEscape("app.kubernetes.io/instance="+loopRelease)))
		items, ok := get(pods, "items").([]any)
		if !ok {
			continue
		}
		var names []string
		for _, it := range items {
			if name, _ := get(it, "metadata", "name").(string); name != "" && get(it, "metadata", "deletionTimestamp") == nil {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		l.mu.Lock()
		l.scraped = names
		targets := maps.Clone(l.extra)
		l.mu.Unlock()
		if targets == nil {
			targets = map[string]string{}
		}
		for _, n := range names {
			targets[n] = loopFullname
		}
		type group struct {
			Targets []string          `json:"targets"`
			Labels  map[string]string `json:"labels"`
		}
		var groups []group
		for _, pod := range slices.Sorted(maps.Keys(targets)) {
			groups = append(groups, group{[]string{fmt.Sprintf("127.0.0.1:%d", l.metricsPort)},
				map[string]string{"namespace": loopNS, "pod": pod, "release": targets[pod]}})
		}
		b, _ := json.Marshal(groups)
		if !bytes.Equal(b, written) {
			os.WriteFile(filepath.Join(dir, "targets.json.tmp"), b, 0o644)
			os.Rename(filepath.Join(dir, "targets.json.tmp"), filepath.Join(dir, "targets.json"))
			written = b
		}
	}
}

// pods is how many Pods of the first release Prometheus is told to scrape
// (at least 1).
func (l *controlLoop) pods() int { return max(1, len(l.ownPods())) }

func (l *controlLoop) ownPods() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.scraped)
}

// setExtra sets the targets (pod -> release) Prometheus scrapes besides
// the first release's Pods, and waits until it scrapes them all.
func (l *controlLoop) setExtra(pods map[string]string) {
	l.t.Helper()
	l.mu.Lock()
	l.extra = pods
	l.mu.Unlock()
	l.waitPods(len(l.ownPods()))
}

// waitPods waits until the first release has n Pods and Prometheus scrapes
// each of them and of l.extra.
func (l *controlLoop) waitPods(n int) {
	l.t.Helper()
	l.waitFor(fmt.Sprintf("Prometheus scraping %d pod(s) and the extra targets", n), 60*time.Second, func() (bool, string) {
		own := l.ownPods()
		l.mu.Lock()
		want := len(own) + len(l.extra)
		l.mu.Unlock()
		v, _ := promQuery(l.t, l.promURL, `count(up{job="batchgate"} == 1)`)
		return len(own) == n && int(v) == want, fmt.Sprintf("pods %v, %v of %d targets up", own, v, want)
	})
}

// itemTime is the runtime's mean time per item so far, as Prometheus has
// it (batches of 1: inference_runtime_seconds).
func (l *controlLoop) itemTime() float64 {
	l.t.Helper()
	v, ok := promQuery(l.t, l.promURL, fmt.Sprintf(`max(inference_runtime_seconds_sum{namespace=%q}) / max(inference_runtime_seconds_count{namespace=%q})`, loopNS, loopNS))
	if !ok || v <= 0 || math.IsNaN(v) {
		l.t.Fatalf("no runtime time per item in Prometheus yet: %v", v)
	}
	return v
}

// --- the chart ---

func (l *controlLoop) helm(args ...string) []byte {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin("helm"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+l.kubeconfig, "HELM_CACHE_HOME="+filepath.Join(l.dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(l.dir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(l.dir, "helm", "data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		l.t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// install installs the chart with its default values except two: the
// test's Prometheus, and every duration of the scaling policy divided by
// loopSpeedup (loopTimings), for the test's faster scrapes and HPA syncs.
func (l *controlLoop) install(release string) {
	l.t.Helper()
	args := []string{"install", release, chartDir(l.t), "-n", loopNS, "--set", "keda.prometheusAddress=" + l.promURL}
	for _, k := range slices.Sorted(maps.Keys(l.timings)) {
		args = append(args, "--set", fmt.Sprintf("%s=%d", k, l.timings[k]))
	}
	l.helm(args...)
	fb := get(l.scaledObject(fullnameOf(release)), "spec", "fallback")
	l.t.Logf("installed %s: fallback %v", release, fb)
	// Prometheus scrapes the proxy's METRICS_PORT (setTargets): the port
	// the stored pod template exposes as `metrics` and announces in its
	// prometheus.io/port annotation.
	tmpl := get(l.object(fmt.Sprintf("/apis/apps/v1/namespaces/%s/deployments/%s", loopNS, fullnameOf(release))), "spec", "template")
	proxy := get(tmpl, "spec", "containers", 0)
	var port string
	ports, _ := get(proxy, "ports").([]any)
	for _, p := range ports {
		if get(p, "name") == "metrics" {
			port = fmt.Sprint(get(p, "containerPort"))
		}
	}
	if env := envOf(proxy)["METRICS_PORT"]; port == "" || env != port || get(tmpl, "metadata", "annotations", "prometheus.io/port") != port {
		l.t.Errorf("%s: container port metrics %q, METRICS_PORT %q, prometheus.io/port %v: want one metrics port", release, port, env, get(tmpl, "metadata", "annotations", "prometheus.io/port"))
	}
}

func fullnameOf(release string) string {
	if strings.Contains(release, "batchgate") {
		return release
	}
	return release + "-batchgate"
}

// podName waits for a Pod of the release (created by the ReplicaSet
// controller: <fullname>-<rs hash>-<pod hash>, Pending for ever) and returns
// its name.
func (l *controlLoop) podName(release, fullname string) string {
	l.t.Helper()
	shape := regexp.MustCompile("^" + regexp.QuoteMeta(fullname) + "-[a-z0-9]+-[a-z0-9]+$")
	var name string
	l.waitFor("a pod of "+release, 60*time.Second, func() (bool, string) {
		pods := l.object(fmt.Sprintf("/api/v1/namespaces/%s/pods?labelSelector=%s", loopNS,
			url.QueryEscape("app.kubernetes.io/instance="+release)))
		name, _ = get(pods, "items", 0, "metadata", "name").(string)
		return name != "", "no pod yet"
	})
	if !shape.MatchString(name) {
		l.t.Fatalf("pod %q does not have the shape %s", name, shape)
	}
	return name
}

// cacheHitsOnly is the cost guard: closed-loop clients all post one image,
// so that every request after the first is a cache hit, which never reaches
// the runtime. For hold, the Deployment must stay at its one replica and no
// trigger may read above its threshold (it would propose a second
// replica). The hits must be many enough that, had each cost an inference,
// the formula would ask for more than one replica: else nothing was
// checked.
func (l *controlLoop) cacheHitsOnly(triggers []loopTrigger, hold time.Duration) {
	t := l.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hold+time.Minute)
	hits := &loopLoad{url: l.proxyURL, image: uniquePNG(-24)}
	defer func() { cancel(); hits.wg.Wait() }()
	began := time.Now()
	hits.add(ctx, 4)
	worst := make([]float64, len(triggers))
	var rates []float64
	l.waitFor(fmt.Sprintf("%v of cache hits only", hold), hold+time.Minute, func() (bool, string) {
		for i, tr := range triggers {
			if v, ok := promQuery(t, l.promURL, tr.query); ok {
				worst[i] = max(worst[i], v)
			}
		}
		if v, ok := promQuery(t, l.promURL, fmt.Sprintf(`max(rate(inference_cache_hits_total{namespace=%q}[10s]))`, loopNS)); ok && v > 0 {
			rates = append(rates, v)
		}
		return time.Since(began) >= hold, l.describe(loopFullname)
	})
	if len(rates) == 0 {
		t.Fatalf("no cache hit in %v: %d answered, %d failed %v", hold, hits.ok.Load(), hits.failed.Load(), hits.statuses())
	}
	slices.Sort(rates)
	rate, item, h := rates[len(rates)/2], l.itemTime(), l.history(loopFullname, began)
	t.Logf("cache hits only for %v: %d answered, %d failed %v; %.0f hits/s (median of %d samples); as inferences of %.3f s "+
		"they would be %.1f runtimes, %d replicas; the triggers' highest values %v (thresholds: their own); replicas %v",
		hold, hits.ok.Load(), hits.failed.Load(), hits.statuses(), rate, len(rates), item, rate*item, loopExpected(rate*item), worst, h)
	if loopExpected(rate*item) <= loopMin {
		t.Fatalf("%.0f cache hits/s would be %.2f runtimes as inferences: too few to show anything", rate, rate*item)
	}
	for i, tr := range triggers {
		if worst[i] > tr.threshold {
			t.Errorf("trigger %s read %v on cache hits alone, above its threshold %v: it proposes %d replicas", tr.name, worst[i], tr.threshold, int(math.Ceil(worst[i]/tr.threshold)))
		}
	}
	if !slices.Equal(h, []int{loopMin}) {
		t.Errorf("cache hits alone moved the Deployment: replicas %v, want [%d]", h, loopMin)
	}
	if t.Failed() {
		t.FailNow() // the ramp would not start from one idle replica
	}
}

// followLoad samples, every half second until the ramp and the plateau are
// over, the load offered in runtimes (the arrivals of the last 10 s times
// the runtime's measured time per item over the last 20 s, which also
// steers the generator) and the replicas. Then, from settle after the
// start: the replicas are within 1 of ceil(load / target) for some load of
// the last settle; and from the plateau's start, no replica is removed.
func (l *controlLoop) followLoad(r *loopRamp, began time.Time, rampFor, plateauFor, settle time.Duration) {
	t := l.t
	t.Helper()
	type point struct {
		at       time.Duration
		load     float64
		replicas int
	}
	var pts []point
	itemQ := fmt.Sprintf(`max(rate(inference_runtime_seconds_sum{namespace=%q}[20s])) / max(rate(inference_runtime_seconds_count{namespace=%q}[20s]))`, loopNS, loopNS)
	l.waitFor("the end of the ramp and the plateau", rampFor+plateauFor+time.Minute, func() (bool, string) {
		if v, ok := promQuery(t, l.promURL, itemQ); ok && v > 0 {
			r.setItemTime(v)
		}
		d := time.Since(r.began)
		pts = append(pts, point{d, r.offered(d, 10*time.Second) * r.item(), l.replicas(loopFullname)})
		return time.Since(began) >= rampFor+plateauFor, l.describe(loopFullname)
	})
	var bad, table []string
	next := time.Duration(0)
	for i, p := range pts {
		lo, hi := math.Inf(1), 0.0
		for _, q := range pts[:i+1] {
			if q.at >= p.at-settle {
				lo, hi = min(lo, q.load), max(hi, q.load)
			}
		}
		line := fmt.Sprintf("+%5.1fs load %.2f runtimes (%.2f-%.2f in the last %v): ceil(load / %v) = %d, replicas %d",
			p.at.Seconds(), p.load, lo, hi, settle, loopTarget, loopExpected(p.load), p.replicas)
		if p.at >= next {
			table, next = append(table, line), next+10*time.Second
		}
		if p.at >= settle && (p.replicas < loopExpected(lo)-1 || p.replicas > loopExpected(hi)+1) {
			bad = append(bad, line)
		}
	}
	t.Logf("the ramp (%v) and the plateau (%v), every 10 s (item time now %.3f s):\n  %s", rampFor, plateauFor, r.item(), strings.Join(table, "\n  "))
	if len(bad) > 0 {
		t.Errorf("replicas not within 1 of ceil(load / %v) for a load of the last %v (%d of %d samples after the first %v):\n  %s",
			loopTarget, settle, len(bad), len(pts), settle, strings.Join(bad, "\n  "))
	}
	// On the plateau, no dip below what the flat load needs. A replica
	// above it, added by the trend trigger still seeing the ramp's slope
	// in its window, may go once that recommendation ages out (CI: [4 5 4]
	// at a need of 4): the known shortfall of the default against issue
	// 24's "never removes a replica while arrivals are flat", counted by
	// the simulation's replica_drops_at_plateau (docs/autoscaling.md).
	need := 1
	for _, p := range pts {
		if p.at >= rampFor {
			need = max(need, loopExpected(p.load))
		}
	}
	plateau := l.history(loopFullname, began.Add(rampFor))
	for i := 1; i < len(plateau); i++ {
		if plateau[i] < plateau[i-1] {
			if plateau[i] < need {
				t.Errorf("replicas dipped below the plateau's need of %d (load flat from +%v): replicas %v", need, rampFor, plateau)
			} else {
				t.Logf("a replica above the plateau's need of %d went (the trend's overshoot at the ramp's end): replicas %v", need, plateau)
			}
			break
		}
	}
	l.logSteps(loopFullname, began)
	if t.Failed() {
		t.FailNow() // the later stages start from the plateau's replicas
	}
}

// loopCount counts the outcomes of requests.
type loopCount struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	status     map[string]int // failures by status or error
}

func (g *loopCount) fail(why string) {
	g.failed.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.status == nil {
		g.status = map[string]int{}
	}
	g.status[why]++
}

func (g *loopCount) statuses() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.status)
}

// post sends one image to /predict and counts the outcome; false on a
// transport error.
func (g *loopCount) post(ctx context.Context, base string, img []byte) bool {
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/predict", bytes.NewReader(img))
	req.Header.Set("Content-Type", "image/png")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			g.fail("error")
		}
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 {
		g.ok.Add(1)
	} else {
		g.fail(resp.Status)
	}
	return true
}

// loopLoad is closed-loop clients on the proxy, each posting the same image
// one after the other until its context ends.
type loopLoad struct {
	loopCount
	url   string
	image []byte
	wg    sync.WaitGroup
}

func (g *loopLoad) add(ctx context.Context, n int) {
	for range n {
		g.wg.Go(func() {
			for ctx.Err() == nil {
				if !g.post(ctx, g.url, g.image) && ctx.Err() == nil {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
}

// loopRamp is open-loop arrivals of unique images (each one an inference):
// load(t) runtimes in all (arrivals per second x the runtime's time per
// item), split evenly over the first release's Pods, of which the one
// proxy gets one share.
type loopRamp struct {
	loopCount
	url      string
	pods     func() int
	load     func(time.Duration) float64
	itemBits atomic.Uint64 // the runtime's time per item, seconds (float64 bits)
	began    time.Time
	wg       sync.WaitGroup
	dropped  atomic.Int64 // not sent: 256 requests in flight already
	mu       sync.Mutex
	arrivals []float64 // per second since began: arrivals at all the Pods
}

func (r *loopRamp) setItemTime(s float64) { r.itemBits.Store(math.Float64bits(s)) }
func (r *loopRamp) item() float64         { return math.Float64frombits(r.itemBits.Load()) }

// start runs the arrivals until ctx ends; r.wg waits for them.
func (r *loopRamp) start(ctx context.Context, itemTime float64) {
	r.setItemTime(itemTime)
	r.began = time.Now()
	inFlight := make(chan struct{}, 256)
	r.wg.Go(func() {
		due, last := 0.0, r.began
		for seq := 0; ctx.Err() == nil; time.Sleep(10 * time.Millisecond) {
			now := time.Now()
			k := r.pods()
			due += r.load(now.Sub(r.began)) / r.item() / float64(k) * now.Sub(last).Seconds()
			last = now
			for ; due >= 1; due-- {
				r.mu.Lock()
				sec := int(now.Sub(r.began).Seconds())
				for len(r.arrivals) <= sec {
					r.arrivals = append(r.arrivals, 0)
				}
				r.arrivals[sec] += float64(k)
				r.mu.Unlock()
				select {
				case inFlight <- struct{}{}:
					img := uniquePNG(1<<30 + seq)
					seq++
					r.wg.Go(func() { r.post(ctx, r.url, img); <-inFlight })
				default:
					r.dropped.Add(1)
				}
			}
		}
	})
}

// offered is the arrival rate at all the Pods over the window before at.
func (r *loopRamp) offered(at, window time.Duration) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := min(int(at.Seconds()), len(r.arrivals))
	from := max(0, end-int(window.Seconds()))
	if end <= from {
		return 0
	}
	n := 0.0
	for _, a := range r.arrivals[from:end] {
		n += a
	}
	return n / float64(end-from)
}

// firstChange is how long after since the Deployment's replicas first
// changed (a day if they did not).
// reached is how long after since the Deployment first had n replicas.
func (l *controlLoop) reached(name string, since time.Time, n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.watch[name] {
		if c.at.After(since) && c.replicas == n {
			return c.at.Sub(since)
		}
	}
	return 24 * time.Hour
}
