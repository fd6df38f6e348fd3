package main

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestVariants: fetch-model writes the int8 twin (of the tiny model here;
// of ResNet50 offline), serve reports each model's variant in the
// handshake, and MODEL_VARIANT (or -variant) refuses a model of the other
// variant.
func TestVariants(t *testing.T) {
	bin := buildRuntime(t)
	dir := t.TempDir()
	fetch := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"fetch-model", "-dir", dir, "-ort-library", testenv.ORTLibrary(t)}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", errors.New(stderr.String())
		}
		return strings.TrimSpace(string(out)), nil
	}
	int8Model, err := fetch("-tiny", "-variant", "int8")
	if err != nil || filepath.Base(int8Model) != "tiny-int8.onnx" {
		t.Fatalf("fetch-model -tiny -variant int8 = %q, %v", int8Model, err)
	}
	if _, err := fetch("-tiny", "-variant", "fp16"); err == nil || !strings.Contains(err.Error(), "fp32 or int8") {
		t.Errorf("fetch-model -variant fp16: %v, want a refusal naming the variants", err)
	}

	// bench -json, as bench -variants runs it for each variant: the
	// kernels ONNX Runtime chose, load time, memory, one row per size.
	out, err := exec.Command(bin, "bench", "-json", "-model", int8Model, "-ort-library", testenv.ORTLibrary(t),
		"-ort-cache-dir", filepath.Join(dir, "cache"), "-batch-sizes", "1,2", "-min-time", "0", "-min-runs", "1").Output()
	if err != nil {
		t.Fatalf("bench -json: %v", err)
	}
	var rep benchReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("bench -json printed %s: %v", out, err)
	}
	if rep.Variant != "int8" || rep.Kernels["QLinearConv"] != 1 || len(rep.Batches) != 2 || rep.Batches[1].ImagesPerSec <= 0 ||
		rep.RSSLoadedMB <= 0 || rep.PeakRSSMB < rep.RSSLoadedMB || rep.SourceSHA256 == "" {
		t.Errorf("bench -json = %+v", rep)
	}

	for _, tc := range []struct {
		name    string
		model   string
		flags   []string
		env     string
		variant string // in the handshake; "" when start-up must fail
	}{
		{"fp32 model, any variant", testenv.TinyModel(t), nil, "", "fp32"},
		{"int8 model, int8 wanted", int8Model, []string{"-variant", "int8"}, "", "int8"},
		{"fp32 model, MODEL_VARIANT=int8", testenv.TinyModel(t), nil, "int8", ""},
		{"int8 model, -variant fp32", int8Model, []string{"-variant", "fp32"}, "", ""},
		{"unknown variant", int8Model, []string{"-variant", "int4"}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MODEL_VARIANT", tc.env) // empty: any variant
			cmd, socket, out := startServe(t, bin, tc.model, append([]string{"-max-batch-size", "2"}, tc.flags...)...)
			if tc.variant == "" {
				if code := exitCode(t, cmd); code == 0 || !strings.Contains(out.String(), "MODEL_VARIANT") {
					t.Errorf("exit code %d, want a failure naming MODEL_VARIANT:\n%s", code, out.String())
				}
				return
			}
			c := waitReady(t, socket)
			defer c.Close()
			if got := c.Info().Variant; got != tc.variant {
				t.Errorf("handshake variant %q, want %q", got, tc.variant)
			}
			// The runtime logs "model loaded" before it answers the
			// handshake, but the line reaches out through a pipe that
			// os/exec copies on its own goroutine: wait for it.
			waitLog(t, out, `"variant":"`+tc.variant+`"`)
		})
	}
}
