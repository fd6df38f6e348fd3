package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Binaries are the built runtime and proxy.
type Binaries struct{ Runtime, Proxy string }

// DefaultModel is the model `runtime fetch-model` gives (fetched into
// root's .deps/models if need be): its path.
func (b Binaries) DefaultModel(root string) (string, error) {
	return b.FetchModel(context.Background(), root, "", false)
}

// FetchModel runs `runtime fetch-model` into root's .deps/models and
// returns the model's path: variant ("" for the default, "int8"), the
// small generated test model when tiny.
func (b Binaries) FetchModel(ctx context.Context, root, variant string, tiny bool) (string, error) {
	args := []string{"fetch-model", "-dir", filepath.Join(root, ".deps/models")}
	if variant != "" {
		args = append(args, "-variant", variant)
	}
	if tiny {
		args = append(args, "-tiny")
	}
	cmd := exec.CommandContext(ctx, b.Runtime, args...)
	cmd.Env = append(os.Environ(), "ORT_LIBRARY="+ORTLibrary(root))
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("cannot get the model (runtime %s): %w\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("cannot get the model: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Built is what a study of one stack setting starts from: the checkout,
// its binaries and the model they serve.
type Built struct {
	Root  string
	Bins  Binaries
	Model string
	dir   string
}

// Build compiles the runtime and the proxy of the checkout that holds the
// working directory into a temporary folder, and finds model ("": what
// `runtime fetch-model` gives). Close removes the folder.
func Build(model string) (*Built, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "batchgate-perf-bin-")
	if err != nil {
		return nil, err
	}
	b := &Built{Root: root, Model: model, dir: dir}
	if b.Bins, err = BuildBinaries(root, dir); err == nil && model == "" {
		b.Model, err = b.Bins.DefaultModel(root)
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Close removes the binaries.
func (b *Built) Close() { os.RemoveAll(b.dir) }

// Stack is cfg's stack of these binaries, on their model, with the
// checkout's ONNX Runtime and optimized-graph cache.
func (b *Built) Stack(cfg StackConfig) (*Stack, error) {
	cfg.Model, cfg.ORTLibrary, cfg.ORTCache = b.Model, ORTLibrary(b.Root), filepath.Join(b.Root, ".deps/ort-cache")
	return StartStack(b.Bins, cfg)
}

// BuildBinaries compiles runtime and proxy into dir.
func BuildBinaries(root, dir string) (Binaries, error) {
	b := Binaries{Runtime: filepath.Join(dir, "runtime"), Proxy: filepath.Join(dir, "proxy")}
	for pkg, out := range map[string]string{"./runtime": b.Runtime, "./proxy": b.Proxy} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("cannot build %s: %v\n%s", pkg, err, o)
		}
	}
	return b, nil
}

// StackConfig is one setting of the system under test.
type StackConfig struct {
	Model, ORTLibrary, ORTCache string
	MaxBatch                    int // MAX_BATCH_SIZE of both; 0: their default
	// Window and CacheEntries are the proxy's BATCH_WINDOW and
	// CACHE_ENTRIES, set with DRAIN_DELAY=0s and QUEUE_CAPACITY=256 (the
	// sweep's grid) unless ProxyDefaults.
	Window       time.Duration
	CacheEntries int
	// ProxyDefaults leaves the proxy's batching, cache, queue and drain at
	// the defaults users get (perf -chaos, perf -adversarial): only its
	// ports, socket and Env are set.
	ProxyDefaults bool
	// Env is more environment for both processes (perf -tracing:
	// OTEL_*); it wins over the stack's own settings (perf -protocols:
	// GRPC_PORT). RuntimeEnv and ProxyEnv are more for one process alone,
	// after Env.
	Env, RuntimeEnv, ProxyEnv []string
	// ProxyCgroup is a cgroup folder the proxy joins before it execs, so
	// the cgroup's memory limit holds from its first allocation and
	// automemlimit reads it (perf -adversarial). "": none.
	ProxyCgroup string
	// RuntimeLog and ProxyLog take each process's output; nil: stderr.
	RuntimeLog, ProxyLog io.Writer
}

// Stack is a runtime + proxy pair on one socket and one pair of ports.
// Either process may be stopped and started again (perf -chaos) through
// StartRuntime and StartProxy; mu guards which process is current.
type Stack struct {
	URL     string // base URL of the proxy's API (PORT)
	Metrics string // base URL of its /metrics (METRICS_PORT)
	Socket  string // the runtime's unix socket
	bins    Binaries
	cfg     StackConfig
	dir     string // temporary: the socket
	port    int
	mport   int

	mu     sync.Mutex
	rt, px *Proc
}

// freePorts returns n distinct free ports: each listener stays open until
// all are chosen, so the kernel cannot hand the same port out twice. They
// are chosen below the kernel's ephemeral range (ip_local_port_range),
// where no outgoing connection takes them as its source port between the
// choice and the proxy's listen: with many connections in flight (the
// load clients, tests beside perf's), a port from the ephemeral range was
// taken in that gap often enough to fail a study. Where that range cannot
// be read, or no port below it is free after a few tries, the kernel
// picks.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		ln, err := listenBelowEphemeral()
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// listenBelowEphemeral listens on a loopback port between 10000 and the
// start of the ephemeral range, else on one the kernel picks.
func listenBelowEphemeral() (net.Listener, error) {
	low := 32768 // Linux's default start of the range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	for range 20 {
		if low <= 10001 {
			break
		}
		port := 10000 + rand.IntN(low-10000)
		if ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			return ln, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// FreePort returns a free loopback port.
func FreePort() (int, error) {
	p, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// ProxyPorts returns a free API port (PORT) and a free metrics port
// (METRICS_PORT) for a proxy: every proxy needs both, and the metrics
// port's default, 9464, may be taken by another proxy or a developer's.
func ProxyPorts() (api, metrics int, err error) {
	p, err := freePorts(2)
	if err != nil {
		return 0, 0, err
	}
	return p[0], p[1], nil
}

// ProxyPortEnv is the environment that puts a proxy on those ports, with
// its gRPC listener off (GRPC_PORT=0): its fixed default port would
// collide between the proxies a study starts side by side.
func ProxyPortEnv(api, metrics int) []string {
	return []string{"PORT=" + strconv.Itoa(api), "METRICS_PORT=" + strconv.Itoa(metrics), "GRPC_PORT=0"}
}

// StartStack starts the runtime and the proxy and waits until /readyz says
// ready (at most 3 minutes: warm-up of big batch sizes takes a while). A
// proxy that exits at start, as when another process took one of its free
// ports meanwhile, is tried again on other ports, three times in all.
func StartStack(bins Binaries, cfg StackConfig) (*Stack, error) {
	var err error
	for range 3 {
		var s *Stack
		if s, err = NewStack(bins, cfg); err != nil {
			return nil, err
		}
		if err = s.Start(context.Background(), 3*time.Minute); err == nil {
			return s, nil
		}
		s.Stop()
		if !errors.Is(err, errProxyExited) {
			return nil, err
		}
	}
	return nil, err
}

// errProxyExited is the proxy of a stack exiting before it was ready.
var errProxyExited = errors.New("the proxy exited at start (its log is above)")

// NewStack chooses the stack's socket and ports and starts nothing: a
// study that writes files naming the socket (a routing file) does so
// before Start.
func NewStack(bins Binaries, cfg StackConfig) (*Stack, error) {
	dir, err := os.MkdirTemp("", "batchgate-perf-")
	if err != nil {
		return nil, err
	}
	port, mport, err := ProxyPorts()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Stack{URL: fmt.Sprintf("http://127.0.0.1:%d", port), Metrics: fmt.Sprintf("http://127.0.0.1:%d", mport),
		Socket: filepath.Join(dir, "rt.sock"), bins: bins, cfg: cfg, dir: dir, port: port, mport: mport}, nil
}

// Start starts the runtime on the configured model and the proxy, and
// waits at most within for /readyz.
func (s *Stack) Start(ctx context.Context, within time.Duration) error {
	if err := s.StartRuntime(s.cfg.Model); err != nil {
		return err
	}
	if err := s.StartProxy(); err != nil {
		return err
	}
	return s.WaitReady(ctx, within)
}

// Runtime is the current runtime process (nil before the first start).
func (s *Stack) Runtime() *Proc { s.mu.Lock(); defer s.mu.Unlock(); return s.rt }

// Proxy is the current proxy process (nil before the first start).
func (s *Stack) Proxy() *Proc { s.mu.Lock(); defer s.mu.Unlock(); return s.px }

// logTo is w, or stderr.
func logTo(w io.Writer) io.Writer {
	if w == nil {
		return os.Stderr
	}
	return w
}

// StartRuntime starts a runtime serving model on the stack's socket; it
// becomes the current one.
func (s *Stack) StartRuntime(model string) error {
	env := []string{"RUNTIME_SOCKET=" + s.Socket, "MODEL_PATH=" + model, "ORT_LIBRARY=" + s.cfg.ORTLibrary,
		"ORT_CACHE_DIR=" + s.cfg.ORTCache, "LOG_LEVEL=warn"}
	if s.cfg.MaxBatch > 0 {
		env = append(env, "MAX_BATCH_SIZE="+strconv.Itoa(s.cfg.MaxBatch))
	}
	p, err := StartProc(s.bins.Runtime, []string{"serve"}, append(append(env, s.cfg.Env...), s.cfg.RuntimeEnv...), logTo(s.cfg.RuntimeLog))
	if err != nil {
		return fmt.Errorf("cannot start the runtime: %w", err)
	}
	s.mu.Lock()
	s.rt = p
	s.mu.Unlock()
	return nil
}

// StartProxy starts a proxy on the stack's ports and socket; it becomes the
// current one.
func (s *Stack) StartProxy() error {
	env := append(ProxyPortEnv(s.port, s.mport), "RUNTIME_SOCKET="+s.Socket, "LOG_LEVEL=warn")
	if s.cfg.MaxBatch > 0 {
		env = append(env, "MAX_BATCH_SIZE="+strconv.Itoa(s.cfg.MaxBatch))
	}
	if !s.cfg.ProxyDefaults {
		env = append(env, "BATCH_WINDOW="+s.cfg.Window.String(), "CACHE_ENTRIES="+strconv.Itoa(s.cfg.CacheEntries),
			"DRAIN_DELAY=0s", "QUEUE_CAPACITY=256")
	}
	path, args := s.bins.Proxy, []string(nil)
	if s.cfg.ProxyCgroup != "" {
		path, args = "/bin/sh", []string{"-c", `echo $$ > "$1" && exec "$2"`, "sh", filepath.Join(s.cfg.ProxyCgroup, "cgroup.procs"), s.bins.Proxy}
	}
	p, err := StartProc(path, args, append(append(env, s.cfg.Env...), s.cfg.ProxyEnv...), logTo(s.cfg.ProxyLog)) // the last of a name wins
	if err != nil {
		return fmt.Errorf("cannot start the proxy: %w", err)
	}
	s.mu.Lock()
	s.px = p
	s.mu.Unlock()
	return nil
}

// WaitReady waits at most within for the proxy's /readyz to answer 200;
// it fails at once when the current runtime or proxy exits meanwhile.
func (s *Stack) WaitReady(ctx context.Context, within time.Duration) error {
	what := "stack"
	if !s.cfg.ProxyDefaults {
		what = fmt.Sprintf("stack (batch %d, window %v)", s.cfg.MaxBatch, s.cfg.Window)
	}
	return WaitReady(ctx, s.URL, what, within, func() error {
		if rt := s.Runtime(); rt != nil && rt.Exited() {
			return fmt.Errorf("%s: the runtime exited (%s) before it was ready (its log is above)", what, rt.ExitText())
		}
		if px := s.Proxy(); px != nil && px.Exited() {
			return fmt.Errorf("%s: %w (%s)", what, errProxyExited, px.ExitText())
		}
		return nil
	})
}

// WaitReady polls the /readyz of the proxy at url until it answers 200,
// for at most within. Between polls it calls gone, when not nil: an error
// from it (the process has exited) ends the wait with that error.
func WaitReady(ctx context.Context, url, what string, within time.Duration, gone func() error) error {
	c := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(within); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
		if resp, err := c.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if gone != nil {
			if err := gone(); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%s not ready after %v", what, within)
}

// Stop ends the proxy, then the runtime (SIGTERM, SIGKILL after 30 s), and
// removes the socket's folder.
func (s *Stack) Stop() {
	s.Proxy().Stop(30 * time.Second)
	s.Runtime().Stop(30 * time.Second)
	os.RemoveAll(s.dir)
}

// CPUSeconds returns the user+system CPU time of pid so far.
func CPUSeconds(pid int) float64 {
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

// Scrape returns every sample on base's /metrics, keyed by name{labels}.
// base is the proxy's metrics port (METRICS_PORT): on its API port
// /metrics is a 404, which is an error here, not an empty set.
func Scrape(base string) (map[string]float64, error) {
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

// Delta returns after - before for every key of after.
func Delta(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// RSSMiB reads a process's resident memory.
func RSSMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return -1
}
