// Package adversarial is the adversarial memory soak (`go run ./perf
// -adversarial`): the real proxy and runtime with the proxy's default
// settings, inside a 512 MiB memory cgroup like the chart's limit, under
// the clients an attacker would send (attacks.go, keyed.go). For each
// scenario it records the proxy's peak RSS, what every
// connection got, and how long RSS takes to fall back below 150 MiB.
package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// soakConfig sizes the scenarios; fullSoak is the issue's, the test runs a
// smaller one.
type soakConfig struct {
	heldUploads   int           // concurrent uploads held open, last byte withheld
	uploadBytes   int           // each
	hold          time.Duration // how long they are held
	bombs         int           // concurrent 40 MP PNGs (half gray, half RGBA)
	floodConns    int           // connections sending distinct uploads
	flood         time.Duration // for this long
	idleConns     int           // idle keep-alive connections
	idle          time.Duration // held for this long
	recoverWithin time.Duration // wait at most this for RSS to fall below recoverMiB
	attack        time.Duration // each of issue 22's attacks runs this long (attacks.go)
	scale         float64       // of the attacks' connection counts
	honest        int           // honest clients' connections, beside every scenario
	// honestShare, when above 0, paces the honest client beside every
	// scenario at this share of what it got alone as fast as it could (an
	// open loop: honestPaced); 0: it sends as fast as answered.
	honestShare float64
}

var fullSoak = soakConfig{
	heldUploads: 200, uploadBytes: 9 << 20, hold: 10 * time.Second,
	bombs: 16, floodConns: 500, flood: 60 * time.Second,
	idleConns: 5000, idle: 10 * time.Second, recoverWithin: 60 * time.Second,
	attack: 20 * time.Second, scale: 1, honest: 2, honestShare: 0.25,
}

const (
	limitMiB   = 512 // the chart's proxy memory limit
	goalMiB    = 400 // issue 22's goal under every attack
	recoverMiB = 150
)

// scenarioResult is one scenario's outcome.
type scenarioResult struct {
	Name        string         `json:"name"`
	PeakRSSMiB  float64        `json:"peak_rss_mib"`
	Outcomes    map[string]int `json:"outcomes"` // "200", "429", ..., "closed", "error: ..."
	Connections int            `json:"connections"`
	RecoverSec  float64        `json:"recover_s"` // -1: not within the limit
	AfterRSSMiB float64        `json:"after_rss_mib"`
	Took        time.Duration  `json:"took"`
	Honest      honestResult   `json:"honest"` // the honest clients meanwhile
	// HonestRatio is Honest's goodput over the quiet period's.
	HonestRatio float64 `json:"honest_ratio"`
}

// soakStack is the proxy and runtime under test.
type soakStack struct {
	*harness.Stack
	addr    string // host:port of the proxy
	cgroup  string // memory cgroup folder, or "" when GOMEMLIMIT stands in
	limited string // how the memory limit was applied
}

// startSoakStack starts the runtime (tiny model) and the proxy with its
// default settings (DRAIN_DELAY aside), the proxy in a 512 MiB memory
// cgroup when one can be made (v1 or v2, as root), else with GOMEMLIMIT at
// 90% of it as automemlimit would set.
func startSoakStack(bins harness.Binaries, model, ortLibrary string) (*soakStack, error) {
	cfg := harness.StackConfig{Model: model, ORTLibrary: ortLibrary, ORTCache: "off", ProxyDefaults: true,
		ProxyEnv: []string{"DRAIN_DELAY=0s"}}
	s := &soakStack{}
	var err error
	if s.cgroup, err = memoryCgroup(limitMiB << 20); err == nil {
		cfg.ProxyCgroup = s.cgroup
		s.limited = "memory cgroup " + s.cgroup + " limited to 512 MiB (GOMEMLIMIT from it)"
	} else {
		cfg.ProxyEnv = append(cfg.ProxyEnv, fmt.Sprintf("GOMEMLIMIT=%dMiB", limitMiB*9/10))
		s.limited = fmt.Sprintf("no memory cgroup (%v): GOMEMLIMIT=%dMiB only, no kernel limit", err, limitMiB*9/10)
	}
	if s.Stack, err = harness.StartStack(bins, cfg); err != nil {
		if s.cgroup != "" {
			os.Remove(s.cgroup)
		}
		return nil, fmt.Errorf("soak stack: %w", err)
	}
	s.addr = strings.TrimPrefix(s.URL, "http://")
	return s, nil
}

