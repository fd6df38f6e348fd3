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
	loopTarget   = 4                 // keda.targetQueueDepth
	loopMin      = 1
	loopMax      = 5
	loopFallback = 2 // the chart's keda.fallback.replicas
)

// loopExpected is KEDA + HPA's formula for an AverageValue external metric:
// desired = ceil(queue depth / target), clamped to [min, max].
func loopExpected(depth float64) int {
	return min(max(int(math.Ceil(depth/loopTarget)), loopMin), loopMax)
}

func TestControlLoop(t *testing.T) {
	testStart := time.Now()
	l := &controlLoop{t: t, dir: t.TempDir(), root: testenv.Root(t)}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm",
		"keda-operator", "keda-adapter", "prometheus"} {
		l.bin(name) // fails with "run `make test`" when a tool is missing
	}
	t.Cleanup(func() { l.summary(time.Since(testStart)) })

	// 1. The API server, with the front proxy (aggregation layer) set up.
	began := time.Now()
	l.startAPIServer()
	l.timing("etcd + kube-apiserver ready", time.Since(began))

	began = time.Now()
	l.kubectl("apply", "--server-side", "-f", l.kedaCRDs())
	l.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
	for _, ns := range []string{"keda", loopNS} {
		l.kubectl("create", "namespace", ns)
	}
	// The ServiceAccount controller does not run: ServiceAccount admission
	// needs the default account for the ReplicaSet controller's pods.
	l.kubectl("create", "serviceaccount", "default", "-n", loopNS)
	l.timing("KEDA CRDs + namespaces", time.Since(began))

	// 2. KEDA: operator and metrics adapter, the adapter behind the aggregator.
	began = time.Now()
	l.startKEDA()
	l.timing("KEDA ready (APIService Available, operator /readyz)", time.Since(began))

	// 3. The controllers.
	began = time.Now()
	l.startControllers()
	l.timing("kube-controller-manager healthy", time.Since(began))

	// 4. The workload: a real proxy + runtime, and Prometheus scraping it.
	began = time.Now()
	l.startProxy()
	l.startPrometheus()
	l.timing("proxy + runtime + Prometheus ready (builds included)", time.Since(began))

	// 5. The chart.
	began = time.Now()
	l.install(loopRelease)
	pod := l.podName(loopRelease, loopFullname)
	l.setTargets(map[string]string{pod: loopFullname})
	query := l.scaledObjectQuery(loopFullname)
	t.Logf("ScaledObject %s queries %s (pod label %s)", loopFullname, query, pod)
	l.waitFor("a first queue-depth sample of "+pod, 60*time.Second, func() (bool, string) {
		v, ok := promQuery(t, l.promURL, query)
		return ok, fmt.Sprintf("query %s: %v %v", query, v, ok)
	})
	l.waitFor("the HPA reading the metric through the aggregator", 120*time.Second, func() (bool, string) {
		hpa := l.hpa(loopFullname)
		return condition(hpa, "ScalingActive") == "True" && l.hpaValue(hpa) >= 0, l.describe(loopFullname)
	})
	if r := l.replicas(loopFullname); r != loopMin {
		t.Fatalf("idle: %d replicas, want %d", r, loopMin)
	}
	l.timing("helm install -> HPA reads the metric (idle, 1 replica)", time.Since(began))

	// 6. Scale up as the load ramps: 6 then 12 concurrent clients.
	loadCtx, stopAll := context.WithTimeout(context.Background(), 6*time.Minute) // bounds every client
	load := &loopLoad{url: l.proxyURL}
	t.Cleanup(func() { stopAll(); load.wg.Wait() })
	for _, step := range []struct{ clients, want int }{{6, 2}, {12, 3}} {
		began = time.Now()
		load.add(loadCtx, step.clients-load.clients)
		l.waitReplicas(loopFullname, step.want, 150*time.Second)
		l.timing(fmt.Sprintf("scale up to %d (%d clients)", step.want, step.clients), time.Since(began))
		l.checkFormula(query, step.want)
	}
	upDone := time.Now()

	// 7. A second release, <fullname>-v2, in the same namespace: its pod's
	// series (same proxy, its own pod label) must move it, not the first.
	began = time.Now()
	failedBefore := load.failed.Load()
	l.install(loopSecond)
	pod2 := l.podName(loopSecond, loopSecond)
	l.setTargets(map[string]string{pod: loopFullname, pod2: loopSecond})
	// The first release's query minus its own pod's series: 0 unless it
	// counts the second release's pod too. Sampled all through the stage.
	counted := fmt.Sprintf(`(%s) - sum(inference_queue_depth{namespace=%q,pod=%q})`, query, loopNS, pod)
	decoy := fmt.Sprintf(`sum(inference_queue_depth{namespace=%q,pod=%q})`, loopNS, pod2)
	var countedV, decoyV []float64
	sample := func() {
		if v, ok := promQuery(t, l.promURL, counted); ok {
			countedV = append(countedV, v)
		}
		if v, ok := promQuery(t, l.promURL, decoy); ok {
			decoyV = append(decoyV, v)
		}
	}
	l.waitFor(loopSecond+" at 3 replicas", 150*time.Second, func() (bool, string) { // the decoy series is live: v2 scales on it
		sample()
		return l.replicas(loopSecond) == 3, l.describe(loopSecond)
	})
	hold := time.Now()
	for time.Since(hold) < 15*time.Second { // three more HPA syncs of the first release
		sample()
		time.Sleep(time.Second)
	}
	h, failed := l.history(loopFullname, upDone), load.failed.Load()-failedBefore
	t.Logf("%s: 1 -> 3 on its own series in %.1fs; %s went %v from reaching 3 to %.1fs after that; "+
		"its query minus its own pod's series: %d samples in [%v, %v]; the second release's pod series in [%v, %v]",
		loopSecond, hold.Sub(began).Seconds(), loopFullname, h, time.Since(hold).Seconds(),
		len(countedV), minOf(countedV), maxOf(countedV), minOf(decoyV), maxOf(decoyV))
	switch {
	case len(decoyV) == 0 || slices.Max(decoyV) == 0:
		t.Errorf("the second release's pod series never had a value: nothing was checked")
	case slices.ContainsFunc(countedV, func(v float64) bool { return math.Abs(v) > 0.5 }):
		t.Errorf("%s's query %s counts the second release's pod %s: up to %v above its own pod's series",
			loopFullname, query, pod2, maxOf(countedV))
	}
	if slices.Max(h) > 3 {
		t.Errorf("%s moved up while %s scaled on its own pod's series: replicas %v since it reached 3 (want [3])", loopFullname, loopSecond, h)
	} else if !slices.Equal(h, []int{3}) && failed == 0 {
		t.Errorf("%s moved while %s scaled: replicas %v since it reached 3 (want [3]), no request failed", loopFullname, loopSecond, h)
	} else if !slices.Equal(h, []int{3}) {
		t.Logf("%s dipped to %v while %d requests failed (the runtime starved of CPU: see the proxy's log)", loopFullname, h, failed)
	}
	l.timing("second release scales, first stays (incl. 15 s hold)", time.Since(began))
	l.helm("uninstall", loopSecond, "-n", loopNS, "--wait", "--timeout=60s")
	// Its HPA belongs to its ScaledObject through an ownerReference: the
	// garbage collector, which does not run here, would delete it.
	l.kubectl("delete", "hpa", "keda-hpa-"+loopSecond, "-n", loopNS, "--ignore-not-found")
	l.setTargets(map[string]string{pod: loopFullname})
	l.waitReplicas(loopFullname, 3, 120*time.Second) // waits only where it moved

	// 8. Prometheus gone under load: fallback with currentReplicasIfHigher
	// keeps the 3 busy replicas (static fallback would go down to 2).
	began = time.Now()
	l.prom.stop()
	l.waitFallback(loopFullname, "True", 90*time.Second)
	fallbackAt := time.Now()
	l.timing("Prometheus stopped -> Fallback condition True (at 3 replicas)", fallbackAt.Sub(began))
	time.Sleep(25 * time.Second) // > scale-down window (10 s) + policy period (10 s) + an HPA sync
	if h := l.history(loopFullname, fallbackAt); !slices.Equal(h, []int{3}) {
		t.Errorf("with Prometheus down at 3 replicas: replicas %v, want [3] (fallback max(current 3, %d))", h, loopFallback)
	}
	if total := l.hpaTotal(loopFullname); math.Abs(total-3*loopTarget) > 0.01 {
		t.Errorf("HPA metric in fallback at 3 replicas: %v in total, want %d (max(3, %d) x target %d)", total, 3*loopTarget, loopFallback, loopTarget)
	}
	began = time.Now()
	l.startPrometheus()
	l.waitFallback(loopFullname, "False", 90*time.Second)
	l.timing("Prometheus back -> Fallback condition False", time.Since(began))

	// 9. The load stops: back down one pod per period to the minimum.
	l.waitReplicas(loopFullname, 3, 120*time.Second) // waits only where the load dipped
	began = time.Now()
	stopAll()
	load.wg.Wait()
	t.Logf("load: %d requests answered, %d failed %v", load.ok.Load(), load.failed.Load(), load.statuses())
	l.waitReplicas(loopFullname, loopMin, 150*time.Second)
	if h := l.history(loopFullname, began); !slices.Equal(h, []int{3, 2, 1}) {
		t.Errorf("scale-down went %v, want [3 2 1] (one pod per period)", h)
	}
	l.timing("load stopped -> scale down 3 -> 2 -> 1", time.Since(began))
	l.logSteps(loopFullname, began)

	// 10. Prometheus gone while idle: the fallback replicas apply.
	began = time.Now()
	l.prom.stop()
	l.waitFallback(loopFullname, "True", 90*time.Second)
	l.waitReplicas(loopFullname, loopFallback, 90*time.Second)
	if total := l.hpaTotal(loopFullname); math.Abs(total-loopFallback*loopTarget) > 0.01 {
		t.Errorf("HPA metric in fallback: %v in total, want %d (fallback %d x target %d)",
			total, loopFallback*loopTarget, loopFallback, loopTarget)
	}
	l.timing(fmt.Sprintf("Prometheus stopped at 1 -> fallback %d replicas", loopFallback), time.Since(began))
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
	metricsPort int // the proxy's METRICS_PORT: Prometheus scrapes it, as the chart's monitors do
	timings     []string

	mu    sync.Mutex
	watch map[string][]loopChange // spec.replicas of each Deployment, as it changed
}

