// Package preprocess is `go run ./perf -preprocess`: batchgate's
// preprocessing against PIL + torchvision on the same files, on the same
// machine, in one run (issue "native-speed preprocessing"). Two parts:
//
//   - speed: the time of the whole pipeline (decode, resize, crop,
//     ToTensor, Normalize) per image, for this build (libjpeg-turbo,
//     libdeflate and libwebp), for Go's decoders (the same code built with -tags
//     nojpegturbo,nolibdeflate,nolibwebp), and for
//     PIL without and with draft(). Each pipeline runs in a process of its
//     own on one thread (GOMAXPROCS=1; PIL and numpy are single-threaded
//     here), started once; the parent asks them in turn, image by image,
//     round after round, so that a busy spell of the machine hits every
//     pipeline alike. Each round gives the median of Runs runs; the report
//     gives the median over the rounds, their range, and the ratios taken
//     within each round;
//   - parity: the normalized tensors against PIL's, on the exact path
//     (full-size decode) and the served path (DCT-scaled for large JPEGs),
//     and the top-1/top-5 agreement of a ResNet50 on both pipelines'
//     tensors over a varied image set.
//
// The images are made by scripts/pil_reference.py make-images from the
// committed photo (with noise, so their entropy is a real photo's); PIL
// runs as Debian's python3-pil. Nothing here is a timed test: the numbers
// are a report.
package preprocess

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/topk"
	"github.com/batchgate/batchgate/runtime/engine"
)

// imagenetParams is the zoo ResNet50's preprocessing, as the runtime's
// handshake gives it.
var imagenetParams = imageprep.Params{ResizeShorter: 256, Height: 224, Width: 224,
	Mean: [3]float32{0.485, 0.456, 0.406}, Std: [3]float32{0.229, 0.224, 0.225}}

// timedImages are the images of the speed table: the goals' three sizes,
// then other kinds.
var timedImages = []string{"small_500x375.jpg", "medium_768x576.jpg", "photo_4032x3024.jpg",
	"png_1600x1200.png", "webp_1600x1200.webp", "progressive_1600x1200.jpg", "gray_1200x900.jpg", "cmyk_1000x750.jpg"}

// Config is one `go run ./perf -preprocess` run.
type Config struct {
	Rounds int    // rounds of the speed comparison; each times every image and pipeline once
	Runs   int    // timed runs per image, pipeline and round (their median is the round's)
	Extra  int    // extra crops of the 12 MP photo in the parity set
	Model  string // ONNX model for the agreement; "" = the default model
	OutDir string // parent of the preprocess-<timestamp> folder
	// Versions names the PIL side's libraries, for the report (Run
	// fills it from pil_reference.py versions).
	Versions string
	NoSpeed  bool // parity only (the short test)
}

// prepTiming is one image's times, in ms, over the rounds.
type prepTiming struct {
	Image                    string
	Turbo, Go, PIL, PILDraft spread
	// VsPIL and VsDraft are the medians over the rounds of batchgate's
	// time over PIL's and over PIL with draft()'s in the same round.
	VsPIL, VsDraft float64
}

// spread is a median over rounds and the range.
type spread struct{ Med, Min, Max float64 }

func spreadOf(xs []float64) spread {
	return spread{Med: median(xs), Min: slices.Min(xs), Max: slices.Max(xs)}
}

func median(xs []float64) float64 { return harness.QuantilesOf(slices.Clone(xs), []float64{0.5})[0] }

// prepParity is one image's tensor and prediction comparison.
type prepParity struct {
	Image                       string
	Width, Height, Denom        int
	ExactMean, ExactMax         float64 // our exact path vs PIL without draft
	ServedMean, ServedMax       float64 // our served path vs PIL with draft (what it implements)
	DeviationMean, DeviationMax float64 // our served path vs PIL without draft: the cost of DCT scaling
	Top1Exact, Top1Served       bool    // same top-1 as on PIL's tensor (without draft)
	Top5Exact, Top5Served       int     // classes shared with PIL's top 5
	// Gap is PIL's top-1 score minus its top-2; Shift the largest change
	// of any class's score between PIL's tensor and the served one (a
	// top-1 can only move when Gap < 2*Shift).
	Gap, Shift float64
}