// memoryCgroup creates a memory cgroup limited to limit bytes.
func memoryCgroup(limit int64) (string, error) {
	// A run killed before its stop leaves its cgroup behind: remove those
	// (rmdir refuses a cgroup that still holds a process, so a run going
	// on beside this one keeps its own).
	for _, pattern := range []string{"/sys/fs/cgroup/memory/batchgate-soak-*", "/sys/fs/cgroup/batchgate-soak-*"} {
		stale, _ := filepath.Glob(pattern)
		for _, d := range stale {
			os.Remove(d)
		}
	}
	name := fmt.Sprintf("batchgate-soak-%d", os.Getpid())
	for _, c := range []struct{ dir, file string }{
		{"/sys/fs/cgroup/memory/" + name, "memory.limit_in_bytes"}, // v1
		{"/sys/fs/cgroup/" + name, "memory.max"},                   // v2
	} {
		if err := os.Mkdir(c.dir, 0o755); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(c.dir, c.file), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
			os.Remove(c.dir)
			continue
		}
		return c.dir, nil
	}
	return "", errors.New("cannot create a memory cgroup (needs root and a mounted memory controller)")
}

func (s *soakStack) stop() {
	s.Stop()
	if s.cgroup != "" {
		os.Remove(s.cgroup)
	}
}

// alive reports whether the proxy process still runs (an OOM kill ends it).
func (s *soakStack) alive() bool { return !s.Proxy().Exited() }

// peakSampler records the highest RSS of pid until stopped.
func peakSampler(pid int) (stop func() float64) {
	var peak atomic.Int64 // KiB
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if r := harness.RSSMiB(pid); r >= 0 && int64(r*1024) > peak.Load() {
				peak.Store(int64(r * 1024))
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(done); <-finished; return float64(peak.Load()) / 1024 }
}

// outcomes counts what connections got, safely from many goroutines.
type outcomes struct {
	mu sync.Mutex
	m  map[string]int
	n  int
}

func (o *outcomes) add(k string) {
	o.mu.Lock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[k]++
	o.n++
	o.mu.Unlock()
}

// rawRequest writes a request on conn and reads the answer's status;
// "closed" when the server closed or reset the connection without one.
func readStatus(br *bufio.Reader) string {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "closed"
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

// heldUploads opens n connections, each announcing size bytes of image/jpeg
// and sending all but the last byte; after hold it sends the last byte.
func heldUploads(addr string, n, size int, hold time.Duration, jpeg []byte) *outcomes {
	out := &outcomes{}
	body := make([]byte, size)
	copy(body, jpeg)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			conn, err := dialFrom(addr, attackerIP)
			if err != nil {
				out.add("dial error")
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(hold + 90*time.Second))
			br := bufio.NewReader(conn)
			status := make(chan string, 1)
			go func() { status <- readStatus(br) }()
			fmt.Fprintf(conn, "POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", size)
			if _, err := conn.Write(body[:size-1]); err != nil {
				out.add(<-status)
				return
			}
			select {
			case s := <-status: // answered before the last byte: refused
				out.add(s)
				return
			case <-time.After(hold):
			}
			conn.Write(body[size-1:])
			out.add(<-status)
		})
	}
	wg.Wait()
	return out
}

// bombPNG returns a 40 MP PNG (8000 x 5000) of a constant color: a few
// hundred KB that decode to 40 MB (gray) or 160 MB (RGBA).
func bombPNG(gray bool) []byte {
	r := image.Rect(0, 0, 8000, 5000)
	var img image.Image
	if gray {
		img = image.NewGray(r)
	} else {
		m := image.NewNRGBA(r)
		for i := 3; i < len(m.Pix); i += 4 {
			m.Pix[i] = 255
		}
		img = m
	}
	var buf bytes.Buffer
	(&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&buf, img)
	return buf.Bytes()
}

// postAll sends each body once, concurrently, on its own connection.
func postAll(addr string, bodies [][]byte, contentType string) *outcomes {
	out := &outcomes{}
	var wg sync.WaitGroup
	for _, b := range bodies {
		wg.Go(func() { out.add(post(addr, b, contentType, 2*time.Minute)) })
	}
	wg.Wait()
	return out
}

