package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestChaosShort is `go run ./perf -chaos -short`: every fault of the chaos
// run for a few seconds, with the tiny model, under a steady load. It
// asserts, for every fault, no wrong answer, recovery (a fresh 200 and
// /readyz 200 after the lift) and no request answered later than its
// deadline + 2 s; no lost request for the graceful faults (proxy and
// runtime SIGTERM); and for the SIGSTOP stall what the issue demands:
// detected within 5 s, requests sent after that answered 503 within 1 s,
// recovery within 2 s of SIGCONT. The checks are chaosChecks', the same
// lines report.md lists; timing checks of a window in which the shared
// machine did not schedule the harness for over a second are logged as
// SKIP, not failed (correctness and lost requests are always judged). CHAOS_OUT=dir keeps the report (report.md,
// timeline.png, requests.csv) in dir/chaos-<timestamp>.
func TestChaosShort(t *testing.T) {
	os.Setenv("ORT_LIBRARY", testenv.ORTLibrary(t))
	parent := os.Getenv("CHAOS_OUT")
	if parent == "" {
		parent = t.TempDir()
	}
	dir := filepath.Join(parent, "chaos-"+time.Now().UTC().Format("20060102-150405"))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	run, err := chaos(ctx, shortChaos, dir, "go test -count=1 -run TestChaosShort ./perf/", t.Logf)
	if run == nil || len(run.faults) == 0 {
		t.Fatalf("the chaos run did not start: %v", err)
	}
	if werr := run.write(dir); werr != nil {
		t.Errorf("report: %v", werr)
	}
	t.Logf("%.0f s; report in %s\n%s", time.Since(start).Seconds(), dir, run.table())
	if err != nil {
		t.Fatalf("the chaos run stopped early: %v", err)
	}
	res := run.analyze()
	if want := 1 + shortChaos.Kills + 6; len(res) != want { // baseline, kills, the 6 others
		t.Errorf("%d fault windows, want %d", len(res), want)
	}
	for _, c := range run.chaosChecks(res) {
		if strings.HasPrefix(c, "FAIL") {
			t.Error(c)
		} else {
			t.Log(c)
		}
	}
}
