// Package chaos is the chaos run (`go run ./perf -chaos`): the real runtime and proxy under
// a steady open-loop load of distinct images, well under capacity, each
// request with a deadline (X-Request-Timeout-Ms), while faults are applied
// one after another:
//
//   - runtime SIGKILL, down for a moment, restarted (five times);
//   - runtime SIGSTOP for 10 s, then SIGCONT;
//   - proxy SIGTERM (it drains), then a new proxy on the same port;
//   - runtime SIGTERM (it drains), then restarted;
//   - the runtime's socket file removed while the proxy is connected, left
//     so for a while, then the runtime restarted (which recreates it);
//   - the runtime restarted with a different model;
//   - 5x the load for 60 s.
//
// Every answer is checked against the top-1 class that the model named in
// the answer (model_sha256) gives that image, measured per model in quiet
// runs before the load. For each fault it records wrong answers, requests
// lost, the status mix, the time to detect and to recover, the latency
// against the deadline and both processes' RSS, and writes report.md,
// results.json, requests.csv and timeline.png to
// perf/results/chaos-<timestamp>/. See docs/reliability.md.
package chaos

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
	"github.com/batchgate/batchgate/runtime/modelgen"
)

// chaosConfig sizes the run; fullChaos is the issue's, shortChaos the
// test's.
type chaosConfig struct {
	Name          string        `json:"name"`
	Model         string        `json:"model"`          // "resnet50" (generated) or "tiny"
	MaxBatch      int           `json:"max_batch_size"` // MAX_BATCH_SIZE of both processes
	Images        int           `json:"images"`         // distinct images in the pool
	LoadFraction  float64       `json:"load_fraction"`  // of the measured capacity
	MaxRate       float64       `json:"max_rate"`       // requests/s at most (0: no bound)
	Rate          float64       `json:"rate"`           // fixed rate; 0: measure the capacity
	Measure       time.Duration `json:"measure"`        // capacity measurement
	Deadline      time.Duration `json:"deadline"`       // X-Request-Timeout-Ms of every request
	Baseline      time.Duration `json:"baseline"`       // load before the first fault
	Kills         int           `json:"kills"`          // runtime SIGKILLs
	Down          time.Duration `json:"down"`           // how long a killed runtime stays down
	Stall         time.Duration `json:"stall"`          // SIGSTOP to SIGCONT
	SocketHold    time.Duration `json:"socket_hold"`    // socket file gone, nothing done
	Overload      time.Duration `json:"overload"`       // length of the overload
	OverloadX     float64       `json:"overload_x"`     // its load, times the steady rate
	Settle        time.Duration `json:"settle"`         // steady load after each recovery
	DrainDelay    time.Duration `json:"drain_delay"`    // proxy DRAIN_DELAY; <0: its default (5s)
	RecoverWithin time.Duration `json:"recover_within"` // longest wait for /readyz 200 after a fault
}

var fullChaos = chaosConfig{
	Name: "full", Model: "resnet50", MaxBatch: 8, Images: 32, LoadFraction: 0.6, Measure: 10 * time.Second,
	Deadline: 5 * time.Second, Baseline: 20 * time.Second, Kills: 5, Down: 2 * time.Second,
	Stall: 10 * time.Second, SocketHold: 15 * time.Second, Overload: 60 * time.Second, OverloadX: 5,
	Settle: 10 * time.Second, DrainDelay: -1, RecoverWithin: 3 * time.Minute,
}

// shortChaos keeps every fault but makes it a few seconds, with the tiny
// model. The stall stays longer than the 5 s in which the issue wants it
// detected, so that the test can check what happens after detection.
var shortChaos = chaosConfig{
	Name: "short", Model: "tiny", MaxBatch: 8, Images: 24, LoadFraction: 0.6, MaxRate: 40, Measure: 2 * time.Second,
	Deadline: 5 * time.Second, Baseline: 2 * time.Second, Kills: 5, Down: time.Second,
	Stall: 8 * time.Second, SocketHold: 3 * time.Second, Overload: 5 * time.Second, OverloadX: 5,
	Settle: 1500 * time.Millisecond, DrainDelay: time.Second, RecoverWithin: 30 * time.Second,
}