func post(addr string, body []byte, contentType string, timeout time.Duration) string {
	conn, err := dialFrom(addr, attackerIP)
	if err != nil {
		return "dial error"
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(conn, "POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", contentType, len(body))
	conn.Write(body)
	return readStatus(bufio.NewReader(conn))
}

// flood keeps conns keep-alive connections sending distinct JPEGs for d.
func flood(addr string, conns int, d time.Duration, jpeg []byte) *outcomes {
	out := &outcomes{}
	end := time.Now().Add(d)
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			var conn net.Conn
			var br *bufio.Reader
			for time.Now().Before(end) {
				if conn == nil {
					c, err := dialFrom(addr, attackerIP)
					if err != nil {
						out.add("dial error")
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn, br = c, bufio.NewReader(c)
				}
				body := fmt.Appendf(append([]byte(nil), jpeg...), "soak-%d", seq.Add(1))
				conn.SetDeadline(time.Now().Add(60 * time.Second))
				fmt.Fprintf(conn, "POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", len(body))
				conn.Write(body)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					out.add("closed")
					conn.Close()
					conn = nil
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				out.add(strconv.Itoa(resp.StatusCode))
				if resp.Close {
					conn.Close()
					conn = nil
				}
			}
			if conn != nil {
				conn.Close()
			}
		})
	}
	wg.Wait()
	return out
}

// idleConns opens n keep-alive connections, makes one GET /healthz on
// each, and holds them idle for d.
func idleConns(addr string, n int, d time.Duration) *outcomes {
	out := &outcomes{}
	conns := make([]net.Conn, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200) // dial at most 200 at once
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conn, err := dialFrom(addr, attackerIP)
			if err != nil {
				out.add("dial error")
				return
			}
			conn.SetDeadline(time.Now().Add(d + time.Minute))
			fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: soak\r\n\r\n")
			out.add(readStatus(bufio.NewReader(conn)))
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		})
	}
	wg.Wait()
	time.Sleep(d)
	for _, c := range conns {
		c.Close()
	}
	return out
}

// runSoak runs every scenario against s and returns their results.
func runSoak(s *soakStack, k *keyedStack, cfg soakConfig, jpeg []byte, logf func(string, ...any)) []scenarioResult {
	pid := s.Proxy().Pid()
	gray, rgba := bombPNG(true), bombPNG(false)
	scenarios := []scenario{
		{fmt.Sprintf("%d concurrent %d MiB uploads held open %v", cfg.heldUploads, cfg.uploadBytes>>20, cfg.hold), cfg.heldUploads,
			func() *outcomes { return heldUploads(s.addr, cfg.heldUploads, cfg.uploadBytes, cfg.hold, jpeg) }},
		{fmt.Sprintf("%d concurrent 40 MP PNG bombs (%d KB gray, %d KB RGBA)", cfg.bombs, len(gray)>>10, len(rgba)>>10), cfg.bombs,
			func() *outcomes {
				var bodies [][]byte
				for i := range cfg.bombs {
					bodies = append(bodies, slices.Concat(map[bool][]byte{true: gray, false: rgba}[i%2 == 0], fmt.Appendf(nil, "%d", i)))
				}
				return postAll(s.addr, bodies, "image/png")
			}},
		{fmt.Sprintf("flood of distinct uploads from %d connections for %v", cfg.floodConns, cfg.flood), cfg.floodConns,
			func() *outcomes { return flood(s.addr, cfg.floodConns, cfg.flood, jpeg) }},
		{fmt.Sprintf("%d idle keep-alive connections for %v", cfg.idleConns, cfg.idle), cfg.idleConns,
			func() *outcomes { return idleConns(s.addr, cfg.idleConns, cfg.idle) }},
	}
	scenarios = append(scenarios, attackScenarios(s.addr, cfg.attack, cfg.scale)...)
	// The honest clients' goodput alone, for the ratios, after a warm-up.
	warm := make(chan struct{})
	time.AfterFunc(2*time.Second, func() { close(warm) })
	honestClient(s.addr, cfg.honest, jpeg, warm)
	quietStop := make(chan struct{})
	time.AfterFunc(cfg.attack, func() { close(quietStop) })
	quiet := honestClient(s.addr, cfg.honest, jpeg, quietStop)
	logf("soak: honest clients alone, as fast as answered: %.1f images/s, p50 %v", quiet.PerSec, quiet.P50)
	results := []scenarioResult{{Name: "quiet: the honest client alone, as fast as answered", PeakRSSMiB: -1, Outcomes: map[string]int{}, Took: quiet.Elapsed,
		RecoverSec: -1, Honest: quiet, HonestRatio: 1}}
	honest := func(stop <-chan struct{}) honestResult { return honestClient(s.addr, cfg.honest, jpeg, stop) }
	if rate := cfg.honestShare * quiet.PerSec; rate > 0 {
		honest = func(stop <-chan struct{}) honestResult { return honestPaced(s.addr, "", rate, jpeg, stop) }
		pacedStop := make(chan struct{})
		time.AfterFunc(cfg.attack, func() { close(pacedStop) })
		quiet = honest(pacedStop)
		logf("soak: honest client alone, paced at %.1f/s: %.1f images/s, p50 %v, p99 %v", rate, quiet.PerSec, quiet.P50, quiet.P99)
		results = append(results, scenarioResult{Name: fmt.Sprintf("quiet: the honest client alone, paced at %.0f%% of that (%.0f/s)", 100*cfg.honestShare, rate),
			PeakRSSMiB: -1, Outcomes: map[string]int{}, Took: quiet.Elapsed, RecoverSec: -1, Honest: quiet, HonestRatio: 1})
	}
	more, ok := runScenarios(scenarios, 0, pid, s.alive, honest, quiet, cfg, logf)
	results = append(results, more...)
	if !ok || k == nil || cfg.honestShare <= 0 {
		return results
	}
	// The keyed proxy: its honest client (with its key) alone, then the
	// per-key attacks.
	honest = k.honest(cfg.honestShare*results[0].Honest.PerSec, jpeg)
	pacedStop := make(chan struct{})
	time.AfterFunc(cfg.attack, func() { close(pacedStop) })
	quiet = honest(pacedStop)
	logf("soak: keyed proxy, honest client alone: %.1f images/s, p50 %v, p99 %v", quiet.PerSec, quiet.P50, quiet.P99)
	results = append(results, scenarioResult{Name: "keyed proxy, quiet: the honest client alone, paced as above, with its key",
		PeakRSSMiB: -1, Outcomes: map[string]int{}, Took: quiet.Elapsed, RecoverSec: -1, Honest: quiet, HonestRatio: 1})
	more, _ = runScenarios(keyedScenarios(k, cfg.attack, jpeg), len(scenarios), k.Proxy().Pid(), k.alive, honest, quiet, cfg, logf)
	return append(results, more...)
}

