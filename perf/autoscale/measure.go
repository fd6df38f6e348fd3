//go:build autoscale_measure

package autoscale

// `go run -tags autoscale_measure ./perf -autoscale-sim -measure FILE`:
// times single batches of the model through the engine, one thread, and
// writes per run the wall time and the CPU time of the thread that ran it.
// Behind a build tag so that the perf harness itself needs no cgo.

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
	"github.com/batchgate/batchgate/runtime/engine"
)

func init() { MeasureServiceTimes = measureEngine }

// measureEngine opens the model and times -runs batches of each size,
// interleaved (1,2,3,4,1,2,...) so that load from other processes falls
// on every size alike. Output: "batch_size\twall_ms\tcpu_ms" lines.
func measureEngine(out string, args []string) error {
	fs := flag.NewFlagSet("perf -autoscale-sim -measure", flag.ContinueOnError)
	model := fs.String("model", ".deps/models/resnet50-v1-generated.onnx", "ONNX model")
	lib := fs.String("ort-library", ".deps/onnxruntime/libonnxruntime.so.1", "ONNX Runtime shared library")
	cache := fs.String("ort-cache-dir", ".deps/ort-cache", "optimized-graph cache folder")
	runs := fs.Int("runs", 100, "timed runs per batch size")
	sizes := fs.String("batch-sizes", "1,2,3,4", "batch sizes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var bs []int
	for s := range strings.SplitSeq(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad batch size %q", s)
		}
		bs = append(bs, n)
	}
	goruntime.LockOSThread() // the thread that calls ONNX Runtime runs the model (1 intra-op thread)
	defer goruntime.UnlockOSThread()
	eng, err := engine.Open(engine.Config{LibraryPath: *lib, ModelPath: *model, IntraOpThreads: 1, CacheDir: *cache,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer eng.Close()
	in := make([]float32, slices.Max(bs)*eng.Info().ImageSize())
	for i := range in {
		in[i] = float32(i%255)/255 - 0.5
	}
	for _, n := range bs {
		if _, err := eng.Run(in[:n*eng.Info().ImageSize()], n); err != nil { // warm-up, not recorded
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "# perf -autoscale-sim -measure: %s, ONNX Runtime %s, 1 thread, %s, started %s, load average %s\n",
		*model, eng.Info().ORTVersion, harness.Machine(), time.Now().UTC().Format(time.RFC3339), loadavg())
	fmt.Fprintln(f, "batch_size\twall_ms\tcpu_ms")
	var threadSum time.Duration
	p0 := processCPU()
	for range *runs {
		for _, n := range bs {
			w0, c0 := time.Now(), threadCPU()
			if _, err := eng.Run(in[:n*eng.Info().ImageSize()], n); err != nil {
				return err
			}
			c := threadCPU() - c0
			threadSum += c
			fmt.Fprintf(f, "%d\t%.2f\t%.2f\n", n, float64(time.Since(w0))/1e6, float64(c)/1e6)
		}
	}
	// If ONNX Runtime ran on other threads too, the process would use
	// more CPU than the timed thread.
	fmt.Fprintf(f, "# finished %s, load average %s; CPU of the timed thread %.1f s, of the process %.1f s\n",
		time.Now().UTC().Format(time.RFC3339), loadavg(), threadSum.Seconds(), (processCPU() - p0).Seconds())
	return f.Close()
}

// threadCPU is the calling thread's CPU time (user + system).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the whole process's CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
