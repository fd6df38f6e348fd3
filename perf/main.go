// Command perf measures batchgate: it parses its flags into a study's
// Config and runs that study. The first flag picks the study; without one
// it is the batch-size and batch-window sweep (package sweep). Each study
// has its own flags (-<study> -h):
//
//	go run ./perf -quick          # the `make perf` sweep with the image-size axis, about 6 minutes
//	go run ./perf                 # the whole grid (`make perf-full`)
//	go run ./perf -target http://host:9999/predict   # any classifier
//	go run ./perf -autoscale-sim  # autoscaling ramp simulation (perf/autoscale); -autoscale-sim -h
//	go run ./perf -adversarial    # memory under hostile clients (perf/adversarial)
//	go run ./perf -chaos          # faults under load (perf/chaos); -chaos -short: a quick one
//	go run ./perf -preprocess     # preprocessing against PIL: speed and parity (perf/preprocess)
//	go run ./perf -tracing        # tracing's throughput cost against a real Jaeger (perf/tracing)
//	go run ./perf -protocols      # OIP over gRPC against HTTP: one-client p50, saturation (perf/protocols)
//	go run ./perf -latency        # where one request's time goes: timings against the client's latency (perf/latency)
//	go run ./perf -cost           # core-seconds per 1000 images, reserved and used, fp32 and int8, and the FastAPI anchor (perf/cost)
//
// What the studies share (starting stacks, load, statistics) is package
// harness; their plots use package plot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/adversarial"
	"github.com/batchgate/batchgate/perf/autoscale"
	"github.com/batchgate/batchgate/perf/chaos"
	"github.com/batchgate/batchgate/perf/cost"
	"github.com/batchgate/batchgate/perf/latency"
	"github.com/batchgate/batchgate/perf/preprocess"
	"github.com/batchgate/batchgate/perf/protocols"
	"github.com/batchgate/batchgate/perf/sweep"
	"github.com/batchgate/batchgate/perf/tracing"
)

// studies are the studies other than the sweep, by their flag. Each parses
// what follows that flag into its Config and returns the run; a parse
// error is a usageError or flag.ErrHelp.
var studies = map[string]func(args []string) (run func() error, err error){
	"autoscale-sim": autoscaleStudy,
	"adversarial":   adversarialStudy,
	"chaos":         chaosStudy,
	"cost":          costStudy,
	"latency":       latencyStudy,
	"preprocess":    preprocessStudy,
	"protocols":     protocolsStudy,
	"tracing":       tracingStudy,
}

func main() {
	name, study, args := "perf", sweepStudy, os.Args[1:]
	if len(args) > 0 {
		if s := strings.TrimLeft(args[0], "-"); studies[s] != nil {
			name, study, args = "perf -"+s, studies[s], args[1:]
		}
	}
	run, err := study(args)
	if err == nil {
		err = run()
	}
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// usageError is a bad command line (exit status 2).
type usageError struct{ error }

// parse parses args into fs; any error but flag.ErrHelp is a usageError.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func sweepStudy(args []string) (func() error, error) {
	c, err := sweepFlags(args)
	return func() error { return sweep.Run(context.Background(), c) }, err
}

