//go:build cgo && !nolibwebp

package libwebp

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/image/webp"
)

// TestMemoryBytes: what libwebp allocates in C stays within MemoryBytes,
// at full size and scaled, up to the widest WebP there is. Each decode
// runs in a process of its own (TestMemoryChild) with glibc's malloc trace
// (libc_malloc_debug.so, part of Debian's libc6), and the most bytes live
// at once are summed from the trace, each allocation rounded up to
// glibc's chunk size.
func TestMemoryBytes(t *testing.T) {
	skipUnavailable(t)
	const debug = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
	if _, err := os.Stat(debug); err != nil {
		t.Skipf("no glibc malloc trace here (%v)", err)
	}
	for _, name := range []string{"testdata/tiny_24x24.webp", "testdata/row_1000x40.webp", "../testdata/lossy.webp", "testdata/wide_16383x32.webp"} {
		cfg, err := webp.DecodeConfig(bytes.NewReader(mustRead(t, name)))
		if err != nil {
			t.Fatal(err)
		}
		w, h := cfg.Width, cfg.Height
		for _, ow := range []int{w, max(w/4, 1)} {
			oh := max(h*ow/w, 1)
			trace := filepath.Join(t.TempDir(), "trace")
			cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "LD_PRELOAD="+debug, "MALLOC_TRACE="+trace,
				fmt.Sprintf("LIBWEBP_MEASURE=%s,%d,%d,%d,%d", name, w, h, ow, oh))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("decoding %s to %dx%d: %v\n%s", name, ow, oh, err, out)
			}
			got, n, err := peakLive(trace)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Fatalf("decoding %s to %dx%d: the trace holds no allocation", name, ow, oh)
			}
			est := MemoryBytes(w, ow)
			t.Logf("%s %dx%d to %dx%d: %d allocations, at most %d bytes at once; MemoryBytes %d", name, w, h, ow, oh, n, got, est)
			if got > est {
				t.Errorf("%s %dx%d to %dx%d: libwebp held %d bytes in C at once, MemoryBytes says %d", name, w, h, ow, oh, got, est)
			}
		}
	}
}

// peakLive reads a glibc malloc trace ("+ ADDR SIZE", "- ADDR", and for
// realloc "< ADDR" then "> ADDR SIZE") and returns the most bytes live at
// once, each allocation as glibc's chunk (size plus an 8-byte header,
// rounded up to 16, at least 32), and the number of allocations.
func peakLive(path string) (peak int64, allocs int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	live := map[string]int64{}
	var cur int64
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		// "@ CALLER + ADDR SIZE": the op is the field after the caller.
		for len(f) > 0 && (f[0] == "@" || strings.HasPrefix(f[0], "[") || strings.Contains(f[0], ":[")) {
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "+", ">":
			if len(f) < 3 {
				return 0, 0, fmt.Errorf("trace line %q: no size", l)
			}
			size, err := strconv.ParseInt(strings.TrimPrefix(f[2], "0x"), 16, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("trace line %q: %v", l, err)
			}
			chunk := max((size+8+15)&^15, 32)
			live[f[1]] = chunk
			cur += chunk
			allocs++
			peak = max(peak, cur)
		case "-", "<":
			cur -= live[f[1]]
			delete(live, f[1])
		}
	}
	return peak, allocs, nil
}

// TestMemoryChild is TestMemoryBytes's decode, in a process of its own:
// LIBWEBP_MEASURE=FILE,W,H,OUTW,OUTH. Skipped otherwise.
func TestMemoryChild(t *testing.T) {
	spec := os.Getenv("LIBWEBP_MEASURE")
	if spec == "" {
		t.Skip("run by TestMemoryBytes")
	}
	f := strings.Split(spec, ",")
	if len(f) != 5 {
		t.Fatalf("LIBWEBP_MEASURE=%q: want FILE,W,H,OUTW,OUTH", spec)
	}
	var v [4]int
	for i := range v {
		n, err := strconv.Atoi(f[i+1])
		if err != nil {
			t.Fatal(err)
		}
		v[i] = n
	}
	frame := vp8Chunk(t, f[0])
	if err := traceC(frame, v[0], v[1], v[2], v[3], make([]byte, 3*v[2]*v[3])); err != nil {
		t.Fatal(err)
	}
}
