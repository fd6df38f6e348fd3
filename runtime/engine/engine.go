// Package engine runs an ONNX image classifier with ONNX Runtime, through
// github.com/yalue/onnxruntime_go, on a fixed number of CPU threads.
//
// Open reads the model, checks that it has one float32 input [N,C,H,W] and
// one float32 output [N,classes], and creates a session with sequential
// execution and full graph optimization. When Config.CacheDir is set, the
// graph that ONNX Runtime optimized is saved there, keyed by the model's
// sha256, the library version and the CPU, and loaded instead of the original
// on the next start: that makes session creation faster and lighter. A cache
// entry whose checksum does not match, or that ONNX Runtime refuses, is
// removed and rebuilt.
package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/batchgate/batchgate/runtime/engine/modelmeta"
)

// Config configures an Engine.
type Config struct {
	// LibraryPath is the ONNX Runtime shared library. Empty means
	// "libonnxruntime.so.1", found by the dynamic loader.
	LibraryPath string
	// ModelPath is the .onnx file. Required.
	ModelPath string
	// IntraOpThreads is ONNX Runtime's intra-op thread count. Zero means 1.
	IntraOpThreads int
	// CacheDir holds optimized graphs. Empty disables the cache.
	CacheDir string
	// Logger receives progress and cache messages. Nil means slog.Default().
	Logger *slog.Logger
}

// Info describes the loaded model.
type Info struct {
	InputName, OutputName string
	// Channels, Height and Width are the input geometry of one image.
	Channels, Height, Width int
	// Classes is the number of scores per image.
	Classes int
	// SHA256 is the hex sha256 of the model file: the model's identity.
	SHA256 string
	// Metadata is the model's custom metadata (metadata_props).
	Metadata map[string]string
	// Variant is VariantInt8 or VariantFP32: the model's metadata
	// (modelmeta.Variant) when it says, otherwise what its graph holds
	// (quantization operators make it int8).
	Variant string
	// Ops counts the model's nodes by operator type, as in the file.
	Ops map[string]int
	// OptimizedOps counts the nodes of the graph that ONNX Runtime
	// optimized for this CPU (the fused kernels it runs, such as
	// QLinearConv); nil when the optimized-graph cache is off.
	OptimizedOps map[string]int
	// ORTVersion is the version of the loaded ONNX Runtime library.
	ORTVersion string
	// FromCache is true when the session was created from a cached
	// optimized graph.
	FromCache bool
	// LoadTime is how long Open took.
	LoadTime time.Duration
}

// ImageSize is the number of float32 values of one input image.
func (i Info) ImageSize() int { return i.Channels * i.Height * i.Width }

// Engine is a loaded model. Run is safe for concurrent use.
type Engine struct {
	info Info
	// mu is held shared by every Run and exclusively by Close, so the
	// session is never destroyed while ONNX Runtime is using it.
	mu      sync.RWMutex
	session *ort.DynamicAdvancedSession // nil once closed
}

var (
	envOnce    sync.Once
	envErr     error
	envLibrary string
)

// initEnvironment loads the shared library and creates ONNX Runtime's
// process-wide environment, once.
func initEnvironment(library string) error {
	envOnce.Do(func() {
		envLibrary = library
		ort.SetSharedLibraryPath(library)
		envErr = ort.InitializeEnvironment(ort.WithLogLevelError())
		if envErr != nil {
			envErr = fmt.Errorf("cannot load ONNX Runtime from %q: %w", library, envErr)
		}
	})
	if envErr == nil && library != envLibrary {
		return fmt.Errorf("ONNX Runtime is already loaded from %q, cannot load %q too", envLibrary, library)
	}
	return envErr
}

// Open loads the model described by cfg.
func Open(cfg Config) (*Engine, error) {
	start := time.Now()
	if cfg.LibraryPath == "" {
		cfg.LibraryPath = "libonnxruntime.so.1"
	}
	if cfg.IntraOpThreads == 0 {
		cfg.IntraOpThreads = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IntraOpThreads < 0 {
		return nil, fmt.Errorf("IntraOpThreads must be >= 1, got %d", cfg.IntraOpThreads)
	}
	if err := initEnvironment(cfg.LibraryPath); err != nil {
		return nil, err
	}
	model, err := os.ReadFile(cfg.ModelPath)
	if err != nil {
		return nil, fmt.Errorf("cannot read model: %w", err)
	}
	sum := sha256.Sum256(model)
	info, err := describe(model)
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", cfg.ModelPath, err)
	}
	info.SHA256 = hex.EncodeToString(sum[:])
	info.ORTVersion = ort.GetVersion()

	e := &Engine{info: info}
	if cfg.CacheDir == "" {
		e.session, err = newSession(model, info, cfg.IntraOpThreads, "")
	} else {
		e.session, e.info.FromCache, err = openCached(model, info, cfg, &e.info.OptimizedOps)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create ONNX Runtime session for %q: %w", cfg.ModelPath, err)
	}
	// ONNX Runtime copied the weights; give our copy back to the OS now
	// rather than at some later GC, which halves the resident size.
	model = nil
	debug.FreeOSMemory()
	e.info.LoadTime = time.Since(start)
	return e, nil
}