func sweepFlags(args []string) (sweep.Config, error) {
	fs := flag.NewFlagSet("perf", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "the quick sweep: batch sizes 1,4,8, windows 0,2ms, loads 0.5,0.95,1.2, 4s points")
	bs := fs.String("batch-sizes", "1,2,4,8,16,32", "MAX_BATCH_SIZE values")
	ws := fs.String("windows", "0,2ms,10ms", "BATCH_WINDOW values")
	ls := fs.String("loads", "0.5,0.8,0.95,1.2", "offered loads, as fractions of the raw runtime's capacity")
	c := sweep.Config{}
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "length of each measurement")
	fs.StringVar(&c.Target, "target", "", "measure this URL (multipart \"file\" upload) instead of starting batchgate")
	fs.StringVar(&c.Model, "model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	fs.StringVar(&c.OutDir, "out", "perf/results", "parent folder of the timestamped results folder")
	fs.IntVar(&c.Images, "images", 64, "distinct test images")
	fs.BoolVar(&c.Dedup, "dedup", true, "also run the Zipf dedup scenario (cache on versus off)")
	variants := fs.String("variants", "", `model-variant axis, e.g. "fp32,int8": the sweep once per variant's model, then variants.md (perf/sweep/variants.go)`)
	sizes := fs.String("image-sizes", "small,medium,12mp", "image-size axis: small (500x375), medium (768x576), 12mp (4032x3024); empty: none")
	for name, what := range map[string]string{
		"autoscale-sim": "run the autoscaling simulation",
		"adversarial":   "run the adversarial memory soak",
		"chaos":         "apply faults under load",
		"preprocess":    "preprocessing against PIL, speed and parity,",
		"tracing":       "tracing's throughput cost against a real Jaeger,",
	} {
		fs.Bool(name, false, fmt.Sprintf("as the first flag: %s and exit (-%s -h: its flags)", what, name))
	}
	if err := parse(fs, args); err != nil {
		return c, err
	}
	if *quick {
		*bs, *ws, *ls = "1,4,8", "0,2ms", "0.5,0.95,1.2"
		if !flagSet(fs, "duration") {
			c.Duration = 4 * time.Second
		}
	}
	var err error
	if c.BatchSizes, err = list("batch-sizes", *bs, strconv.Atoi, func(n int) bool { return n >= 1 }); err != nil {
		return c, err
	}
	if c.Windows, err = list("windows", *ws, duration, func(w time.Duration) bool { return w >= 0 }); err != nil {
		return c, err
	}
	if c.Loads, err = list("loads", *ls, float, func(f float64) bool { return f > 0 }); err != nil {
		return c, err
	}
	for s := range strings.SplitSeq(*sizes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if !sweep.KnownImageSize(s) {
				return c, usagef("-image-sizes: bad value %q (small, medium or 12mp)", s)
			}
			c.ImageSizes = append(c.ImageSizes, s)
		}
	}
	if *variants != "" {
		c.Variants = strings.Split(*variants, ",")
	}
	if c.Duration <= 0 || c.Images < 1 {
		return c, usagef("-duration and -images must be positive")
	}
	return c, nil
}

func autoscaleStudy(args []string) (func() error, error) {
	if len(args) > 0 && strings.TrimLeft(args[0], "-") == "measure" {
		if autoscale.MeasureServiceTimes == nil || len(args) < 2 {
			return nil, usagef("usage: go run -tags autoscale_measure ./perf -autoscale-sim -measure FILE [-runs N ...]")
		}
		return func() error { return autoscale.MeasureServiceTimes(args[1], args[2:]) }, nil
	}
	c, err := autoscaleFlags(args)
	return func() error { return autoscale.Run(c) }, err
}