type loopChange struct {
	at       time.Time
	replicas int
}

func (l *controlLoop) bin(name string) string { return tool(l.t, name) }

func (l *controlLoop) timing(stage string, d time.Duration) {
	l.t.Helper()
	line := fmt.Sprintf("%-62s %6.1f s", stage, d.Seconds())
	l.timings = append(l.timings, line)
	l.t.Logf("TIMING %s", line)
}

func (l *controlLoop) summary(total time.Duration) {
	l.t.Logf("stage timings:\n  %s\n  %-62s %6.1f s", strings.Join(l.timings, "\n  "), "total", total.Seconds())
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
// from (helm/kedatools pins it).
func (l *controlLoop) kedaCRDs() string {
	l.t.Helper()
	out, err := exec.Command("go", "-C", filepath.Join(l.root, "helm", "kedatools"), "list", "-m", "-f", "{{.Dir}}",
		"github.com/kedacore/keda/v2").CombinedOutput()
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "bases")
	if err != nil || !fileExists(dir) {
		l.t.Fatalf("KEDA's module (helm/kedatools) is not downloaded: run `make test`, which builds KEDA from it: %v\n%s", err, out)
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

	adapterPort, grpcPort, probePort, adapterMetrics := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
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
	// Through the aggregator, end to end: discovery of the external metrics API.
	if _, err := l.raw("/apis/external.metrics.k8s.io/v1beta1"); err != nil {
		t.Fatalf("external metrics API through the aggregator: %v", err)
	}
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

func (l *controlLoop) scaledObjectQuery(name string) string {
	q, _ := get(l.scaledObject(name), "spec", "triggers", 0, "metadata", "query").(string)
	if q == "" {
		l.t.Fatalf("ScaledObject %s has no query", name)
	}
	return q
}

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
		"METRICS_PORT=" + strconv.Itoa(l.metricsPort), "RUNTIME_SOCKET=" + socket,
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

// setTargets has Prometheus scrape the one proxy once per pod name, with the
// labels Kubernetes pod discovery would give it.
func (l *controlLoop) setTargets(pods map[string]string) {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var groups []group
	for pod, release := range pods {
		groups = append(groups, group{[]string{fmt.Sprintf("127.0.0.1:%d", l.metricsPort)},
			map[string]string{"namespace": loopNS, "pod": pod, "release": release}})
	}
	b, _ := json.Marshal(groups)
	dir := filepath.Join(l.dir, "prometheus")
	os.WriteFile(filepath.Join(dir, "targets.json.tmp"), b, 0o644)
	os.Rename(filepath.Join(dir, "targets.json.tmp"), filepath.Join(dir, "targets.json"))
	l.waitFor(fmt.Sprintf("Prometheus scraping %d pod(s)", len(pods)), 30*time.Second, func() (bool, string) {
		n := 0
		for pod := range pods {
			if v, ok := promQuery(l.t, l.promURL, fmt.Sprintf(`count(up{pod=%q} == 1)`, pod)); ok && v == 1 {
				n++
			}
		}
		return n == len(pods), fmt.Sprintf("%d of %d up", n, len(pods))
	})
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

// install installs the chart with the test's Prometheus, a target of 4, a
// 5 s polling interval and a 10 s scale-down window and period (the chart's
// defaults are 300 s and 60 s); everything else is the chart's default.
func (l *controlLoop) install(release string) {
	l.t.Helper()
	l.helm("install", release, chartDir(l.t), "-n", loopNS,
		"--set", "keda.prometheusAddress="+l.promURL,
		"--set", fmt.Sprintf("keda.targetQueueDepth=%d", loopTarget),
		"--set", fmt.Sprintf("keda.minReplicas=%d,keda.maxReplicas=%d", loopMin, loopMax),
		"--set", "keda.pollingInterval=5",
		// One pod per period (the default goes straight to the
		// recommendation): the scale-down policy is rendered and honoured.
		"--set", "keda.scaleDown.stabilizationWindowSeconds=10,keda.scaleDown.periodSeconds=10,keda.scaleDown.pods=1,keda.scaleDown.percent=0")
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

// checkFormula compares the replicas the loop chose with the formula applied
// to the queue depth Prometheus reports (median of 5 one-second samples).
func (l *controlLoop) checkFormula(query string, want int) {
	l.t.Helper()
	var samples []float64
	for range 5 {
		if v, ok := promQuery(l.t, l.promURL, query); ok {
			samples = append(samples, v)
		}
		time.Sleep(time.Second)
	}
	if len(samples) == 0 {
		l.t.Fatalf("no samples of %s", query)
	}
	slices.Sort(samples)
	depth := samples[len(samples)/2]
	got := l.replicas(loopFullname)
	l.t.Logf("queue depth %v (samples %v), the HPA's last read through the aggregator %v: ceil(%v / %d) = %d, Deployment at %d",
		depth, samples, l.hpaTotal(loopFullname), depth, loopTarget, loopExpected(depth), got)
	if loopExpected(depth) != want || got != want {
		l.t.Errorf("queue depth %v gives %d replicas by the formula, the Deployment has %d, want %d", depth, loopExpected(depth), got, want)
	}
}

// loopLoad is closed-loop clients on the proxy, each posting unique images
// one after the other until its context ends.
type loopLoad struct {
	url        string
	clients    int
	wg         sync.WaitGroup
	ok, failed atomic.Int64
	mu         sync.Mutex
	status     map[string]int // failures by status or error
}

func (g *loopLoad) fail(why string) {
	g.failed.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.status == nil {
		g.status = map[string]int{}
	}
	g.status[why]++
}

func (g *loopLoad) statuses() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.status)
}

func (g *loopLoad) add(ctx context.Context, n int) {
	for range n {
		c := g.clients
		g.clients++
		g.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "POST", g.url+"/predict", bytes.NewReader(uniquePNG(c*1000000+i)))
				req.Header.Set("Content-Type", "image/png")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						g.fail("error")
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					g.ok.Add(1)
				} else {
					g.fail(resp.Status)
				}
			}
		})
	}
}
