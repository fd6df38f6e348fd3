package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// binaries are the built runtime and proxy.
type binaries struct{ runtime, proxy string }

// buildBinaries compiles runtime and proxy into dir.
func buildBinaries(root, dir string) (binaries, error) {
	b := binaries{runtime: filepath.Join(dir, "runtime"), proxy: filepath.Join(dir, "proxy")}
	for pkg, out := range map[string]string{"./runtime": b.runtime, "./proxy": b.proxy} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("cannot build %s: %v\n%s", pkg, err, o)
		}
	}
	return b, nil
}

// stackConfig is one setting of the system under test.
type stackConfig struct {
	model, ortLibrary, ortCache string
	maxBatch                    int
	window                      time.Duration
	cacheEntries                int
	env                         []string // more environment for both processes (perf -tracing: OTEL_*)
}

// stack is a running runtime + proxy pair.
type stack struct {
	rt, px  *exec.Cmd
	url     string // base URL of the proxy's API (PORT)
	metrics string // base URL of its /metrics (METRICS_PORT)
	dir     string
}

// freePorts returns n distinct free ports: each listener stays open until
// all are chosen, so the kernel cannot hand the same port out twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// proxyPorts returns a free API port (PORT) and a free metrics port
// (METRICS_PORT) for a proxy: every proxy needs both, and the metrics
// port's default, 9464, may be taken by another proxy or a developer's.
func proxyPorts() (api, metrics int, err error) {
	p, err := freePorts(2)
	if err != nil {
		return 0, 0, err
	}
	return p[0], p[1], nil
}

// proxyPortEnv is the environment that puts a proxy on those ports.
func proxyPortEnv(api, metrics int) []string {
	return []string{"PORT=" + strconv.Itoa(api), "METRICS_PORT=" + strconv.Itoa(metrics)}
}

// startStack starts the runtime and the proxy and waits until /readyz says
// ready (at most 3 minutes: warm-up of big batch sizes takes a while).
func startStack(bins binaries, cfg stackConfig) (*stack, error) {
	dir, err := os.MkdirTemp("", "batchgate-perf-")
	if err != nil {
		return nil, err
	}
	port, mport, err := proxyPorts()
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "rt.sock")
	common := append([]string{"RUNTIME_SOCKET=" + socket, "MAX_BATCH_SIZE=" + strconv.Itoa(cfg.maxBatch), "LOG_LEVEL=warn"}, cfg.env...)
	s := &stack{dir: dir, url: fmt.Sprintf("http://127.0.0.1:%d", port), metrics: fmt.Sprintf("http://127.0.0.1:%d", mport)}
	s.rt = exec.Command(bins.runtime, "serve")
	s.rt.Env = append(os.Environ(), append(common, "MODEL_PATH="+cfg.model, "ORT_LIBRARY="+cfg.ortLibrary, "ORT_CACHE_DIR="+cfg.ortCache)...)
	s.px = exec.Command(bins.proxy)
	s.px.Env = append(os.Environ(), append(append(common, proxyPortEnv(port, mport)...), "BATCH_WINDOW="+cfg.window.String(),
		"CACHE_ENTRIES="+strconv.Itoa(cfg.cacheEntries), "DRAIN_DELAY=0s", "QUEUE_CAPACITY=256")...)
	for _, c := range []*exec.Cmd{s.rt, s.px} {
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Start(); err != nil {
			s.stop()
			return nil, err
		}
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(s.url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("stack (batch %d, window %v) not ready after 3 minutes", cfg.maxBatch, cfg.window)
}

// stop sends SIGTERM to both processes and waits for them.
func (s *stack) stop() {
	terminate(s.px, s.rt)
	os.RemoveAll(s.dir)
}

// terminate sends SIGTERM to each started process in turn and waits for it
// to exit, killing it after 30 s.
func terminate(cmds ...*exec.Cmd) {
	for _, c := range cmds {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				c.Process.Kill()
				<-done
			}
		}
	}
}

// cpuSeconds returns the user+system CPU time of pid so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// scrape returns every sample on base's /metrics, keyed by name{labels}.
// base is the proxy's metrics port (METRICS_PORT): on its API port
// /metrics is a 404, which is an error here, not an empty set.
func scrape(base string) (map[string]float64, error) {
	out := map[string]float64{}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: GET %s/metrics: %s", base, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape: %s/metrics: %w", base, err)
	}
	return out, nil
}

// delta returns after - before for every key of after.
func delta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}