// What the issue demands of a stalled runtime, checked by TestChaosShort.
const (
	stallDetectWithin  = 5 * time.Second // after the runtime stops making progress
	stallFailFast      = time.Second     // answer time of requests sent once it is detected
	stallRecoverWithin = 2 * time.Second // after it resumes
	deadlineMargin     = 2 * time.Second // no request answered later than deadline + this
)

// Fault kinds.
const (
	faultBaseline  = "baseline"
	faultKill      = "runtime-sigkill"
	faultStop      = "runtime-sigstop"
	faultProxyTerm = "proxy-sigterm"
	faultRtTerm    = "runtime-sigterm"
	faultSocket    = "socket-removed"
	faultModelSwap = "model-swap"
	faultOverload  = "overload"
)

// graceful faults must lose no request.
func graceful(kind string) bool { return kind == faultProxyTerm || kind == faultRtTerm }

// chaosFault is one applied fault: when it started, when it was lifted
// (the remedy began: restart, SIGCONT, load back to normal), when the
// stack was ready again, and when its window ended (the next one starts).
type chaosFault struct {
	Name  string
	Kind  string
	Short string // label on the plot
	Start time.Duration
	Lift  time.Duration
	Ready time.Duration // -1: not ready within RecoverWithin
	End   time.Duration
	Notes []string
	// newSHA is the model served after a model swap, oldSHA before.
	newSHA, oldSHA string
}

// chaosModel is one model file and its sha256 (from the runtime's answers).
type chaosModel struct {
	Name string `json:"name"`
	Path string `json:"-"`
	SHA  string `json:"sha256"`
}

// chaosRun is one run's state and results.
type chaosRun struct {
	cfg      chaosConfig
	started  time.Time // wall clock
	since    time.Time // time origin of every offset: the load's start
	machine  string
	command  string
	stack    *harness.Stack
	bins     harness.Binaries
	rtLog    io.Writer // the runtimes' log: the stack's, and the event lines
	pxLog    io.Writer // the proxies'
	pool     []chaosImage
	models   [2]chaosModel // A (served first) and B (after the swap)
	capacity float64       // measured requests/s
	rate     float64       // steady rate sent
	faults   []*chaosFault
	rec      chaosRecorder
	probes   chaosProbes
	events   []string
	logf     func(string, ...any)
	ctx      context.Context // ends the run early (Ctrl-C)
	ambig    int             // image x model pairs with a near tie in the quiet runs
	differ   int             // images whose top-1 differs between the models
}

