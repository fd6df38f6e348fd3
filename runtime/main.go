// Command runtime is batchgate's model sidecar: it runs an ONNX image
// classifier with ONNX Runtime on one CPU thread and serves batches over a
// unix socket (see package wire).
//
// Usage:
//
//	runtime [serve]       serve the model (the default)
//	runtime fetch-model   download the pinned ResNet50 (-variant fp32 or int8), or generate one offline
//	runtime bench         raw ONNX Runtime throughput per batch size; -variants fp32,int8 compares them
//	runtime probe         exit 0 only if the runtime on the socket is ready (for startup probes)
//
// Every flag has an environment variable that sets its default; run
// `runtime serve -h` for the list.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/batchgate/batchgate/runtime/engine"
	"github.com/batchgate/batchgate/runtime/modelfetch"
	"github.com/batchgate/batchgate/runtime/modelgen"
	"github.com/batchgate/batchgate/runtime/quantize"
	"github.com/batchgate/batchgate/runtime/server"
	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/tracing"
)

//go:embed labels/imagenet.txt
var imagenetLabels string

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "fetch-model":
		err = fetchModel(args)
	case "bench":
		err = bench(args)
	case "probe":
		err = probe(args)
	default:
		err = fmt.Errorf("unknown command %q; want serve, fetch-model, bench or probe", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "runtime:", err)
		os.Exit(1)
	}
}

// env returns the environment variable name, or def when it is unset.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runtime: %s=%q is not an integer\n", name, v)
		os.Exit(2)
	}
	return n
}

func defaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "batchgate", "ort")
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("LOG_LEVEL %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: l})), nil
}

// engineFlags are shared by serve and bench.
type engineFlags struct {
	model, library, cacheDir string
	threads                  int
}

func (e *engineFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.model, "model", env("MODEL_PATH", "/models/model.onnx"), "ONNX model file (env MODEL_PATH)")
	fs.StringVar(&e.library, "ort-library", env("ORT_LIBRARY", "libonnxruntime.so.1"), "ONNX Runtime shared library (env ORT_LIBRARY)")
	fs.StringVar(&e.cacheDir, "ort-cache-dir", env("ORT_CACHE_DIR", defaultCacheDir()), `optimized-graph cache folder; "off" disables it (env ORT_CACHE_DIR)`)
	fs.IntVar(&e.threads, "threads", envInt("INTRA_OP_THREADS", 1), "ONNX Runtime intra-op threads (env INTRA_OP_THREADS)")
}