// ServeTimes answers timing requests, one per line of in ("RUNS PATH"),
// with "ms MEDIAN" on out: the median ms of Inspect + Tensor on PATH over
// RUNS runs. It is `perf -preprocess -time-serve`, which prepSpeed starts
// for this build and for the one with Go's decoder.
func ServeTimes(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		runs, path, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.Atoi(runs)
		if !ok || err != nil || n < 1 {
			return fmt.Errorf("bad request %q: want RUNS PATH", sc.Text())
		}
		ms, err := timeTensor(path, n)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(out, "ms %.3f\n", ms); err != nil {
			return err
		}
	}
	return sc.Err()
}

// Run makes the images, times the pipelines (unless NoSpeed) and checks
// parity against PIL, writes report.md to OutDir/preprocess-<timestamp>
// and prints it.
func Run(ctx context.Context, c Config) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	dir := filepath.Join(c.OutDir, "preprocess-"+time.Now().UTC().Format("20060102-150405"))
	if out, err := exec.CommandContext(ctx, "/usr/bin/python3", filepath.Join(root, "scripts/pil_reference.py"), "versions").Output(); err == nil {
		c.Versions = strings.TrimSpace(string(out))
	}
	tim, par, err := runPreprocess(ctx, root, dir, c, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		return err
	}
	md := prepReport(tim, par, c)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	fmt.Fprintf(os.Stderr, "perf: results in %s\n", dir)
	return nil
}

// runPreprocess makes the images in dir/images, then measures.
func runPreprocess(ctx context.Context, root, dir string, c Config, logf func(string, ...any)) ([]prepTiming, []prepParity, error) {
	imgDir, tensDir := filepath.Join(dir, "images"), filepath.Join(dir, "pil-tensors")
	for _, d := range []string{imgDir, tensDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	defer os.RemoveAll(imgDir) // tens of MB; made again from the seed
	defer os.RemoveAll(tensDir)
	script := filepath.Join(root, "scripts/pil_reference.py")
	logf("making the image set (PIL, %d extra crops)", c.Extra)
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", script, "make-images", imgDir, "1")
	cmd.Env = append(os.Environ(), "PARITY_EXTRA="+strconv.Itoa(c.Extra))
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("cannot make the images (needs Debian's python3-pil and python3-numpy; `make test` installs them): %w", exitErr(err))
	}
	files := strings.Fields(string(out))

	var tim []prepTiming
	if !c.NoSpeed {
		if tim, err = prepSpeed(ctx, root, imgDir, script, c, logf); err != nil {
			return nil, nil, err
		}
	}
	logf("parity: PIL's tensors for %d images", len(files))
	if out, err := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{script, "tensors", tensDir}, files...)...).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("PIL tensors: %w\n%s", err, out)
	}
	par, err := prepAgreement(ctx, root, files, tensDir, c, logf)
	return tim, par, err
}

func exitErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}

// timer is a process that times one pipeline on request (ServeTimes, or
// pil_reference.py serve): started once, asked for one image at a time.
// Every answer has a deadline, and stop kills a process that does not
// exit: a hung pipeline ends the run with an error, not a stall.
type timer struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	outPipe *os.File // for its read deadline
	out     *bufio.Scanner
	done    chan struct{} // closed when cmd has exited
}