// describe checks the model's contract and returns its geometry.
func describe(model []byte) (Info, error) {
	io, err := readGraphIO(model)
	if err != nil {
		return Info{}, err
	}
	if len(io.inputs) != 1 || len(io.outputs) != 1 {
		return Info{}, fmt.Errorf("want 1 input and 1 output, got %d and %d", len(io.inputs), len(io.outputs))
	}
	in, out := io.inputs[0], io.outputs[0]
	const float32Type = 1
	if in.elemType != float32Type || out.elemType != float32Type {
		return Info{}, fmt.Errorf("want float32 input and output, got element types %d and %d", in.elemType, out.elemType)
	}
	if len(in.dims) != 4 || in.dims[1] <= 0 || in.dims[2] <= 0 || in.dims[3] <= 0 {
		return Info{}, fmt.Errorf("input %q: want shape [N,C,H,W] with fixed C, H and W, got %v", in.name, in.dims)
	}
	classes := int64(1)
	for _, d := range out.dims[1:] {
		classes *= d
	}
	if len(out.dims) < 2 || classes <= 0 {
		return Info{}, fmt.Errorf("output %q: want shape [N,classes], got %v", out.name, out.dims)
	}
	return Info{
		InputName: in.name, OutputName: out.name,
		Channels: int(in.dims[1]), Height: int(in.dims[2]), Width: int(in.dims[3]),
		Classes:  int(classes),
		Metadata: io.metadata,
		Variant:  variant(io.metadata, io.ops),
		Ops:      io.ops,
	}, nil
}

// The model variants batchgate knows.
const (
	VariantFP32 = "fp32"
	VariantInt8 = "int8"
)

// quantOps are the operators that only quantized models hold: the QDQ
// pair, and the QOperator-format operators (the model zoo's int8 ResNet50
// uses these).
var quantOps = []string{"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
	"QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm"}

// variant says what a model is: its metadata when it says, otherwise int8
// when its graph holds quantization operators, otherwise fp32.
func variant(metadata map[string]string, ops map[string]int) string {
	if v := metadata[modelmeta.Variant]; v != "" {
		return v
	}
	for _, op := range quantOps {
		if ops[op] > 0 {
			return VariantInt8
		}
	}
	return VariantFP32
}

// newSession creates a session from ONNX bytes. A non-empty optimizedPath
// asks ONNX Runtime to save the optimized graph there; level is then full
// optimization. Sessions created from an already optimized graph skip it.
func newSession(model []byte, info Info, threads int, optimizedPath string) (*ort.DynamicAdvancedSession, error) {
	return newSessionLevel(model, info, threads, optimizedPath, ort.GraphOptimizationLevelEnableAll)
}

func newSessionLevel(model []byte, info Info, threads int, optimizedPath string, level ort.GraphOptimizationLevel) (*ort.DynamicAdvancedSession, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	for _, set := range []func() error{
		func() error { return opts.SetIntraOpNumThreads(threads) },
		func() error { return opts.SetInterOpNumThreads(1) },
		func() error { return opts.SetExecutionMode(ort.ExecutionModeSequential) },
		func() error { return opts.SetGraphOptimizationLevel(level) },
	} {
		if err := set(); err != nil {
			return nil, err
		}
	}
	if optimizedPath != "" {
		if err := opts.SetOptimizedModelFilePath(optimizedPath); err != nil {
			return nil, err
		}
	}
	return ort.NewDynamicAdvancedSessionWithONNXData(model, []string{info.InputName}, []string{info.OutputName}, opts)
}

// cacheMeta is stored beside each cached optimized graph.
type cacheMeta struct {
	Key    string `json:"key"`
	SHA256 string `json:"sha256"`
	Size   int    `json:"size"`
}

// cacheKey identifies an optimized graph: what was optimized, by which
// library, for which CPU (full optimization may use CPU-specific layouts).
func cacheKey(modelSHA, ortVersion string) string {
	cpu := sha256.Sum256([]byte(cpuDescription()))
	return fmt.Sprintf("%s-ort%s-%s-%s", modelSHA[:16], ortVersion, goruntime.GOARCH, hex.EncodeToString(cpu[:6]))
}

// cpuDescription returns the CPU model and feature flags, or "unknown".
func cpuDescription() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	var model, flags string
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		case "flags", "Features":
			if flags == "" {
				flags = strings.TrimSpace(v)
			}
		}
	}
	return model + "|" + flags
}