func autoscaleFlags(args []string) (autoscale.Config, error) {
	fs := flag.NewFlagSet("perf -autoscale-sim", flag.ContinueOnError)
	c := autoscale.Config{Command: "go run ./perf -autoscale-sim " + strings.Join(args, " ")}
	fs.Uint64Var(&c.Seed, "seed", 1, "first random seed: arrivals, service times and load balancing")
	fs.IntVar(&c.Seeds, "seeds", 5, "runs per row, with seeds -seed, -seed+1, ...: pooled (the plots show the first)")
	delays := fs.String("start-delays", "10s,30s,60s", "pod start delays to compare (creation to ready: image pull, model load, warm-up)")
	targets := fs.String("targets", "1,2,4,8,16", "targetQueueDepth values swept for the queue-depth policy (the chart's is 8)")
	up := fs.Duration("ramp-up", 5*time.Minute, "ramp from -low to -peak")
	hold := fs.Duration("hold", 10*time.Minute, "time at -peak")
	down := fs.Duration("ramp-down", 5*time.Minute, "ramp from -peak back to -low")
	tail := fs.Duration("tail", 10*time.Minute, "time at -low after the ramp")
	fs.Float64Var(&c.Low, "low", 0.2, "lowest load, in units of one pod's capacity")
	fs.Float64Var(&c.Peak, "peak", 4, "peak load, in units of one pod's capacity")
	fs.Float64Var(&c.ServiceScale, "service-scale", 1, "multiply every service time by this (a CPU faster or slower than the measured one)")
	fs.String("measure", "", "as the first flag: time batches through the engine into this `file` and exit (build with -tags autoscale_measure; -measure FILE -h lists its flags)")
	fs.StringVar(&c.ServiceTimes, "service-times", "", "service times to use instead of the embedded ones: a -measure `file` (its CPU times) or `runtime bench -min-runs 1 -min-time 0` output")
	fs.StringVar(&c.LB, "lb", "rr", "load balancing across ready pods: rr (round-robin), random or least (shortest queue)")
	cpuWindow := fs.Duration("cpu-window", 15*time.Second, "metrics-server resolution: CPU averaged over this window, sampled as often")
	cpuTarget := fs.Float64("cpu-target", 50, "the seed's CPU utilization target, percent")
	fs.Float64Var(&c.CPURequest, "cpu-request", 1, "CPU cores in the seed's HPA denominator (its usage: runtime + proxy)")
	fs.IntVar(&c.MaxReplicas, "max-replicas", 5, "maxReplicas (the chart's keda.maxReplicas and hpa.maxReplicas); minReplicas is 1")
	fs.StringVar(&c.ValuesPath, "values", "helm/batchgate/values.yaml", "the chart's values: its keda block is the \"chart default\" policy (trigger, targets, behavior)")
	scen := fs.String("scenarios", "ramp,step,sawtooth", "load scenarios: ramp (-low, -peak, -ramp-up, -hold, -ramp-down, -tail), step (-low to -peak within 10 s) and sawtooth (1.5x to 3x, 2-min period)")
	fs.BoolVar(&c.Candidates, "candidates", true, "also run the load-proportional candidates (the frontier in tradeoff.png)")
	fs.StringVar(&c.OutDir, "out", "perf/results", "parent folder of the autoscale-<timestamp> results folder")
	if err := parse(fs, args); err != nil {
		return c, err
	}
	c.RampUp, c.Hold, c.RampDown, c.Tail = up.Seconds(), hold.Seconds(), down.Seconds(), tail.Seconds()
	c.CPUWindow, c.CPUTarget = cpuWindow.Seconds(), *cpuTarget/100
	var err error
	if c.Scenarios, err = list("scenarios", *scen, word, func(s string) bool { return s == "ramp" || s == "step" || s == "sawtooth" }); err != nil {
		return c, err
	}
	if c.Delays, err = list("start-delays", *delays, seconds, func(d float64) bool { return d >= 0 }); err != nil {
		return c, err
	}
	if c.Targets, err = list("targets", *targets, float, func(v float64) bool { return v > 0 }); err != nil {
		return c, err
	}
	switch {
	case c.MaxReplicas < 1 || c.ServiceScale <= 0 || c.Seeds < 1:
		return c, usagef("-max-replicas, -service-scale and -seeds must be positive")
	case c.LB != "rr" && c.LB != "random" && c.LB != "least":
		return c, usagef("-lb: want rr, random or least, got %q", c.LB)
	case c.Low <= 0 || c.Peak < c.Low || c.CPUWindow <= 0 || c.CPUTarget <= 0 || c.CPURequest <= 0:
		return c, usagef("want 0 < -low <= -peak and positive -cpu-window, -cpu-target, -cpu-request")
	case c.RampUp < 0 || c.Hold < 0 || c.RampDown < 0 || c.Tail < 0 || c.RampUp+c.Hold+c.RampDown+c.Tail <= 0:
		return c, usagef("the ramp's durations must be >= 0 and not all 0")
	}
	return c, nil
}

func adversarialStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -adversarial", flag.ContinueOnError)
	c := adversarial.DefaultConfig()
	fs.StringVar(&c.OutDir, "out", c.OutDir, "parent folder of the results folder")
	fs.Float64Var(&c.Scale, "scale", c.Scale, "scale the connection counts and durations (0.1: a quick look)")
	fs.Float64Var(&c.HonestShare, "honest-share", c.HonestShare, "pace the honest client beside each attack at this share of its quiet throughput (0: as fast as answered)")
	return func() error { return adversarial.Run(context.Background(), c) }, parse(fs, args)
}

func chaosStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -chaos", flag.ContinueOnError)
	c := chaos.Config{Command: "go run ./perf -chaos " + strings.Join(args, " ")}
	fs.StringVar(&c.OutDir, "out", "perf/results", "parent folder of the results folder")
	fs.BoolVar(&c.Short, "short", false, "each fault a few seconds, tiny model (what TestChaosShort runs)")
	fs.StringVar(&c.Model, "model", "", `"resnet50" (generated weights, the default) or "tiny" (the default with -short)`)
	fs.Float64Var(&c.Rate, "rate", 0, "steady requests/s (default: -load of the measured capacity)")
	fs.Float64Var(&c.Load, "load", 0, "steady load as a fraction of the measured capacity (default 0.6)")
	run := func() error { return chaos.Run(context.Background(), c) }
	if err := parse(fs, args); err != nil {
		return run, err
	}
	if c.Model != "" && c.Model != "resnet50" && c.Model != "tiny" {
		return run, usagef(`-model must be "resnet50" or "tiny"`)
	}
	return run, nil
}

func preprocessStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -preprocess", flag.ContinueOnError)
	var c preprocess.Config
	fs.IntVar(&c.Rounds, "rounds", 7, "rounds of the speed comparison; each times every image through every pipeline once")
	fs.IntVar(&c.Runs, "runs", 5, "timed runs per image, pipeline and round (their median is the round's)")
	fs.IntVar(&c.Extra, "extra", 40, "extra crops of the 12 MP photo in the parity set")
	fs.StringVar(&c.Model, "model", "", "ONNX model for the top-k agreement (default: `runtime fetch-model`'s)")
	fs.StringVar(&c.OutDir, "out", "perf/results", "parent folder of the results folder")
	speed := fs.Bool("speed", true, "time the pipelines (false: parity only)")
	serve := fs.Bool("time-serve", false, "answer timing requests on stdin (\"RUNS PATH\" lines) with this build's median ms; what the comparison starts")
	err := parse(fs, args)
	c.NoSpeed = !*speed
	if *serve {
		return func() error { return preprocess.ServeTimes(os.Stdin, os.Stdout) }, err
	}
	if err == nil && (c.Rounds < 1 || c.Runs < 1) {
		err = usagef("-rounds and -runs must be positive")
	}
	return func() error { return preprocess.Run(context.Background(), c) }, err
}

func latencyStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -latency", flag.ContinueOnError)
	var c latency.Config
	fs.IntVar(&c.Requests, "requests", 200, "measured requests")
	fs.IntVar(&c.Warmup, "warmup", 20, "unmeasured requests first")
	fs.StringVar(&c.Model, "model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	run := func() error { return latency.Run(context.Background(), c) }
	if err := parse(fs, args); err != nil {
		return run, err
	}
	if c.Requests < 1 || c.Warmup < 0 {
		return run, usagef("-requests must be positive and -warmup at least 0")
	}
	return run, nil
}

func costStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -cost", flag.ContinueOnError)
	c := cost.DefaultConfig()
	variants := fs.String("variants", strings.Join(c.Variants, ","), "model variants, fp32 and/or int8")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "length of each measurement, after a warm-up")
	fs.IntVar(&c.Clients, "clients", c.Clients, "closed-loop clients at saturation")
	fs.StringVar(&c.Values, "values", "", "the chart's values.yaml (default: the checkout's helm/batchgate/values.yaml)")
	fs.BoolVar(&c.Anchor, "anchor", c.Anchor, "also measure the FastAPI + PyTorch anchor (needs its Debian packages)")
	fs.BoolVar(&c.Tiny, "tiny", false, "the tiny test models instead of ResNet50 (a quick check)")
	run := func() error { return cost.Run(context.Background(), c) }
	if err := parse(fs, args); err != nil {
		return run, err
	}
	c.Variants = strings.Split(*variants, ",")
	for _, v := range c.Variants {
		if v != "fp32" && v != "int8" {
			return run, usagef("-variants: want fp32 and/or int8, got %q", v)
		}
	}
	if c.Duration <= 0 || c.Clients < 1 {
		return run, usagef("-duration and -clients must be positive")
	}
	return run, nil
}

func protocolsStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -protocols", flag.ContinueOnError)
	var c protocols.Config
	fs.IntVar(&c.Rounds, "rounds", 5, "rounds; each measures both protocols once")
	fs.IntVar(&c.Requests, "requests", 40, "one-client requests per protocol and round")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "length of each saturation measurement")
	fs.IntVar(&c.Clients, "clients", 8, "closed-loop clients at saturation")
	fs.IntVar(&c.K, "k", 5, "classes asked per image")
	fs.StringVar(&c.Model, "model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	run := func() error { return protocols.Run(context.Background(), c) }
	if err := parse(fs, args); err != nil {
		return run, err
	}
	if c.Rounds < 1 || c.Requests < 1 || c.Duration <= 0 || c.Clients < 1 || c.K < 1 {
		return run, usagef("-rounds, -requests, -duration, -clients and -k must be positive")
	}
	return run, nil
}

func tracingStudy(args []string) (func() error, error) {
	fs := flag.NewFlagSet("perf -tracing", flag.ContinueOnError)
	var c tracing.Config
	fs.IntVar(&c.Rounds, "rounds", 3, "rounds; each measures every setting once")
	fs.DurationVar(&c.Duration, "duration", 6*time.Second, "length of each cache-hit measurement")
	fs.DurationVar(&c.SaturationDuration, "saturation-duration", 20*time.Second, "length of each saturation measurement (about 10 images/s: long enough to count)")
	fs.IntVar(&c.Clients, "clients", 16, "closed-loop clients for the cache-hit measurement")
	ratios := fs.String("ratios", "0.01,1", "sampling ratios to compare with tracing off")
	fs.StringVar(&c.Model, "model", "", "ONNX model (default: what `runtime fetch-model` gives)")
	run := func() error { return tracing.Run(context.Background(), c) }
	if err := parse(fs, args); err != nil {
		return run, err
	}
	if c.Rounds < 1 || c.Duration <= 0 || c.SaturationDuration <= 0 || c.Clients < 1 {
		return run, usagef("-rounds, -clients, -duration and -saturation-duration must be positive")
	}
	var err error
	c.Ratios, err = list("ratios", *ratios, float, func(r float64) bool { return r >= 0 && r <= 1 })
	return run, err
}

// list parses the comma-separated values of flag -name, each one that
// parse reads and ok accepts.
func list[T any](name, s string, parse func(string) (T, error), ok func(T) bool) ([]T, error) {
	var out []T
	for v := range strings.SplitSeq(s, ",") {
		x, err := parse(strings.TrimSpace(v))
		if err != nil || !ok(x) {
			return nil, usagef("-%s: bad value %q", name, v)
		}
		out = append(out, x)
	}
	return out, nil
}

// The parsers for list.
func float(s string) (float64, error) { return strconv.ParseFloat(s, 64) }
func word(s string) (string, error)   { return s, nil }

func duration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

func seconds(s string) (float64, error) {
	d, err := time.ParseDuration(s)
	return d.Seconds(), err
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
