// Package harness is what every perf study shares: building and starting
// the proxy and runtime processes (stack.go, proc.go), waiting for them,
// generating load (load.go) from test images (images.go), the statistics
// (stats.go), the progress bar, and where the ONNX Runtime library is.
package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Millis is d in milliseconds, to the microsecond.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Warmup is the unmeasured start of a closed-loop run: a quarter of the
// measurement, at most 2 s.
func Warmup(d time.Duration) time.Duration { return min(d/4, 2*time.Second) }

// RepoRoot is the batchgate checkout that holds the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run perf inside the batchgate repository")
		}
		dir = parent
	}
}

// Machine describes where the numbers come from.
func Machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs", cpu, runtime.NumCPU())
}

// ORTLibrary is the ONNX Runtime shared library the stacks load:
// $ORT_LIBRARY, else the one `make deps` puts under root.
func ORTLibrary(root string) string {
	if lib := os.Getenv("ORT_LIBRARY"); lib != "" {
		return lib
	}
	return filepath.Join(root, ".deps", "onnxruntime", "libonnxruntime.so.1")
}
