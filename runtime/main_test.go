package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/wire"
)

// buildRuntime compiles this command once per test binary.
func buildRuntime(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "runtime")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitReady dials until the runtime's handshake says ready.
func waitReady(t *testing.T, socket string) *wire.Client {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := wire.Dial(ctx, socket)
		cancel()
		if err == nil {
			if c.Info().Ready {
				return c
			}
			c.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("runtime not ready after 60 s")
	return nil
}

func TestServeAndSIGTERM(t *testing.T) {
	bin := buildRuntime(t)
	dir := t.TempDir()
	socket := filepath.Join(dir, "rt.sock")
	cmd := exec.Command(bin, "serve", "-socket", socket, "-model", testenv.TinyModel(t),
		"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", filepath.Join(dir, "cache"), "-max-batch-size", "4")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	c := waitReady(t, socket)
	if out, err := exec.Command(bin, "probe", "-socket", socket).CombinedOutput(); err != nil {
		t.Errorf("probe of a ready runtime: %v %s", err, out)
	}
	if err := exec.Command(bin, "probe", "-socket", filepath.Join(dir, "none.sock")).Run(); err == nil {
		t.Error("probe of a missing socket succeeded")
	}
	info := c.Info()
	if !info.Generated || info.Model != "resnet50" || len(info.Labels) != 1000 || info.Labels[281] != "tabby" ||
		info.MaxBatchSize != 4 || info.Threads != 1 || info.ResizeShorter != 256 {
		t.Errorf("handshake = generated %v, model %q, %d labels, max batch %d, threads %d, resize %d",
			info.Generated, info.Model, len(info.Labels), info.MaxBatchSize, info.Threads, info.ResizeShorter)
	}
	if _, err := c.Run(context.Background(), 2, make([]float32, 2*info.ImageSize())); err != nil {
		t.Fatal(err)
	}

	// A second runtime on the same socket must refuse to start.
	second := exec.Command(bin, "serve", "-socket", socket, "-model", testenv.TinyModel(t), "-ort-library", testenv.ORTLibrary(t))
	if out, err := second.CombinedOutput(); err == nil || !strings.Contains(string(out), "another runtime") {
		t.Errorf("second runtime: %v, %s; want a refusal", err, out)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want 0", err)
	}
	if _, err := os.Stat(socket); err == nil {
		t.Error("socket file left behind after SIGTERM")
	}
	for _, want := range []string{`"msg":"model loaded"`, `"msg":"warm-up done; ready"`, `PREDICTIONS ARE MEANINGLESS`, `"msg":"stopped","batches":1,"items":2`} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, stdout.String())
		}
	}
}