func (e *engineFlags) open(log *slog.Logger) (*engine.Engine, error) {
	if e.threads < 1 {
		return nil, fmt.Errorf("INTRA_OP_THREADS must be >= 1, got %d", e.threads)
	}
	cache := e.cacheDir
	if cache == "off" {
		cache = ""
	}
	return engine.Open(engine.Config{
		LibraryPath: e.library, ModelPath: e.model, IntraOpThreads: e.threads, CacheDir: cache, Logger: log,
	})
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var ef engineFlags
	ef.register(fs)
	socket := fs.String("socket", env("RUNTIME_SOCKET", "/tmp/batchgate/runtime.sock"), "unix socket path (env RUNTIME_SOCKET)")
	name := fs.String("model-name", env("MODEL_NAME", "resnet50"), "model name reported to clients (env MODEL_NAME)")
	maxBatch := fs.Int("max-batch-size", envInt("MAX_BATCH_SIZE", 8), "largest batch served; every size up to it is warmed up (env MAX_BATCH_SIZE)")
	level := fs.String("log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "longest wait for the batch in flight on SIGTERM")
	wantVariant := fs.String("variant", env("MODEL_VARIANT", ""), `the model's variant, "fp32" or "int8": start-up fails on a model of the other one; empty: any (env MODEL_VARIANT)`)
	// Who may reach the socket (runtime/server/harden.go).
	dirCheck := fs.Bool("socket-dir-check", envBool("RUNTIME_SOCKET_DIR_CHECK", true),
		"refuse to start in a socket folder that others could swap the socket in; false: warn only (env RUNTIME_SOCKET_DIR_CHECK)")
	allowedUIDs := fs.String("allowed-uids", env("RUNTIME_ALLOWED_UIDS", ""),
		"comma-separated peer uids served besides the runtime's own and root; another one makes the socket 0660, else 0600 (env RUNTIME_ALLOWED_UIDS)")
	maxConns := fs.Int("max-connections", envInt("RUNTIME_MAX_CONNECTIONS", server.DefaultMaxConnections),
		"connections open at once; more are refused (env RUNTIME_MAX_CONNECTIONS)")
	handshakeTimeout := fs.Duration("handshake-timeout", envDuration("RUNTIME_HANDSHAKE_TIMEOUT", server.DefaultHandshakeTimeout),
		"a new connection that sends no hello this long is closed (env RUNTIME_HANDSHAKE_TIMEOUT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *maxConns < 1 {
		return fmt.Errorf("RUNTIME_MAX_CONNECTIONS must be >= 1, got %d", *maxConns)
	}
	if *handshakeTimeout <= 0 {
		return fmt.Errorf("RUNTIME_HANDSHAKE_TIMEOUT must be a positive duration such as 5s, got %s", *handshakeTimeout)
	}
	allowed, err := server.ParseUIDs(*allowedUIDs)
	if err != nil {
		return fmt.Errorf("RUNTIME_ALLOWED_UIDS: %w", err)
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	if *maxBatch < 1 || *maxBatch > 1024 {
		return fmt.Errorf("MAX_BATCH_SIZE must be in [1, 1024], got %d", *maxBatch)
	}
	// Tracing (OTEL_* env, off without an endpoint): a span per batch that
	// came with the proxy's batch span context (docs/tracing.md).
	tcfg, err := tracing.ConfigFromEnv(os.Getenv, "batchgate-runtime")
	if err != nil {
		return err
	}
	stopTracing, err := tracing.Start(context.Background(), tcfg, log)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(ctx); err != nil {
			log.Warn("tracing: cannot flush the last spans", "error", err)
		}
	}()
	if _, ok := modelVariants[*wantVariant]; !ok && *wantVariant != "" {
		return fmt.Errorf("MODEL_VARIANT must be fp32, int8 or empty, got %q", *wantVariant)
	}
	// The socket's folder is created 0700 when absent; one that others
	// could swap the socket in is refused (server.CheckSocketDir).
	if err := server.PrepareSocketDir(filepath.Dir(*socket)); err != nil {
		if *dirCheck || !errors.Is(err, server.ErrUnsafeSocketDir) {
			return err
		}
		log.Warn("RUNTIME_SOCKET_DIR_CHECK=false: serving from a socket folder that fails the check", "error", err)
	}
	// Claim the socket before the slow model load, so that a second
	// runtime started by mistake fails at once.
	ln, err := server.ListenMode(*socket, server.SocketMode(allowed))
	if err != nil {
		return err
	}

	eng, err := ef.open(log)
	if err != nil {
		ln.Close()
		return err
	}
	mi := eng.Info()
	if *wantVariant != "" && mi.Variant != *wantVariant {
		eng.Close()
		ln.Close()
		return fmt.Errorf("MODEL_VARIANT is %s but the model %s is %s", *wantVariant, ef.model, mi.Variant)
	}
	generated := mi.Metadata[modelgen.MetaGenerated] == "true"
	if generated {
		log.Warn("!!! THIS MODEL HAS GENERATED PSEUDO-RANDOM WEIGHTS: ITS PREDICTIONS ARE MEANINGLESS. " +
			"Run `runtime fetch-model` where the model zoo is reachable to get the real ResNet50. !!!")
	}
	labels := strings.Split(strings.TrimSpace(imagenetLabels), "\n")
	labelSet := "imagenet-1k"
	if len(labels) != mi.Classes {
		log.Warn("model has no matching label set; labels are class numbers", "classes", mi.Classes)
		labels, labelSet = nil, "none"
		for i := range mi.Classes {
			labels = append(labels, strconv.Itoa(i))
		}
	}
	srv := server.New(eng, server.Config{Logger: log, Info: wire.Info{
		Model: *name, ModelSHA256: mi.SHA256, Generated: generated, Variant: mi.Variant,
		InputName: mi.InputName, OutputName: mi.OutputName,
		Channels: mi.Channels, Height: mi.Height, Width: mi.Width,
		ResizeShorter: 256, Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225},
		Classes: mi.Classes, LabelSet: labelSet, Labels: labels,
		MaxBatchSize: *maxBatch, ORTVersion: mi.ORTVersion, Threads: ef.threads,
	}, AllowedUIDs: allowed, MaxConnections: *maxConns, HandshakeTimeout: *handshakeTimeout})
	// Signals are caught from before "model loaded" is logged: whoever
	// waits for that line (a test, an operator) may stop the runtime at
	// once, and a SIGTERM then must still drain, not kill it.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	log.Info("model loaded", "model", *name, "path", ef.model, "sha256", mi.SHA256, "generated", generated, "variant", mi.Variant,
		"ort_version", mi.ORTVersion, "threads", ef.threads, "from_cache", mi.FromCache,
		"load_ms", mi.LoadTime.Milliseconds(), "rss_mb", rssMB(), "socket", *socket,
		"socket_mode", fmt.Sprintf("%04o", server.SocketMode(allowed)), "runtime_uid", os.Geteuid(), "allowed_uids", allowed)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	// The warm-up goroutine runs the model outside the executor; it stops
	// between batch sizes when warmCtx ends and closes warmDone on exit.
	warmCtx, stopWarm := context.WithCancel(context.Background())
	defer stopWarm()
	warm, warmDone := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(warmDone)
		took, err := srv.Warmup(warmCtx)
		if err == nil {
			log.Info("warm-up done; ready", "batch_sizes", fmt.Sprintf("1..%d", *maxBatch), "warmup_ms", took.Milliseconds())
			srv.SetReady(true)
		}
		warm <- err
	}()

	// shutdown stops the server, then releases the session only once
	// nothing runs in it: the executor has exited and the warm-up has
	// stopped. If either still runs when ctx ends, the process exits with
	// the session alive rather than destroy it under ONNX Runtime.
	shutdown := func(ctx context.Context) error {
		stopWarm()
		err := srv.Shutdown(ctx)
		select {
		case <-warmDone:
		case <-ctx.Done():
			err = errors.Join(err, errors.New("warm-up still running"))
		}
		if err != nil {
			log.Error("exiting without closing the ONNX Runtime session: a run is still in progress", "error", err)
			return fmt.Errorf("shutdown incomplete: %w", err)
		}
		return eng.Close()
	}

	for {
		select {
		case err := <-warm:
			if err != nil {
				shutdown(context.Background())
				return err
			}
		case err := <-serveErr:
			ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
			defer cancel()
			return errors.Join(err, shutdown(ctx))
		case sig := <-stop:
			log.Info("shutting down", "signal", sig.String())
			ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
			defer cancel()
			if err := shutdown(ctx); err != nil {
				return err
			}
			st, cs := srv.Stats(), srv.ConnStats()
			log.Info("stopped", "batches", st.Batches, "items", st.Items, "refused_peers", cs.RefusedPeers,
				"refused_busy", cs.RefusedBusy, "handshake_timeouts", cs.HandshakeTimeouts)
			return nil
		}
	}
}