func startTimer(cmd *exec.Cmd) (*timer, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	f, ok := out.(*os.File)
	if !ok {
		return nil, fmt.Errorf("%s: its output is not a pipe that takes a deadline", cmd.Path)
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &timer{cmd: cmd, in: in, outPipe: f, out: bufio.NewScanner(out), done: make(chan struct{})}
	go func() { cmd.Wait(); close(t.done) }()
	return t, nil
}

// time sends one request line and returns the median ms it answers, or an
// error when no answer comes within.
func (t *timer) time(request string, within time.Duration) (float64, error) {
	if _, err := io.WriteString(t.in, request+"\n"); err != nil {
		return 0, fmt.Errorf("%s: %w", t.cmd.Path, err)
	}
	t.outPipe.SetReadDeadline(time.Now().Add(within))
	if !t.out.Scan() {
		if errors.Is(t.out.Err(), os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("%s did not answer %q within %v", t.cmd.Path, request, within)
		}
		return 0, fmt.Errorf("%s stopped answering (its errors are above)", t.cmd.Path)
	}
	v, ok := strings.CutPrefix(t.out.Text(), "ms ")
	ms, err := strconv.ParseFloat(v, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("%s answered %q", t.cmd.Path, t.out.Text())
	}
	return ms, nil
}

// stop ends the process: its input closed, it exits; killed if it has not
// within grace.
func (t *timer) stop(grace time.Duration) {
	t.in.Close()
	select {
	case <-t.done:
	case <-time.After(grace):
		t.cmd.Process.Kill()
		<-t.done
	}
}

// answerWithin is how long one timing request may take: runs decodes of a
// 12 MP photo take well under a second each here.
func answerWithin(runs int) time.Duration { return 30*time.Second + time.Duration(runs)*10*time.Second }

// prepSpeed times the pipelines on the timed images, interleaved: in each
// round, every image in turn through every pipeline in turn (the order
// rotating), never two at a time.
func prepSpeed(ctx context.Context, root, imgDir, script string, c Config, logf func(string, ...any)) ([]prepTiming, error) {
	logf("speed: building perf with -tags nojpegturbo,nolibdeflate,nolibwebp for Go's decoders")
	bin := filepath.Join(filepath.Dir(imgDir), "perf-nojpegturbo")
	if out, err := exec.CommandContext(ctx, "go", "build", "-tags", "nojpegturbo,nolibdeflate,nolibwebp", "-o", bin, filepath.Join(root, "perf")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build -tags nojpegturbo,nolibdeflate,nolibwebp: %w\n%s", err, out)
	}
	defer os.Remove(bin)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	oneThread := append(os.Environ(), "GOMAXPROCS=1", "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
	goReq := func(runs int, path string) string { return fmt.Sprintf("%d %s", runs, path) }
	var timers []*timer
	defer func() {
		for _, t := range timers {
			t.stop(10 * time.Second)
		}
	}()
	start := func(cmd *exec.Cmd) (*timer, error) {
		cmd.Env = oneThread
		t, err := startTimer(cmd)
		if err == nil {
			timers = append(timers, t)
		}
		return t, err
	}
	turbo, err1 := start(exec.CommandContext(ctx, self, "-preprocess", "-time-serve"))
	goDec, err2 := start(exec.CommandContext(ctx, bin, "-preprocess", "-time-serve"))
	pil, err3 := start(exec.CommandContext(ctx, "/usr/bin/python3", script, "serve"))
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	pilReq := func(draft string) func(int, string) string {
		return func(runs int, path string) string { return fmt.Sprintf("%d %s %s", runs, draft, path) }
	}
	type pipe struct {
		t   *timer
		req func(int, string) string
	}
	pipes := []pipe{{turbo, goReq}, {goDec, goReq}, {pil, pilReq("0")}, {pil, pilReq("1")}}
	// times[i][k] are image i's round medians through pipes[k].
	times := make([][4][]float64, len(timedImages))
	for r := range c.Rounds {
		for i, name := range timedImages {
			for j := range pipes {
				k := (i + j + r) % len(pipes)
				ms, err := pipes[k].t.time(pipes[k].req(c.Runs, filepath.Join(imgDir, name)), answerWithin(c.Runs))
				if err != nil {
					return nil, err
				}
				times[i][k] = append(times[i][k], ms)
			}
		}
		logf("speed: round %d of %d", r+1, c.Rounds)
	}
	res := make([]prepTiming, len(timedImages))
	for i, name := range timedImages {
		t := times[i]
		vsPIL, vsDraft := make([]float64, c.Rounds), make([]float64, c.Rounds)
		for r := range c.Rounds {
			vsPIL[r], vsDraft[r] = t[0][r]/t[2][r], t[0][r]/t[3][r]
		}
		res[i] = prepTiming{Image: name, Turbo: spreadOf(t[0]), Go: spreadOf(t[1]), PIL: spreadOf(t[2]), PILDraft: spreadOf(t[3]),
			VsPIL: median(vsPIL), VsDraft: median(vsDraft)}
	}
	return res, nil
}

// timeTensor is the median ms of Inspect + Tensor on file over runs runs,
// after two unmeasured ones.
func timeTensor(file string, runs int) (float64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	dst := make([]float32, 3*224*224)
	var ts []float64
	for i := range runs + 2 {
		start := time.Now()
		h, err := imageprep.Inspect(data, imageprep.Limits{})
		if err == nil {
			err = imageprep.Tensor(data, h, imagenetParams, dst)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", file, err)
		}
		if i >= 2 {
			ts = append(ts, float64(time.Since(start).Microseconds())/1000)
		}
	}
	slices.Sort(ts)
	return ts[len(ts)/2], nil
}

// prepAgreement compares tensors and predictions on every image.
func prepAgreement(ctx context.Context, root string, files []string, tensDir string, c Config, logf func(string, ...any)) ([]prepParity, error) {
	model := c.Model
	if model == "" {
		out, err := exec.CommandContext(ctx, "go", "run", filepath.Join(root, "runtime"), "fetch-model", "-dir", filepath.Join(root, ".deps/models")).Output()
		if err != nil {
			return nil, fmt.Errorf("cannot get the model: %w", exitErr(err))
		}
		model = strings.TrimSpace(string(out))
	}
	lib := harness.ORTLibrary(root)
	eng, err := engine.Open(engine.Config{LibraryPath: lib, ModelPath: model, CacheDir: filepath.Join(root, ".deps/ort-cache")})
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	logf("parity: %d images through %s", len(files), filepath.Base(model))
	const size = 3 * 224 * 224
	var res []prepParity
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		h, err := imageprep.Inspect(data, imageprep.Limits{})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		name := filepath.Base(f)
		pilExact, err1 := readF32(filepath.Join(tensDir, name+".exact.f32"), size)
		pilDraft, err2 := readF32(filepath.Join(tensDir, name+".draft.f32"), size)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		exact, served := make([]float32, size), make([]float32, size)
		denom := imageprep.ScaleDenom(h, imagenetParams)
		if err := errors.Join(imageprep.TensorAt(data, h, imagenetParams, 1, exact),
			imageprep.TensorAt(data, h, imagenetParams, denom, served)); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		p := prepParity{Image: name, Width: h.Width, Height: h.Height, Denom: denom}
		p.ExactMean, p.ExactMax = tensorDiff(exact, pilExact)
		p.ServedMean, p.ServedMax = tensorDiff(served, pilDraft)
		p.DeviationMean, p.DeviationMax = tensorDiff(served, pilExact)
		in := slices.Concat(pilExact, exact, served)
		scores, err := eng.Run(in, 3)
		if err != nil {
			return nil, err
		}
		k := len(scores) / 3
		ref := topk.Indices(scores[:k], 5)
		ex, sv := topk.Indices(scores[k:2*k], 5), topk.Indices(scores[2*k:], 5)
		p.Top1Exact, p.Top1Served = ex[0] == ref[0], sv[0] == ref[0]
		p.Top5Exact, p.Top5Served = shared(ex, ref), shared(sv, ref)
		p.Gap = float64(scores[ref[0]] - scores[ref[1]])
		for i := range k {
			p.Shift = max(p.Shift, math.Abs(float64(scores[2*k+i]-scores[i])))
		}
		res = append(res, p)
	}
	return res, nil
}

func readF32(path string, n int) ([]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) != 4*n {
		return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(b), 4*n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

func tensorDiff(a, b []float32) (mean, worst float64) {
	var sum float64
	for i := range a {
		d := math.Abs(float64(a[i] - b[i]))
		sum += d
		worst = max(worst, d)
	}
	return sum / float64(len(a)), worst
}

func shared(a, b []int) int {
	n := 0
	for _, x := range a {
		if slices.Contains(b, x) {
			n++
		}
	}
	return n
}

// prepSummary aggregates the parity over the set.
type prepSummary struct {
	Images, Scaled         int
	ExactMaxMean, ExactMax float64 // worst per-image mean, and worst value, exact path vs PIL
	ServedMax              float64 // served path vs PIL with draft
	DevMean, DevMax        float64 // served vs PIL without draft, over the scaled images
	Top1Exact, Top1Served  int     // images whose top-1 matches PIL's
	Top5Exact, Top5Served  float64 // mean shared classes in the top 5
	Moved                  []string
	MedianGap              float64 // over all images
}

func summarizeParity(par []prepParity) prepSummary {
	s := prepSummary{Images: len(par)}
	var devSum float64
	var gaps []float64
	for _, p := range par {
		s.ExactMaxMean, s.ExactMax = max(s.ExactMaxMean, p.ExactMean), max(s.ExactMax, p.ExactMax)
		s.ServedMax = max(s.ServedMax, p.ServedMax)
		if p.Denom > 1 {
			s.Scaled++
			devSum += p.DeviationMean
			s.DevMax = max(s.DevMax, p.DeviationMax)
		}
		if p.Top1Exact {
			s.Top1Exact++
		}
		if p.Top1Served {
			s.Top1Served++
		}
		gaps = append(gaps, p.Gap)
		s.Top5Exact += float64(p.Top5Exact) / float64(len(par))
		s.Top5Served += float64(p.Top5Served) / float64(len(par))
	}
	if s.Scaled > 0 {
		s.DevMean = devSum / float64(s.Scaled)
	}
	if len(gaps) > 0 {
		slices.Sort(gaps)
		s.MedianGap = gaps[len(gaps)/2]
	}
	for _, p := range par {
		if !p.Top1Served {
			// Where its gap ranks: a moved top-1 with one of the
			// smallest gaps was a near tie.
			rank, _ := slices.BinarySearch(gaps, p.Gap)
			s.Moved = append(s.Moved, fmt.Sprintf("%s (1/%d, gap %.3g, percentile %.0f, shift %.3g)",
				p.Image, p.Denom, p.Gap, 100*float64(rank)/float64(len(gaps)), p.Shift))
		}
	}
	return s
}

// speedGoals are issue 29's: batchgate's time over PIL + torchvision's
// (or PIL with draft()'s) at most the bound.
var speedGoals = []struct {
	image string
	draft bool
	bound float64
}{
	{"small_500x375.jpg", false, 0.8}, {"medium_768x576.jpg", false, 0.8}, {"photo_4032x3024.jpg", false, 0.8},
	{"photo_4032x3024.jpg", true, 0.8}, {"png_1600x1200.png", false, 0.7}, {"webp_1600x1200.webp", false, 0.6},
}

func prepReport(tim []prepTiming, par []prepParity, c Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Preprocessing: batchgate against PIL + torchvision\n\n%s, %s. JPEG decoder in this build: %s; PNG inflater: %s; lossy WebP decoder: %s. ",
		harness.Machine(), runtime.Version(), imageprep.JPEGDecoder(), imageprep.PNGInflater(), imageprep.WebPDecoder())
	if c.Versions != "" {
		fmt.Fprintf(&b, "PIL side: %s. ", c.Versions)
	}
	if len(tim) > 0 {
		fmt.Fprintf(&b, "Each pipeline in its own process on one thread, asked in turn image by image: %d rounds of %d runs; "+
			"median over the rounds of each round's median, and their range (ms); ratios taken within each round.\n\n", c.Rounds, c.Runs)
		b.WriteString("| image | batchgate | Go decoder (before) | PIL + torchvision | PIL with draft() | batchgate / PIL | batchgate / draft |\n|---|---|---|---|---|---|---|\n")
		sp := func(x spread) string { return fmt.Sprintf("%.2f (%.2f-%.2f)", x.Med, x.Min, x.Max) }
		for _, t := range tim {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.2f | %.2f |\n", t.Image, sp(t.Turbo), sp(t.Go), sp(t.PIL), sp(t.PILDraft), t.VsPIL, t.VsDraft)
		}
		b.WriteString("\nGoals:\n\n")
		for _, g := range speedGoals {
			i := slices.IndexFunc(tim, func(t prepTiming) bool { return t.Image == g.image })
			if i < 0 {
				continue
			}
			ratio, of := tim[i].VsPIL, "PIL + torchvision"
			if g.draft {
				ratio, of = tim[i].VsDraft, "PIL with draft()"
			}
			fmt.Fprintf(&b, "- %s at most %.1fx %s: %.2f, %s\n", g.image, g.bound, of, ratio, map[bool]string{true: "met", false: "NOT met"}[ratio <= g.bound])
		}
		b.WriteString("\n")
	} else {
		b.WriteString("\n\n")
	}
	s := summarizeParity(par)
	fmt.Fprintf(&b, "## Parity over %d images (%d decoded DCT-scaled)\n\n", s.Images, s.Scaled)
	fmt.Fprintf(&b, "- Exact path (full-size decode) against PIL + torchvision: largest per-image mean difference %.2g, largest difference %.2g (normalized units).\n", s.ExactMaxMean, s.ExactMax)
	fmt.Fprintf(&b, "- Served path against PIL with draft(), the pipeline it implements: largest difference %.2g.\n", s.ServedMax)
	fmt.Fprintf(&b, "- Served path against PIL without draft(), the cost of DCT scaling, over the scaled images: mean difference %.4f, largest %.3f.\n", s.DevMean, s.DevMax)
	fmt.Fprintf(&b, "- ResNet50 top-1 equal to PIL's: exact path %d/%d, served path %d/%d (%.1f%%); top-5 classes shared: %.2f and %.2f of 5.\n",
		s.Top1Exact, s.Images, s.Top1Served, s.Images, 100*float64(s.Top1Served)/float64(max(s.Images, 1)), s.Top5Exact, s.Top5Served)
	if len(s.Moved) > 0 {
		fmt.Fprintf(&b, "- Images whose top-1 moved on the served path (gap: PIL's top-1 score minus its top-2, and its "+
			"percentile over the set, median %.3g; shift: the largest change of any score): %s.\n",
			s.MedianGap, strings.Join(s.Moved, "; "))
	} else {
		b.WriteString("- No image's top-1 moved.\n")
	}
	b.WriteString("\nThe model's weights are generated when the pinned ones cannot be downloaded (see the README): " +
		"then the agreement measures how much the pipelines' differences move a ResNet50's output, not accuracy.\n\n")
	b.WriteString("| image | size | scale | exact vs PIL (mean / max) | served vs draft (max) | served vs PIL (mean / max) | top-1 exact / served | top-5 shared exact / served |\n|---|---|---|---|---|---|---|---|\n")
	for _, p := range par {
		fmt.Fprintf(&b, "| %s | %dx%d | 1/%d | %.2g / %.2g | %.2g | %.4f / %.3f | %v / %v | %d / %d |\n", p.Image, p.Width, p.Height, p.Denom,
			p.ExactMean, p.ExactMax, p.ServedMax, p.DeviationMean, p.DeviationMax, p.Top1Exact, p.Top1Served, p.Top5Exact, p.Top5Served)
	}
	return b.String()
}
