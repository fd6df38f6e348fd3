package main

import (
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

// study is what main does with os.Args[1:]: the study and its parser.
func study(args []string) (func([]string) (func() error, error), []string) {
	if len(args) > 0 {
		if s := studies[strings.TrimLeft(args[0], "-")]; s != nil {
			return s, args[1:]
		}
	}
	return sweepStudy, args
}

// TestDocumentedCommandLines parses, without running them, the command
// lines that README.md, docs/ and the Makefile show.
func TestDocumentedCommandLines(t *testing.T) {
	for _, line := range []string{
		"-quick", // make perf
		"",       // make perf-full
		"-target http://other-server:8000/predict",
		"-batch-sizes 1 -windows 0 -loads 0.5 -duration 4s -dedup=false",
		"-batch-sizes 1,4 -windows 0 -loads 1.2 -duration 8s -dedup=false",
		`-variants fp32,int8 -batch-sizes 1,4 -windows 0 -loads 0.5 -duration 8s -dedup=false -image-sizes=`,
		"-autoscale-sim",
		"-autoscale-sim -start-delays 5s,20s -targets 2,3,4 -seeds 10",
		"-autoscale-sim -service-scale 0.52",
		"-autoscale-sim -service-times my.tsv",
		"-autoscale-sim -candidates=false -targets 8 -values my-values.yaml",
		"-autoscale-sim -scenarios ramp -peak 2.6 -candidates=false",
		"-autoscale-sim -scenarios ramp -candidates=false -values v.yaml",
		"-adversarial",
		"-adversarial -scale 0.1",
		"-chaos",
		"-chaos -short",
		"-chaos -out /tmp/x -model tiny -load 0.6 -rate 20",
		"-preprocess",
		"-preprocess -runs 30 -extra 170",
		"-preprocess -model resnet50-v1-12.onnx",
		"-preprocess -rounds 3 -runs 9",
		"-preprocess -time-serve",
		"-latency",
		"-latency -requests 50 -warmup 0",
		"-cost",
		"-cost -variants fp32 -duration 60s -anchor=false",
		"-protocols",
		"-protocols -rounds 3 -clients 4 -duration 5s",
		"-tracing",
		"-tracing -rounds 5",
	} {
		s, args := study(strings.Fields(line))
		if run, err := s(args); err != nil || run == nil {
			t.Errorf("perf %s: %v", line, err)
		}
	}
	for _, line := range []string{"-h", "-autoscale-sim -h", "-chaos -h", "-adversarial -h", "-preprocess -h", "-tracing -h", "-latency -h", "-protocols -h", "-cost -h"} {
		s, args := study(strings.Fields(line))
		if _, err := s(args); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("perf %s: %v, want flag.ErrHelp", line, err)
		}
	}
	for _, line := range []string{"-windows 2x", "-image-sizes huge", "-autoscale-sim -lb x", "-chaos -model big", "-tracing -ratios 2",
		"-preprocess -rounds 0", "-latency -requests 0", "-protocols -clients 0", "-cost -variants fp16"} {
		s, args := study(strings.Fields(line))
		var usage usageError
		if _, err := s(args); !errors.As(err, &usage) {
			t.Errorf("perf %s: %v, want a usage error", line, err)
		}
	}
}

// TestQuick checks what -quick sets, and that -duration overrides it.
func TestQuick(t *testing.T) {
	c, err := sweepFlags([]string{"-quick"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.BatchSizes, []int{1, 4, 8}) || !slices.Equal(c.Windows, []time.Duration{0, 2 * time.Millisecond}) ||
		!slices.Equal(c.Loads, []float64{0.5, 0.95, 1.2}) || c.Duration != 4*time.Second || c.OutDir != "perf/results" ||
		!slices.Equal(c.ImageSizes, []string{"small", "medium", "12mp"}) || !c.Dedup {
		t.Errorf("-quick: %+v", c)
	}
	if c, err = sweepFlags([]string{"-quick", "-duration", "7s"}); err != nil || c.Duration != 7*time.Second {
		t.Errorf("-quick -duration 7s: %v, %v", c.Duration, err)
	}
}