// rssMB returns the process's resident memory in MB, or -1 if unknown.
func rssMB() int { return statusMB("VmRSS:") }

// peakRSSMB returns the process's peak resident memory in MB, or -1.
func peakRSSMB() int { return statusMB("VmHWM:") }

// statusMB returns a memory figure of /proc/self/status in MB, or -1.
func statusMB(key string) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb / 1024
		}
	}
	return -1
}

// probe dials the runtime's socket and succeeds only when its handshake says
// it is ready (the model is loaded and every batch size warmed up) and its
// executor is making progress: no batch has run longer than -stall-after,
// and batches do not wait while none finishes. A stopped process answers
// nothing, and the probe fails at its timeout.
func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	socket := fs.String("socket", env("RUNTIME_SOCKET", "/tmp/batchgate/runtime.sock"), "unix socket path (env RUNTIME_SOCKET)")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the handshake and the progress report")
	stallAfter := fs.Duration("stall-after", envDuration("RUNTIME_STALL_TIMEOUT", 4*time.Second),
		"fail when the executor has made no progress for this long (env RUNTIME_STALL_TIMEOUT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c, err := wire.Dial(ctx, *socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if !c.Info().Ready {
		return fmt.Errorf("runtime at %q is not ready yet (loading or warming up)", *socket)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		return fmt.Errorf("runtime at %q does not report its progress: %w", *socket, err)
	}
	if st.Stalled(*stallAfter) {
		return fmt.Errorf("runtime at %q is stalled: a batch has run %d ms, %d batches wait, the last finished %d ms ago",
			*socket, st.RunningMs, st.Queued, st.IdleMs)
	}
	return nil
}

func envBool(name string, def bool) bool {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runtime: %s=%q is not true or false\n", name, v)
		os.Exit(2)
	}
	return b
}

func envDuration(name string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		fmt.Fprintf(os.Stderr, "runtime: %s=%q is not a positive duration such as 4s\n", name, v)
		os.Exit(2)
	}
	return d
}

// modelVariant is where fetch-model gets one variant of ResNet50.
type modelVariant struct {
	spec modelfetch.Spec
	// name and generatedName are the file names of the pinned and the
	// generated model in the models folder.
	name, generatedName string
	// generate returns the generated model; library is ONNX Runtime,
	// which the int8 twin's calibration runs.
	generate func(library string) ([]byte, error)
	// tiny returns the tiny test model of the variant.
	tiny func(library string) ([]byte, error)
}