// runScenarios runs scs in turn against the proxy of pid, the attacker of
// the i-th from 127.0.0.(10+first+i), honest beside each, its goodput
// compared with quiet's. ok is false if the proxy died.
func runScenarios(scs []scenario, first, pid int, alive func() bool, honest func(stop <-chan struct{}) honestResult,
	quiet honestResult, cfg soakConfig, logf func(string, ...any)) (results []scenarioResult, ok bool) {
	for i, sc := range scs {
		// Each attack from an address of its own, as separate attackers:
		// what one owes (fairshare.Debt) does not slow the next. Set
		// while no attack runs.
		attackerIP = fmt.Sprintf("127.0.0.%d", 10+first+i)
		logf("soak: %s ...", sc.name)
		start := time.Now()
		stop := peakSampler(pid)
		honestStop := make(chan struct{})
		honestDone := make(chan honestResult, 1)
		go func() { honestDone <- honest(honestStop) }()
		out := sc.run()
		close(honestStop)
		h := <-honestDone
		peak := stop()
		r := scenarioResult{Name: sc.name, PeakRSSMiB: peak, Outcomes: out.m, Connections: sc.conn, Took: time.Since(start), RecoverSec: -1,
			Honest: h}
		if quiet.PerSec > 0 {
			r.HonestRatio = h.PerSec / quiet.PerSec
		}
		// Recovery: RSS back under recoverMiB.
		t0 := time.Now()
		for time.Since(t0) < cfg.recoverWithin {
			if r.AfterRSSMiB = harness.RSSMiB(pid); r.AfterRSSMiB >= 0 && r.AfterRSSMiB < recoverMiB {
				r.RecoverSec = time.Since(t0).Seconds()
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		logf("soak: %s: peak RSS %.0f MiB, outcomes %v, RSS %.0f MiB after %.1f s; honest %.1f/s (%.2f of quiet), p50 %v, p99 %v, failed %v",
			sc.name, peak, out.m, r.AfterRSSMiB, time.Since(t0).Seconds(), h.PerSec, r.HonestRatio, h.P50, h.P99, h.Why)
		results = append(results, r)
		if !alive() {
			logf("soak: the proxy died (OOM kill?) during %q", sc.name)
			return results, false
		}
	}
	return results, true
}

// soakReport formats results as Markdown.
func soakReport(results []scenarioResult, limited, machine string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Adversarial memory soak\n\n%s. Proxy with its default settings; %s; tiny model.\n", machine, limited)
	fmt.Fprintf(&b, "Goal: peak RSS <= %d MiB (issue 22: <= %d), every connection answered (200/408/413/429/503) or closed cleanly, RSS < %d MiB within 60 s after, and the honest clients (from an address of their own) keep >= 90%% of their quiet goodput.\n\n", limitMiB, goalMiB, recoverMiB)
	b.WriteString("| scenario | peak RSS MiB | outcomes | RSS after, MiB | back under 150 MiB after | honest images/s (of quiet) | honest p50 / p99 ms | honest failures |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		h := fmt.Sprintf("%.1f (%.2f)", r.Honest.PerSec, r.HonestRatio)
		p50 := fmt.Sprintf("%.1f / %.1f", float64(r.Honest.P50.Microseconds())/1000, float64(r.Honest.P99.Microseconds())/1000)
		p50 += " | " + outcomeList(r.Honest.Why)
		if r.PeakRSSMiB < 0 {
			fmt.Fprintf(&b, "| %s | | | | | %s | %s |\n", r.Name, h, p50)
			continue
		}
		rec := "not within 60 s"
		if r.RecoverSec >= 0 {
			rec = fmt.Sprintf("%.1f s", r.RecoverSec)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %.0f | %s | %s | %s |\n", r.Name, r.PeakRSSMiB, outcomeList(r.Outcomes), r.AfterRSSMiB, rec, h, p50)
	}
	return b.String()
}

// outcomeList formats counts by outcome, sorted: "200: 8, 429: 192".
func outcomeList(m map[string]int) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// Config is one `go run ./perf -adversarial` run.
type Config struct {
	OutDir string  // parent of the adversarial-<timestamp> folder
	Scale  float64 // of the connection counts and durations (1: the full soak, 0.1: a quick look)
	// HonestShare paces the honest client beside each attack at this share
	// of its quiet throughput (0: as fast as answered).
	HonestShare float64
}

// DefaultConfig is the full soak.
func DefaultConfig() Config {
	return Config{OutDir: "perf/results", Scale: 1, HonestShare: fullSoak.honestShare}
}

// Run runs every scenario, writes report.md to
// OutDir/adversarial-<timestamp> and prints it.
func Run(ctx context.Context, c Config) error {
	cfg := fullSoak.scaled(c.Scale)
	cfg.honestShare = c.HonestShare
	res, limited, err := adversarial(ctx, cfg, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		return err
	}
	md := soakReport(res, limited, harness.Machine())
	dir := filepath.Join(c.OutDir, "adversarial-"+time.Now().Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err == nil {
		os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644)
		fmt.Fprintln(os.Stderr, "report:", filepath.Join(dir, "report.md"))
	}
	fmt.Print(md)
	return nil
}

// scaled shrinks the counts and durations by f (at least 1 each).
func (c soakConfig) scaled(f float64) soakConfig {
	n := func(v int) int { return max(1, int(float64(v)*f)) }
	d := func(v time.Duration) time.Duration { return max(time.Second, time.Duration(float64(v)*f)) }
	c.heldUploads, c.bombs, c.floodConns, c.idleConns = n(c.heldUploads), max(2, n(c.bombs)), n(c.floodConns), n(c.idleConns)
	c.hold, c.flood, c.idle, c.attack = d(c.hold), d(c.flood), d(c.idle), d(c.attack)
	c.scale *= f
	return c
}

// adversarial builds and starts the stack and runs the scenarios.
func adversarial(ctx context.Context, cfg soakConfig, logf func(string, ...any)) ([]scenarioResult, string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, "", err
	}
	bin, err := os.MkdirTemp("", "batchgate-soak-bin-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(bin)
	bins, err := harness.BuildBinaries(root, bin)
	if err != nil {
		return nil, "", err
	}
	model := filepath.Join(bin, "tiny.onnx")
	if o, err := exec.CommandContext(ctx, bins.Runtime, "fetch-model", "-tiny", "-dir", bin).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("cannot generate the tiny model: %v\n%s", err, o)
	}
	ort := harness.ORTLibrary(root)
	jpeg, err := os.ReadFile(filepath.Join(root, "proxy", "testdata", "grace_hopper.jpg"))
	if err != nil {
		return nil, "", err
	}
	s, err := startSoakStack(bins, model, ort)
	if err != nil {
		return nil, "", err
	}
	defer s.stop()
	logf("soak: proxy pid %d; %s", s.Proxy().Pid(), s.limited)
	k, err := startKeyedProxy(bins, s.Socket, model, ort)
	if err != nil {
		return nil, "", fmt.Errorf("cannot start the keyed proxy: %w", err)
	}
	defer k.stop()
	return runSoak(s, k, cfg, jpeg, logf), s.limited, nil
}
