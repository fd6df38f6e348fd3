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

// startServe starts `runtime serve` with extra flags on a fresh socket and
// returns the command, its socket and its stdout (the JSON logs).
func startServe(t *testing.T, bin, model string, extra ...string) (*exec.Cmd, string, *testenv.SyncBuffer) {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "rt.sock")
	args := append([]string{"serve", "-socket", socket, "-model", model, "-ort-library", testenv.ORTLibrary(t),
		"-ort-cache-dir", "off"}, extra...)
	cmd := exec.Command(bin, args...)
	out := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, socket, out
}

// waitLog waits (at most 60 s) for a log line holding want.
func waitLog(t *testing.T, out *testenv.SyncBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if strings.Contains(out.String(), want) {
			return
		}
	}
	t.Fatalf("no %s in the logs:\n%s", want, out.String())
}

// exitCode waits for cmd (at most 60 s) and returns its exit code, or -1 if
// a signal killed it.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("runtime did not exit within 60 s")
	}
	return cmd.ProcessState.ExitCode()
}

// buildRaceRuntime compiles this command with the race detector, so that a
// session destroyed under a running batch shows up.
func buildRaceRuntime(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "runtime")
	if out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -race: %v\n%s", err, out)
	}
	return bin
}

// TestSIGTERMDuringWarmup: the warm-up stops between batch sizes, the
// session is released only after it, and the process exits 0.
func TestSIGTERMDuringWarmup(t *testing.T) {
	bin := buildRaceRuntime(t)
	cmd, _, out := startServe(t, bin, testenv.ResNet50Model(t), "-max-batch-size", "8")
	waitLog(t, out, `"msg":"model loaded"`)
	cmd.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, cmd); code != 0 {
		t.Fatalf("exit code %d after SIGTERM during warm-up, want 0:\n%s", code, out.String())
	}
	if strings.Contains(out.String(), "warm-up done") {
		t.Log("warm-up finished before SIGTERM arrived: the test did not hit the race")
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) || strings.Contains(out.String(), "DATA RACE") {
		t.Errorf("logs:\n%s", out.String())
	}
}

// TestSIGTERMWithBatchRunning: when the shutdown timeout expires with a
// batch in ONNX Runtime, the process exits (status 1, saying why) without
// destroying the session under it.
func TestSIGTERMWithBatchRunning(t *testing.T) {
	bin := buildRaceRuntime(t)
	cmd, socket, out := startServe(t, bin, testenv.ResNet50Model(t), "-max-batch-size", "8", "-shutdown-timeout", "1ms")
	c := waitReady(t, socket)
	defer c.Close()
	info := c.Info()
	go c.Run(context.Background(), 8, make([]float32, 8*info.ImageSize()))
	// The batch of 8 takes about 0.4 s on ResNet50: signal once it runs.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.Stats(ctx)
		cancel()
		if err == nil && st.RunningMs > 0 {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	code := exitCode(t, cmd)
	if code != 1 || !strings.Contains(out.String(), "exiting without closing the ONNX Runtime session") {
		t.Errorf("exit code %d, want 1 with the reason logged:\n%s", code, out.String())
	}
	if strings.Contains(out.String(), "DATA RACE") || strings.Contains(out.String(), "SIGSEGV") {
		t.Errorf("crash:\n%s", out.String())
	}
}

// TestProbeStopped: a stopped runtime (SIGSTOP) answers no probe.
func TestProbeStopped(t *testing.T) {
	bin := buildRuntime(t)
	cmd, socket, _ := startServe(t, bin, testenv.TinyModel(t), "-max-batch-size", "2")
	waitReady(t, socket).Close()
	if out, err := exec.Command(bin, "probe", "-socket", socket).CombinedOutput(); err != nil {
		t.Fatalf("probe of a running runtime: %v %s", err, out)
	}
	cmd.Process.Signal(syscall.SIGSTOP)
	defer cmd.Process.Signal(syscall.SIGCONT)
	if out, err := exec.Command(bin, "probe", "-socket", socket, "-timeout", "500ms").CombinedOutput(); err == nil {
		t.Errorf("probe of a stopped runtime succeeded: %s", out)
	}
	cmd.Process.Signal(syscall.SIGCONT)
	if out, err := exec.Command(bin, "probe", "-socket", socket).CombinedOutput(); err != nil {
		t.Errorf("probe after SIGCONT: %v %s", err, out)
	}
}
