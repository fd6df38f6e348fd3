package helm_test

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/kubenode"
	"github.com/batchgate/batchgate/internal/testenv"
)

// rnCostReport is what one saturation run of the default pod cost.
type rnCostReport struct {
	images          int
	seconds         float64
	proxyCPU        float64 // core-seconds, the container's own accounting
	runtimeCPU      float64
	reservedCores   float64 // the pod's CPU requests
	throttled       int64   // the proxy's CFS periods throttled
	throttledPeriod int64   // of periods
	throttledTime   time.Duration
}

func (r rnCostReport) String() string {
	k := 1000 / float64(r.images)
	return fmt.Sprintf("%d images in %.0f s (%.1f/s); used per 1000 images: proxy %.1f, runtime %.1f core-s; reserved %.1f core-s per 1000 images (%.2f cores); proxy CFS throttling: %d of %d periods, %v",
		r.images, r.seconds, float64(r.images)/r.seconds, r.proxyCPU*k, r.runtimeCPU*k,
		r.reservedCores*r.seconds*k, r.reservedCores, r.throttled, r.throttledPeriod, r.throttledTime.Round(time.Millisecond))
}

// rnCost saturates the pod with 4 closed-loop clients through the Service
// for `d`, each image distinct (a photo with distinct trailing bytes: no
// cache hit), and reads what it cost: each container's CPU from the
// kubelet's /metrics/resource, the proxy's CFS throttling from its cgroup's
// cpu.stat, and the pod's CPU requests. every12MP > 0 makes every n-th
// image a 12 MP JPEG.
func rnCost(t *testing.T, n *kubenode.Node, pod rnPod, url string, d time.Duration, every12MP int) rnCostReport {
	t.Helper()
	photo := testenv.Image(t, "grace_hopper.jpg")
	var big []byte
	if every12MP > 0 {
		big = rn12MP(t)
	}
	proxy := rnFindStatus(pod.Status.ContainerStatuses, "proxy")
	pid, err := n.ContainerPID(proxy.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	var rep rnCostReport
	for _, c := range append(append([]rnContainer(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		rep.reservedCores += rnCores(c.Resources.Requests["cpu"])
	}
	cpu0 := rnContainerCPU(t, n, pod.Metadata.Name)
	thr0 := rnThrottling(t, pid)
	t0 := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var results []rnResult
	for c := range 4 {
		wg.Add(1)
		go func() { // exits after d
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; time.Since(t0) < d; i++ {
				img := photo
				if every12MP > 0 && i%every12MP == every12MP-1 {
					img = big
				}
				// Distinct trailing bytes after the JPEG's end: the same
				// decode, a different cache key.
				body := append(append([]byte(nil), img...), fmt.Sprintf("batchgate-cost-%d-%d-%d", c, i, t0.UnixNano())...)
				r := rnPost(client, url, body)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rep.seconds = time.Since(t0).Seconds()
	cpu1 := rnContainerCPU(t, n, pod.Metadata.Name)
	thr1 := rnThrottling(t, pid)
	rep.proxyCPU = cpu1["proxy"] - cpu0["proxy"]
	rep.runtimeCPU = cpu1["runtime"] - cpu0["runtime"]
	rep.throttled, rep.throttledPeriod = thr1.throttled-thr0.throttled, thr1.periods-thr0.periods
	rep.throttledTime = thr1.time - thr0.time
	_, problems := rnLoadCheck(results, 0)
	for _, p := range problems {
		t.Error(p)
	}
	for _, r := range results {
		if r.Status == 200 {
			rep.images++
		}
	}
	if rep.images == 0 || rep.runtimeCPU <= 0 {
		t.Fatalf("no images served or no runtime CPU counted: %s", rnTally(results))
	}
	return rep
}

// rn12MP is a 4000x3000 JPEG (a smooth gradient with noise, quality 90).
func rn12MP(t *testing.T) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 4000, 3000))
	for y := range 3000 {
		for x := range 4000 {
			img.SetRGBA(x, y, color.RGBA{uint8(x / 16), uint8(y / 12), uint8((x*7 + y*13) % 251), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rnContainerCPU is each container's cumulative CPU (core-seconds) of a
// pod, from the kubelet's /metrics/resource.
func rnContainerCPU(t *testing.T, n *kubenode.Node, pod string) map[string]float64 {
	t.Helper()
	out, err := n.Kubectl("get", "--raw", "/api/v1/nodes/"+n.Name+"/proxy/metrics/resource")
	if err != nil {
		t.Fatalf("kubelet /metrics/resource: %v\n%s", err, out)
	}
	cpu := map[string]float64{}
	for _, s := range testenv.MustParseMetrics(t, out).Samples() {
		if s.Name == "container_cpu_usage_seconds_total" && s.Labels["pod"] == pod {
			cpu[s.Labels["container"]] = s.Value
		}
	}
	if len(cpu) < 2 {
		t.Fatalf("no CPU of pod %s's containers in the kubelet's /metrics/resource: %v", pod, cpu)
	}
	return cpu
}

type rnCFS struct {
	periods, throttled int64
	time               time.Duration
}

// rnThrottling reads the CFS statistics of the cgroup of a process (cgroup
// v1's cpu controller, or v2's unified hierarchy).
func rnThrottling(t *testing.T, pid int) rnCFS {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var stat string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				stat = filepath.Join("/sys/fs/cgroup/cpu", f[2], "cpu.stat")
			}
		}
		if f[0] == "0" && f[1] == "" && stat == "" {
			stat = filepath.Join("/sys/fs/cgroup", f[2], "cpu.stat")
		}
	}
	sb, err := os.ReadFile(stat)
	if err != nil {
		t.Fatalf("the proxy's cpu.stat (%q): %v", stat, err)
	}
	var r rnCFS
	for _, line := range strings.Split(string(sb), "\n") {
		k, v, _ := strings.Cut(line, " ")
		x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "nr_periods":
			r.periods = x
		case "nr_throttled":
			r.throttled = x
		case "throttled_time": // v1, ns
			r.time = time.Duration(x)
		case "throttled_usec": // v2
			r.time = time.Duration(x) * time.Microsecond
		}
	}
	return r
}

// rnCores parses a CPU quantity ("1", "250m").
func rnCores(q string) float64 {
	if m, ok := strings.CutSuffix(q, "m"); ok {
		v, _ := strconv.ParseFloat(m, 64)
		return v / 1000
	}
	v, _ := strconv.ParseFloat(q, 64)
	return v
}

// rnResizeProxyCPU changes the proxy's CPU limit in place (the pod's
// resize subresource: no restart) and waits until the kubelet has applied
// it (the container's status shows the new limit).
func rnResizeProxyCPU(t *testing.T, n *kubenode.Node, ns, pod, limit string) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"containers":[{"name":"proxy","resources":{"limits":{"cpu":%q}}}]}}`, limit)
	n.KubectlT(t, "patch", "pod", "-n", ns, pod, "--subresource", "resize", "--patch", patch)
	want := rnCores(limit)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, err := n.Kubectl("get", "pod", "-n", ns, pod, "-o", `jsonpath={.status.containerStatuses[?(@.name=="proxy")].resources.limits.cpu}`)
		if err == nil && rnCores(strings.TrimSpace(string(out))) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy's CPU limit is %q, not %s, 60 s after the resize", out, limit)
		}
	}
}
