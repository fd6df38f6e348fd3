package preprocess

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestServeTimes: each "RUNS PATH" line is answered "ms MEDIAN"; a line of
// another shape ends it with an error naming the line.
func TestServeTimes(t *testing.T) {
	img := testenv.Root(t) + "/proxy/testdata/grace_hopper.jpg"
	var out bytes.Buffer
	if err := ServeTimes(strings.NewReader("2 "+img+"\n1 "+img+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ms ") || !strings.HasPrefix(lines[1], "ms ") {
		t.Errorf("answers %q, want two \"ms MEDIAN\" lines", lines)
	}
	if err := ServeTimes(strings.NewReader("x "+img+"\n"), &out); err == nil || !strings.Contains(err.Error(), "RUNS PATH") {
		t.Errorf("a bad request: %v, want an error naming the format", err)
	}
}

// TestReportGoals: the report says met or NOT met for each of issue 29's
// goals from the ratios taken within rounds.
func TestReportGoals(t *testing.T) {
	one := spread{Med: 1, Min: 1, Max: 1}
	tim := []prepTiming{
		{Image: "small_500x375.jpg", Turbo: one, Go: one, PIL: one, PILDraft: one, VsPIL: 0.5, VsDraft: 0.9},
		{Image: "photo_4032x3024.jpg", Turbo: one, Go: one, PIL: one, PILDraft: one, VsPIL: 0.3, VsDraft: 0.85},
		{Image: "png_1600x1200.png", Turbo: one, Go: one, PIL: one, PILDraft: one, VsPIL: 0.7, VsDraft: 0.7},
		{Image: "webp_1600x1200.webp", Turbo: one, Go: one, PIL: one, PILDraft: one, VsPIL: 1.3, VsDraft: 1.3},
	}
	got := prepReport(tim, nil, Config{Rounds: 3, Runs: 5, Versions: "PIL 9.4.0"})
	for _, want := range []string{
		"small_500x375.jpg at most 0.8x PIL + torchvision: 0.50, met",
		"photo_4032x3024.jpg at most 0.8x PIL + torchvision: 0.30, met",
		"photo_4032x3024.jpg at most 0.8x PIL with draft(): 0.85, NOT met",
		"png_1600x1200.png at most 0.7x PIL + torchvision: 0.70, met",
		"webp_1600x1200.webp at most 0.6x PIL + torchvision: 1.30, NOT met",
		"PIL side: PIL 9.4.0",
		"| small_500x375.jpg | 1.00 (1.00-1.00) |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
}

// TestTimerDeadline: a timer process that answers is read; one that hangs
// ends its request with an error naming the deadline, not a stall, and
// stop kills it when closing its input does not end it.
func TestTimerDeadline(t *testing.T) {
	answers := exec.Command("/bin/sh", "-c", `while read l; do echo "ms 1.5"; done`)
	hangs := exec.Command("/bin/sh", "-c", `trap "" TERM; read l; exec sleep 600`)
	for _, tc := range []struct {
		name    string
		cmd     *exec.Cmd
		wantErr string
	}{
		{"answers", answers, ""},
		{"hangs", hangs, "did not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm, err := startTimer(tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			ms, err := tm.time("1 x.jpg", 300*time.Millisecond)
			switch {
			case tc.wantErr == "" && (err != nil || ms != 1.5):
				t.Errorf("time = %v, %v; want 1.5, nil", ms, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("time = %v, %v; want an error saying %q", ms, err, tc.wantErr)
			}
			tm.stop(200 * time.Millisecond)
			if tc.cmd.ProcessState == nil {
				t.Error("the process runs on after stop")
			}
		})
	}
}