func (r *chaosRun) event(format string, args ...any) {
	at := time.Duration(0)
	if !r.since.IsZero() {
		at = time.Since(r.since)
	}
	msg := fmt.Sprintf("%7.2f s  ", at.Seconds()) + fmt.Sprintf(format, args...)
	r.events = append(r.events, msg)
	r.logf("chaos: %s", msg)
	// The same line in both processes' logs, to read them side by side.
	if r.rtLog != nil {
		line := fmt.Sprintf("---- chaos: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), msg)
		r.rtLog.Write([]byte(line))
		r.pxLog.Write([]byte(line))
	}
}

func (r *chaosRun) now() time.Duration { return time.Since(r.since) }

// Config is one `go run ./perf -chaos` run.
type Config struct {
	OutDir  string  // parent of the chaos-<timestamp> folder
	Short   bool    // every fault a few seconds, tiny model (what TestChaosShort runs)
	Model   string  // "resnet50" (generated weights) or "tiny"; "": resnet50, tiny when Short
	Rate    float64 // steady requests/s; 0: Load of the measured capacity
	Load    float64 // steady load as a fraction of the measured capacity; 0: the default (0.6)
	Command string  // the command line, for the report
}

// Run applies every fault under load and writes report.md, results.json,
// requests.csv and timeline.png to OutDir/chaos-<timestamp>, also when it
// fails midway or is interrupted: Ctrl-C stops the faults and the load,
// stops both processes and still writes what was measured.
func Run(ctx context.Context, c Config) error {
	cfg := fullChaos
	if c.Short {
		cfg = shortChaos
	}
	if c.Model != "" {
		cfg.Model = c.Model
	}
	if c.Rate > 0 {
		cfg.Rate = c.Rate
	}
	if c.Load > 0 {
		cfg.LoadFraction = c.Load
	}
	dir := filepath.Join(c.OutDir, "chaos-"+time.Now().UTC().Format("20060102-150405"))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, err := chaos(ctx, cfg, dir, c.Command, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if run != nil && len(run.faults) > 0 {
		if werr := run.write(dir); werr != nil {
			fmt.Fprintln(os.Stderr, "perf -chaos: cannot write the report:", werr)
		} else {
			fmt.Fprintln(os.Stderr, "report:", filepath.Join(dir, "report.md"))
		}
		fmt.Print(run.table())
	}
	return err
}

// chaos builds the binaries, generates both models, measures the expected
// answers and the capacity, and applies every fault under load. It returns
// the run, with what was done so far when it fails midway.
func chaos(ctx context.Context, cfg chaosConfig, dir, command string, logf func(string, ...any)) (*chaosRun, error) {
	r := &chaosRun{cfg: cfg, started: time.Now().UTC(), machine: harness.Machine(), command: command, logf: logf, ctx: ctx}
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "batchgate-chaos-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	// Fresh binaries every run: the runtime and proxy change under us.
	logf("chaos: building runtime and proxy")
	bins, err := harness.BuildBinaries(root, filepath.Join(tmp, "bin"))
	if err != nil {
		return nil, err
	}
	ort := harness.ORTLibrary(root)
	if _, err := os.Stat(ort); err != nil {
		return nil, fmt.Errorf("ONNX Runtime library not found (%v): run `make deps` or set ORT_LIBRARY", err)
	}
	if err := r.makeModels(tmp); err != nil {
		return nil, err
	}
	if r.pool, err = chaosPool(filepath.Join(root, "proxy", "testdata", "grace_hopper.jpg"), cfg.Images); err != nil {
		return nil, err
	}

	rtLog, err := os.Create(filepath.Join(dir, "runtime.log"))
	if err != nil {
		return nil, err
	}
	defer rtLog.Close()
	pxLog, err := os.Create(filepath.Join(dir, "proxy.log"))
	if err != nil {
		return nil, err
	}
	defer pxLog.Close()
	r.rtLog, r.pxLog = &syncWriter{w: rtLog}, &syncWriter{w: pxLog}
	// The proxy keeps its defaults (the faults test what users get) but
	// MAX_BATCH_SIZE, DRAIN_DELAY when set, and a quieter log; the
	// runtime logs at info, for the timeline beside the events.
	scfg := harness.StackConfig{ORTLibrary: ort, ORTCache: filepath.Join(root, ".deps", "ort-cache"), MaxBatch: cfg.MaxBatch,
		ProxyDefaults: true, RuntimeEnv: []string{"LOG_LEVEL=info"}, RuntimeLog: r.rtLog, ProxyLog: r.pxLog}
	if cfg.DrainDelay >= 0 {
		scfg.ProxyEnv = []string{"DRAIN_DELAY=" + cfg.DrainDelay.String()}
	}
	s, err := harness.NewStack(bins, scfg)
	if err != nil {
		return nil, err
	}
	r.stack, r.bins = s, bins
	defer s.Stop()

	if err := r.quietRuns(ctx); err != nil {
		return r, err
	}
	r.rate = cfg.Rate
	if r.rate == 0 {
		if err := r.measureCapacity(ctx); err != nil {
			return r, err
		}
	}

	// The load and the probes run through every fault.
	r.since = time.Now()
	stop := make(chan struct{})
	var bg sync.WaitGroup
	loadCtx, cancelLoad := context.WithCancel(ctx)
	defer cancelLoad()
	client := newChaosClient(s.URL+"/predict", cfg.Deadline)
	maxDur := 2 * time.Hour
	steady := &chaosLoad{c: client, pool: r.pool, rate: r.rate, maxN: int(r.rate*maxDur.Seconds()) + 1, maxDur: maxDur,
		maxInFlight: 1024, seed: 1, rec: &r.rec, since: r.since}
	bg.Go(func() { steady.run(loadCtx, stop) })
	bg.Go(func() { r.probes.run(s, r.since, stop) })
	finish := func() {
		close(stop)
		bg.Wait()
	}
	r.event("steady load at %.1f requests/s, deadline %v", r.rate, cfg.Deadline)

	err = r.faultSequence(ctx, client, loadCtx)
	if err != nil {
		r.event("aborted: %v", err)
	}
	// The last window ends when the load stops; then wait for the
	// requests in flight.
	end := r.now()
	if n := len(r.faults); n > 0 && r.faults[n-1].End == 0 {
		r.faults[n-1].End = end
	}
	finish()
	r.event("load stopped; %d requests", len(r.rec.reqs))
	return r, err
}

// makeModels writes the run's two models to dir: model A is what `make`
// generates; model B the same architecture with another seed: same
// contract, other weights, other sha256.
func (r *chaosRun) makeModels(dir string) error {
	cfg := r.cfg
	r.logf("chaos: generating the %s models (seeds %d and %d)", cfg.Model, modelgen.DefaultSeed, modelgen.DefaultSeed+1)
	gen := modelgen.Tiny
	if cfg.Model == "resnet50" {
		gen = modelgen.ResNet50
	}
	for i, seed := range []uint64{modelgen.DefaultSeed, modelgen.DefaultSeed + 1} {
		b, _ := gen(seed)
		p := filepath.Join(dir, fmt.Sprintf("%s-seed%d.onnx", cfg.Model, seed))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		r.models[i] = chaosModel{Name: filepath.Base(p), Path: p}
	}
	return nil
}

// quietRuns sends each image once per model with no-cache, twice, in
// batches of several sizes, and records the answers the load is checked
// against; then it starts a fresh proxy, so that the cache holds nothing
// when the load starts.
func (r *chaosRun) quietRuns(ctx context.Context) error {
	cfg, s := r.cfg, r.stack
	var err error
	if err := r.startRuntime(r.models[1].Path); err != nil {
		return err
	}
	if err := r.startProxy(); err != nil {
		return err
	}
	if _, err := r.waitReady(ctx, cfg.RecoverWithin); err != nil {
		return err
	}
	for _, m := range []int{1, 0} {
		if m == 0 {
			if err := r.restartRuntime(r.models[0].Path, 0); err != nil {
				return err
			}
		}
		r.logf("chaos: quiet run with %s", r.models[m].Name)
		if r.models[m].SHA, err = r.quietRun(ctx); err != nil {
			return fmt.Errorf("quiet run with %s: %w", r.models[m].Name, err)
		}
	}
	if r.models[0].SHA == r.models[1].SHA {
		return errors.New("both models have the same sha256")
	}
	for _, im := range r.pool {
		a, b := im.expect[r.models[0].SHA], im.expect[r.models[1].SHA]
		if len(a) == 1 && len(b) == 1 && a[0] != b[0] {
			r.differ++
		}
	}
	r.logf("chaos: %d of %d images have another top-1 under each model; %d near ties", r.differ, len(r.pool), r.ambig)
	px := s.Proxy()
	px.Signal(syscall.SIGTERM)
	if !px.Wait(time.Minute) {
		return errors.New("the proxy did not stop within a minute after the quiet runs")
	}
	if err := r.startProxy(); err != nil {
		return err
	}
	if _, err := r.waitReady(ctx, cfg.RecoverWithin); err != nil {
		return err
	}
	return nil
}

// measureCapacity measures the capacity through the whole stack (closed
// loop, distinct images) and sets the steady rate from it.
func (r *chaosRun) measureCapacity(ctx context.Context) error {
	cfg, s := r.cfg, r.stack
	r.logf("chaos: measuring the capacity for %v", cfg.Measure)
	ups := make([]harness.Upload, len(r.pool))
	for i := range r.pool {
		ups[i] = r.pool[i].up
	}
	c := harness.NewClient(s.URL + "/predict")
	res, _, took := harness.ClosedLoop(ctx, c, 2*cfg.MaxBatch+4, harness.Warmup(cfg.Measure), cfg.Measure,
		func(rng *rand.Rand) harness.Upload { return ups[rng.IntN(len(ups))] }, true, func() {})
	ok := 0
	for _, x := range res {
		if x.Status == 200 {
			ok++
		}
	}
	r.capacity = float64(ok) / took.Seconds()
	if r.capacity <= 0 {
		return fmt.Errorf("capacity measurement: no request succeeded (%d answers)", len(res))
	}
	r.rate = cfg.LoadFraction * r.capacity
	if cfg.MaxRate > 0 {
		r.rate = min(r.rate, cfg.MaxRate)
	}
	r.logf("chaos: capacity %.1f requests/s; steady load %.1f requests/s", r.capacity, r.rate)
	// Let the closed loop's requests drain before the load starts.
	if _, err := r.waitReady(ctx, cfg.RecoverWithin); err != nil {
		return err
	}
	return nil
}

// faultSequence injects the faults in turn, under the steady load, each
// step a method below; the first error ends the run.
func (r *chaosRun) faultSequence(ctx context.Context, client *chaosClient, loadCtx context.Context) error {
	for _, step := range []func(context.Context) error{
		r.baseline, r.runtimeKills, r.runtimeStall, r.proxyRestart, r.runtimeTerm, r.socketRemoved, r.modelSwap,
		func(ctx context.Context) error { return r.overload(ctx, client, loadCtx) },
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// baseline: steady load, no fault.
func (r *chaosRun) baseline(ctx context.Context) error {
	base := r.begin("steady load, no fault", faultBaseline, "base")
	if err := sleepCtx(ctx, r.cfg.Baseline); err != nil {
		return err
	}
	base.Lift, base.Ready = r.now(), r.now()
	return nil
}

// runtimeKills: SIGKILL of the runtime, a new one after cfg.Down, Kills
// times.
func (r *chaosRun) runtimeKills(ctx context.Context) error {
	for i := range r.cfg.Kills {
		f := r.begin(fmt.Sprintf("runtime SIGKILL #%d, restart after %v", i+1, r.cfg.Down), faultKill, fmt.Sprintf("K%d", i+1))
		rt := r.stack.Runtime()
		rt.Signal(syscall.SIGKILL)
		rt.Wait(10 * time.Second)
		r.event("runtime exited: %s", rt.ExitText())
		if err := sleepCtx(ctx, r.cfg.Down); err != nil {
			return err
		}
		if err := r.lift(f, func() error { return r.startRuntime(r.modelPath()) }); err != nil {
			return err
		}
	}
	return nil
}

// runtimeStall: SIGSTOP of the runtime for cfg.Stall, then SIGCONT.
func (r *chaosRun) runtimeStall(ctx context.Context) error {
	f := r.begin(fmt.Sprintf("runtime SIGSTOP for %v, then SIGCONT", r.cfg.Stall), faultStop, "STOP")
	rt := r.stack.Runtime()
	rt.Signal(syscall.SIGSTOP)
	serr := sleepCtx(ctx, r.cfg.Stall)
	return cmp.Or(r.lift(f, func() error { return rt.Signal(syscall.SIGCONT) }), serr)
}

// proxyRestart: SIGTERM of the proxy (it drains), a new one on the same
// port once it has exited.
func (r *chaosRun) proxyRestart(ctx context.Context) error {
	drain := "DRAIN_DELAY 5s (default)"
	if r.cfg.DrainDelay >= 0 {
		drain = "DRAIN_DELAY " + r.cfg.DrainDelay.String()
	}
	// The old proxy closes its listener DRAIN_DELAY after SIGTERM, and the
	// kernel resets any connection still queued for accept at that instant,
	// in any server. The steady load arrives on a fixed schedule and the
	// faults start on it, so the close could land on a request's connect:
	// send SIGTERM half an interval after a scheduled request instead. (In
	// Kubernetes no request arrives then: the failing /readyz has taken the
	// pod out of the endpoints during DRAIN_DELAY.)
	if iv := time.Duration(float64(time.Second) / r.rate); iv > 0 {
		if err := sleepCtx(ctx, (iv/2-r.now()%iv+iv)%iv); err != nil {
			return err
		}
	}
	f := r.begin("proxy SIGTERM ("+drain+"), new proxy on the same port", faultProxyTerm, "PXY")
	px := r.stack.Proxy()
	px.Signal(syscall.SIGTERM)
	t0 := time.Now()
	if !px.Wait(r.cfg.Deadline + time.Minute) {
		px.Stop(0)
		f.Notes = append(f.Notes, "the old proxy did not exit; killed")
	}
	f.Notes = append(f.Notes, fmt.Sprintf("old proxy exited %.2f s after SIGTERM (%s)", time.Since(t0).Seconds(), px.ExitText()))
	r.event("old proxy exited: %s", px.ExitText())
	return r.lift(f, r.startProxy)
}

// runtimeTerm: SIGTERM of the runtime (it drains), then a new one.
func (r *chaosRun) runtimeTerm(context.Context) error {
	f := r.begin("runtime SIGTERM, restart", faultRtTerm, "TERM")
	return r.restartRuntime(r.modelPath(), 0, f)
}

// socketRemoved: the socket file deleted under a live runtime for
// cfg.SocketHold (`runtime probe` tried halfway), then a new runtime.
func (r *chaosRun) socketRemoved(ctx context.Context) error {
	hold, socket := r.cfg.SocketHold, r.stack.Socket
	f := r.begin(fmt.Sprintf("socket file removed, %v left so, then runtime restarted", hold), faultSocket, "SOCK")
	if err := os.Remove(socket); err != nil {
		return fmt.Errorf("cannot remove the socket: %w", err)
	}
	if err := sleepCtx(ctx, hold/2); err != nil {
		return err
	}
	out, perr := exec.Command(r.bins.Runtime, "probe", "-socket", socket, "-timeout", "1s").CombinedOutput()
	probe := "succeeded"
	if perr != nil {
		probe = fmt.Sprintf("failed (%v: %s)", perr, strings.TrimSpace(string(out)))
	}
	f.Notes = append(f.Notes, "`runtime probe` during the hold "+probe)
	r.event("runtime probe during the hold: %s", probe)
	if err := sleepCtx(ctx, hold-hold/2); err != nil {
		return err
	}
	f.Lift = r.now() // the remedy starts with the SIGTERM
	return r.restartRuntime(r.modelPath(), 0, f)
}

// modelSwap: the runtime restarted with the other model.
func (r *chaosRun) modelSwap(context.Context) error {
	f := r.begin("runtime restarted with a different model", faultModelSwap, "SWAP")
	f.oldSHA, f.newSHA = r.models[0].SHA, r.models[1].SHA
	return r.restartRuntime(r.models[1].Path, 1, f)
}

// overload: cfg.OverloadX times the steady load for cfg.Overload.
func (r *chaosRun) overload(ctx context.Context, client *chaosClient, loadCtx context.Context) error {
	cfg := r.cfg
	f := r.begin(fmt.Sprintf("%gx load for %v", cfg.OverloadX, cfg.Overload), faultOverload, "OVL")
	extra := &chaosLoad{c: client, pool: r.pool, rate: (cfg.OverloadX - 1) * r.rate, maxDur: cfg.Overload, maxInFlight: 1024,
		overload: true, seed: 2, rec: &r.rec, since: r.since}
	extra.maxN = int(extra.rate*cfg.Overload.Seconds()) + 1
	var wg sync.WaitGroup
	wg.Go(func() { extra.run(loadCtx, nil) })
	serr := sleepCtx(ctx, cfg.Overload)
	err := r.lift(f, func() error { return nil })
	wg.Wait() // its last requests are answered or timed out
	return cmp.Or(serr, err)
}

// current is the model served now: B after the swap.
func (r *chaosRun) modelPath() string {
	for _, f := range r.faults {
		if f.Kind == faultModelSwap {
			return r.models[1].Path
		}
	}
	return r.models[0].Path
}

// begin starts a fault's window, ending the previous one.
func (r *chaosRun) begin(name, kind, short string) *chaosFault {
	now := r.now()
	if n := len(r.faults); n > 0 {
		r.faults[n-1].End = now
	}
	f := &chaosFault{Name: name, Kind: kind, Short: short, Start: now, Ready: -1}
	r.faults = append(r.faults, f)
	if kind != faultBaseline {
		r.event("FAULT %s: %s", short, name)
	}
	return f
}

// lift applies the remedy, waits for /readyz 200 and lets the load settle.
// The lift is now unless the fault set it already.
func (r *chaosRun) lift(f *chaosFault, remedy func() error) error {
	if f.Lift == 0 {
		f.Lift = r.now()
	}
	r.event("lift %s", f.Short)
	if err := remedy(); err != nil {
		return err
	}
	at, err := r.waitReady(r.ctx, r.cfg.RecoverWithin)
	if err != nil {
		f.Notes = append(f.Notes, "not ready: "+err.Error())
		return err
	}
	f.Ready = at.Sub(r.since)
	r.event("ready again after %s", f.Short)
	return sleepCtx(r.ctx, r.cfg.Settle)
}

// sleepCtx sleeps for d, or until ctx ends (then its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// restartRuntime stops the runtime with SIGTERM (it drains) and starts
// one with model (index m of models). Within a fault, the new start is
// the lift; outside one (the quiet runs), it just waits for readiness.
func (r *chaosRun) restartRuntime(model string, m int, faults ...*chaosFault) error {
	s := r.stack
	rt := s.Runtime()
	rt.Signal(syscall.SIGTERM)
	t0 := time.Now()
	if !rt.Wait(45 * time.Second) {
		rt.Stop(0)
	}
	took := time.Since(t0)
	if len(faults) == 0 {
		if err := r.startRuntime(model); err != nil {
			return err
		}
		_, err := r.waitReady(r.ctx, r.cfg.RecoverWithin)
		return err
	}
	f := faults[0]
	f.Notes = append(f.Notes, fmt.Sprintf("old runtime exited %.2f s after SIGTERM (%s)", took.Seconds(), rt.ExitText()))
	r.event("runtime exited after SIGTERM: %s", rt.ExitText())
	return r.lift(f, func() error { return r.startRuntime(model) })
}

// quietRun sends every pool image (its exact bytes) with no-cache, twice,
// four at a time, and records each one's top-1 under the model the runtime
// serves. Where the two best classes are within 1e-4 of each other, or
// the two passes disagree, both classes are accepted. It returns the
// model's sha256.
func (r *chaosRun) quietRun(ctx context.Context) (string, error) {
	c := newChaosClient(r.stack.URL+"/predict", 30*time.Second)
	type answer struct {
		sha        string
		top1, top2 int
		margin     float64
	}
	answers := make([][2]answer, len(r.pool))
	errs := make(chan error, 2*len(r.pool))
	since := time.Now()
	for pass := range 2 {
		sem := make(chan struct{}, 4)
		var wg sync.WaitGroup
		for i := range r.pool {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				body, ct := r.pool[i].up.Body(false)
				var q chaosReq
				a, err := c.do(ctx, body, ct, "?top_k=2", true, &q, since)
				if err != nil {
					errs <- fmt.Errorf("image %d: %v", i, err)
					return
				}
				ans := answer{sha: a.ModelSHA256, top1: a.Predictions[0].ClassID, top2: -1}
				if len(a.Predictions) > 1 {
					ans.top2, ans.margin = a.Predictions[1].ClassID, a.Predictions[0].Probability-a.Predictions[1].Probability
				}
				answers[i][pass] = ans
			})
		}
		wg.Wait()
	}
	close(errs)
	if err := <-errs; err != nil {
		return "", err
	}
	sha := answers[0][0].sha
	for i, a := range answers {
		if a[0].sha != sha || a[1].sha != sha {
			return "", fmt.Errorf("the model changed during the quiet run (image %d)", i)
		}
		exp := []int{a[0].top1}
		if a[1].top1 != a[0].top1 {
			exp = append(exp, a[1].top1)
		} else if a[0].margin < 1e-4 && a[0].top2 >= 0 {
			exp = append(exp, a[0].top2)
		}
		if len(exp) > 1 {
			r.ambig++
		}
		if r.pool[i].expect == nil {
			r.pool[i].expect = map[string][]int{}
		}
		r.pool[i].expect[sha] = exp
	}
	return sha, nil
}

// syncWriter serializes writes of several processes to one log file.
type syncWriter struct {
	mu sync.Mutex
	w  *os.File
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// expectedTop1 reports whether top1 is what model sha gives image img.
func (r *chaosRun) expectedTop1(img int, sha string, top1 int) bool {
	return slices.Contains(r.pool[img].expect[sha], top1)
}