var modelVariants = map[string]modelVariant{
	engine.VariantFP32: {
		spec: modelfetch.ResNet50, name: "resnet50-v1-12.onnx", generatedName: "resnet50-v1-generated.onnx",
		generate: func(string) ([]byte, error) { b, _ := modelgen.ResNet50(modelgen.DefaultSeed); return b, nil },
		tiny:     func(string) ([]byte, error) { b, _ := modelgen.Tiny(modelgen.DefaultSeed); return b, nil },
	},
	// The int8 twin of the generated fp32 model: the same weights,
	// quantized, with activations calibrated through ONNX Runtime.
	engine.VariantInt8: {
		spec: modelfetch.ResNet50Int8, name: "resnet50-v1-12-int8.onnx", generatedName: "resnet50-v1-int8-generated.onnx",
		generate: func(lib string) ([]byte, error) {
			b, _ := modelgen.ResNet50(modelgen.DefaultSeed)
			return quantize.Twin(lib, b)
		},
		tiny: func(lib string) ([]byte, error) {
			b, _ := modelgen.Tiny(modelgen.DefaultSeed)
			return quantize.Twin(lib, b)
		},
	},
}

// variantNames lists the variants for messages.
const variantNames = "fp32 or int8"

func fetchModel(args []string) error {
	fs := flag.NewFlagSet("fetch-model", flag.ContinueOnError)
	dir := fs.String("dir", ".deps/models", "folder for models")
	variant := fs.String("variant", env("MODEL_VARIANT", engine.VariantFP32), "fp32, or int8: the model zoo's quantized ResNet50, or offline the int8 twin of the generated model (env MODEL_VARIANT)")
	library := fs.String("ort-library", env("ORT_LIBRARY", "libonnxruntime.so.1"), "ONNX Runtime shared library, to calibrate a generated int8 model (env ORT_LIBRARY)")
	generate := fs.Bool("generate-only", false, "skip the download and write the generated ResNet50-architecture model")
	tiny := fs.Bool("tiny", false, "write the tiny test model (same contract) and exit")
	fallback := fs.Bool("offline-fallback", true, "generate a ResNet50-architecture model when the download host is unreachable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mv, ok := modelVariants[*variant]
	if !ok {
		return fmt.Errorf("-variant (MODEL_VARIANT) must be %s, got %q", variantNames, *variant)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	var path string
	switch {
	case *tiny:
		b, err := mv.tiny(*library)
		if err != nil {
			return err
		}
		path = filepath.Join(*dir, map[string]string{engine.VariantFP32: "tiny.onnx", engine.VariantInt8: "tiny-int8.onnx"}[*variant])
		if err := modelfetch.WriteFile(path, b); err != nil {
			return err
		}
	case *generate:
		b, err := mv.generate(*library)
		if err != nil {
			return err
		}
		path = filepath.Join(*dir, mv.generatedName)
		if err := modelfetch.WriteFile(path, b); err != nil {
			return err
		}
	default:
		var err error
		if path, err = ensureModel(mv, *dir, *library, *fallback, log); err != nil {
			return err
		}
	}
	fmt.Println(path) // the one line on stdout: scripts read it
	return nil
}

// ensureModel returns the path of a variant's model in dir: the pinned one,
// downloaded if need be, or with fallback the generated one when the model
// host is unreachable.
func ensureModel(mv modelVariant, dir, library string, fallback bool, log *slog.Logger) (string, error) {
	cfg := modelfetch.EnsureConfig{
		Spec: mv.spec, Dir: dir, Name: mv.name, GeneratedName: mv.generatedName, Progress: os.Stderr, Logger: log,
	}
	if fallback {
		cfg.Generate = func() ([]byte, error) { return mv.generate(library) }
	}
	path, _, err := modelfetch.Ensure(context.Background(), cfg)
	return path, err
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// BenchResult is one batch size's raw timing.
type BenchResult struct {
	Runs          int
	First, Median time.Duration
	ImagesPerSec  float64
}

// BenchBatch times batches of n through the engine: the first run apart,
// then at least minRuns runs and minTime.
func BenchBatch(eng *engine.Engine, n int, minTime time.Duration, minRuns int) (BenchResult, error) {
	in := make([]float32, n*eng.Info().ImageSize())
	for i := range in {
		in[i] = float32(i%255)/255 - 0.5
	}
	start := time.Now()
	if _, err := eng.Run(in, n); err != nil {
		return BenchResult{}, err
	}
	r := BenchResult{First: time.Since(start)}
	var times []time.Duration
	begin := time.Now()
	for len(times) < minRuns || time.Since(begin) < minTime {
		t := time.Now()
		if _, err := eng.Run(in, n); err != nil {
			return BenchResult{}, err
		}
		times = append(times, time.Since(t))
	}
	slices.Sort(times)
	r.Runs, r.Median = len(times), times[len(times)/2]
	r.ImagesPerSec = float64(n) / r.Median.Seconds()
	return r, nil
}