// openCached creates the session from the cached optimized graph when a
// valid one exists, and otherwise from the model, saving the optimized graph.
// optimizedOps receives the optimized graph's operator counts.
func openCached(model []byte, info Info, cfg Config, optimizedOps *map[string]int) (*ort.DynamicAdvancedSession, bool, error) {
	log := cfg.Logger
	key := cacheKey(info.SHA256, info.ORTVersion)
	graphPath := filepath.Join(cfg.CacheDir, key+".onnx")
	metaPath := filepath.Join(cfg.CacheDir, key+".json")

	cached, err := loadCacheEntry(graphPath, metaPath, key)
	switch {
	case err == nil:
		s, err := newSessionLevel(cached, info, cfg.IntraOpThreads, "", ort.GraphOptimizationLevelDisableAll)
		if err == nil {
			log.Info("loaded optimized graph from cache", "path", graphPath)
			*optimizedOps, _ = graphOps(cached)
			return s, true, nil
		}
		log.Warn("cached optimized graph refused by ONNX Runtime; rebuilding it", "path", graphPath, "error", err)
	case errors.Is(err, os.ErrNotExist):
		log.Info("no cached optimized graph; building it", "path", graphPath)
	default:
		log.Warn("cached optimized graph is stale or corrupt; rebuilding it", "path", graphPath, "error", err)
	}
	os.Remove(graphPath)
	os.Remove(metaPath)

	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		log.Warn("cannot create optimized-graph cache; running without it", "dir", cfg.CacheDir, "error", err)
		s, err := newSession(model, info, cfg.IntraOpThreads, "")
		return s, false, err
	}
	tmp := fmt.Sprintf("%s.tmp-%d", graphPath, os.Getpid())
	defer os.Remove(tmp)
	s, err := newSession(model, info, cfg.IntraOpThreads, tmp)
	if err != nil {
		return nil, false, err
	}
	graph, err := storeCacheEntry(tmp, graphPath, metaPath, key)
	if err != nil {
		log.Warn("cannot save optimized graph; next start will optimize again", "error", err)
	} else {
		*optimizedOps, _ = graphOps(graph)
	}
	return s, false, nil
}

// loadCacheEntry returns the cached graph if its metadata matches key and its
// checksum matches the metadata.
func loadCacheEntry(graphPath, metaPath, key string) ([]byte, error) {
	metaBytes, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, err
	}
	var meta cacheMeta
	if err := json.Unmarshal(metaBytes, &meta); err != nil {
		return nil, fmt.Errorf("cannot parse %q: %w", metaPath, err)
	}
	if meta.Key != key {
		return nil, fmt.Errorf("cache entry is for %q, want %q", meta.Key, key)
	}
	graph, err := os.ReadFile(graphPath)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(graph)
	if len(graph) != meta.Size || hex.EncodeToString(sum[:]) != meta.SHA256 {
		return nil, fmt.Errorf("checksum mismatch: %d bytes with sha256 %x, want %d bytes with %s", len(graph), sum, meta.Size, meta.SHA256)
	}
	return graph, nil
}

// storeCacheEntry moves the freshly written graph tmp into place and then
// writes its metadata; a reader only trusts a graph its metadata vouches for.
// It returns the graph.
func storeCacheEntry(tmp, graphPath, metaPath, key string) ([]byte, error) {
	graph, err := os.ReadFile(tmp)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(graph, []byte{0x08}) { // ModelProto starts with ir_version
		return nil, fmt.Errorf("ONNX Runtime wrote an unexpected file to %q", tmp)
	}
	sum := sha256.Sum256(graph)
	meta, err := json.Marshal(cacheMeta{Key: key, SHA256: hex.EncodeToString(sum[:]), Size: len(graph)})
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, graphPath); err != nil {
		return nil, err
	}
	metaTmp := metaPath + ".tmp"
	if err := os.WriteFile(metaTmp, meta, 0o644); err != nil {
		return nil, err
	}
	return graph, os.Rename(metaTmp, metaPath)
}

// Info returns the model's description.
func (e *Engine) Info() Info { return e.info }

// Run classifies n images. input holds n*ImageSize() float32 values in NCHW
// order; the result holds n*Classes scores.
func (e *Engine) Run(input []float32, n int) ([]float32, error) {
	if n <= 0 || len(input) != n*e.info.ImageSize() {
		return nil, fmt.Errorf("BUG: Run got %d values for %d images of %d", len(input), n, e.info.ImageSize())
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.session == nil {
		return nil, ErrClosed
	}
	in, err := ort.NewTensor(ort.NewShape(int64(n), int64(e.info.Channels), int64(e.info.Height), int64(e.info.Width)), input)
	if err != nil {
		return nil, fmt.Errorf("cannot create input tensor: %w", err)
	}
	defer in.Destroy()
	out, err := ort.NewEmptyTensor[float32](ort.NewShape(int64(n), int64(e.info.Classes)))
	if err != nil {
		return nil, fmt.Errorf("cannot create output tensor: %w", err)
	}
	defer out.Destroy()
	if err := e.session.Run([]ort.Value{in}, []ort.Value{out}); err != nil {
		return nil, fmt.Errorf("cannot run batch of %d: %w", n, err)
	}
	return append([]float32(nil), out.GetData()...), nil
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("engine closed")

// Close waits for the Runs in progress, then releases the session. A Run
// that never returns (ONNX Runtime hung) blocks it: a caller that must exit
// anyway should exit without calling Close.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.session == nil {
		return nil
	}
	err := e.session.Destroy()
	e.session = nil
	return err
}
