package chaos

// The analysis and report of `perf -chaos` (chaos.go): per fault figures,
// the checks TestChaosShort asserts, report.md, results.json,
// requests.csv and timeline.png (drawn by timeline.go).

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	xdraw "golang.org/x/image/draw"

	"github.com/batchgate/batchgate/perf/harness"
)

// chaosPool returns n distinct JPEGs: half crops of the committed
// photograph (harness.ImagePool), half smooth random color fields, so that a model
// with pseudo-random weights gives them more than one top-1 class.
func chaosPool(photo string, n int) ([]chaosImage, error) {
	photos, _, err := harness.ImagePool(photo, (n+1)/2, 3)
	if err != nil {
		return nil, err
	}
	out := make([]chaosImage, 0, n)
	for _, p := range photos {
		out = append(out, chaosImage{up: p})
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for len(out) < n {
		small := image.NewRGBA(image.Rect(0, 0, 3, 3))
		for i := range small.Pix {
			small.Pix[i] = uint8(rng.IntN(256))
		}
		w := 256 + rng.IntN(257)
		h := 256 + rng.IntN(257)
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		xdraw.BiLinear.Scale(dst, dst.Bounds(), small, small.Bounds(), xdraw.Src, nil)
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 85}); err != nil {
			return nil, err
		}
		out = append(out, chaosImage{up: harness.Upload{JPEG: buf.Bytes()}})
	}
	return out, nil
}

// chaosResult is one fault's figures. Times in seconds are offsets from
// the load's start; -1 means never.
type chaosResult struct {
	Name     string  `json:"name"`
	Kind     string  `json:"kind"`
	Short    string  `json:"short"`
	Graceful bool    `json:"graceful"`
	StartS   float64 `json:"start_s"`
	LiftS    float64 `json:"lift_s"`
	ReadyS   float64 `json:"ready_s"`
	EndS     float64 `json:"end_s"`

	Sent     int            `json:"requests"` // ended in the window, shed included
	Statuses map[string]int `json:"statuses"`
	Wrong    int            `json:"wrong"`
	WrongEx  []string       `json:"wrong_examples,omitempty"`
	Lost     int            `json:"lost"`
	// LostLate are lost requests the harness sent late (over 1 s after
	// their due time, starved): on a connection it may have kept past
	// the server's close. Reported, not counted in Lost.
	LostLate int      `json:"lost_sent_late,omitempty"`
	LostEx   []string `json:"lost_examples,omitempty"`
	Refused  int      `json:"not_connected"`
	Shed     int      `json:"shed"`

	// DetectS is from the fault to the first sign of it: a 503 (a 429
	// for the overload, a refusal for the proxy) or /readyz not 200.
	DetectS  float64 `json:"detect_s"`
	DetectBy string  `json:"detect_by"`
	// Recover200S is from the lift to the first fresh (not cached) 200
	// of a request sent after it; RecoverReadyS to the first /readyz 200.
	Recover200S   float64 `json:"recover_200_s"`
	RecoverReadyS float64 `json:"recover_readyz_s"`

	MaxLatencyMs   float64 `json:"max_latency_ms"` // from the send, answered or not
	MaxLatencyWhat string  `json:"max_latency_outcome"`
	OverDeadlineMs float64 `json:"over_deadline_ms"` // max latency - deadline

	ProxyRSSMiB   float64 `json:"proxy_rss_peak_mib"`
	RuntimeRSSMiB float64 `json:"runtime_rss_peak_mib"`

	// The stall: requests due once it should have been detected, and
	// how many of them did not get a 503 (or a cached 200) within 1 s.
	StalledSent     int            `json:"stalled_sent,omitempty"`
	StalledSlow     int            `json:"stalled_slow,omitempty"`
	StalledOutcomes map[string]int `json:"stalled_outcomes,omitempty"`

	// The model swap: 200s with each model's sha256 in the window.
	NewModel200 int `json:"new_model_200,omitempty"`
	OldModel200 int `json:"old_model_200,omitempty"`
	OldCached   int `json:"old_model_cached_200,omitempty"`

	// ReadyzPolls and ReadyzNot200 count the /readyz polls of the window.
	ReadyzPolls  int `json:"readyz_polls"`
	ReadyzNot200 int `json:"readyz_not_200"`

	// HarnessLagMs is the longest time the harness was not scheduled
	// during the window: the machine was starved. Over 1 s, the window's
	// timings are not judged.
	HarnessLagMs float64 `json:"harness_lag_ms"`

	// Early504 counts 504s answered more than a second before the
	// deadline: the API promises 504 only past it.
	Early504 int `json:"early_504,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

// analyze computes every fault's figures from the requests and probes.
func (r *chaosRun) analyze() []chaosResult {
	reqs := r.rec.snapshot()
	slices.SortFunc(reqs, func(a, b chaosReq) int { return int(a.Sched - b.Sched) })
	r.probes.mu.Lock()
	readyz := slices.Clone(r.probes.readyz)
	rss := slices.Clone(r.probes.rss)
	lags := slices.Clone(r.probes.lags)
	r.probes.mu.Unlock()
	wrong := r.wrongAnswer()
	owner := faultOwners(r.faults, reqs)
	var out []chaosResult
	for fi, f := range r.faults {
		a := newFaultAnalysis(f)
		for i := range reqs {
			a.request(&reqs[i], owner[i] == fi, wrong, r.cfg.Deadline)
		}
		a.res.MaxLatencyMs = harness.Millis(a.maxLat)
		a.res.OverDeadlineMs = harness.Millis(a.maxLat - r.cfg.Deadline)
		a.probes(readyz, rss, lags)
		a.notes(r, reqs)
		out = append(out, a.res)
	}
	return out
}

// wrongAnswer says what is wrong with a 200 answer ("": nothing): an
// unknown model, a top-1 that the model does not give the image, or a fresh
// answer from the old model once the new one serves (a cached one is
// acceptable, labelled with its sha256).
func (r *chaosRun) wrongAnswer() func(q *chaosReq) string {
	known := map[string]bool{r.models[0].SHA: true, r.models[1].SHA: true}
	swapReady := time.Duration(math.MaxInt64)
	for _, f := range r.faults {
		if f.Kind == faultModelSwap && f.Ready >= 0 {
			swapReady = f.Ready
		}
	}
	return func(q *chaosReq) string {
		if q.Status != 200 {
			return ""
		}
		switch {
		case !known[q.SHA]:
			return fmt.Sprintf("image %d: unknown model_sha256 %q", q.Img, q.SHA)
		case !r.expectedTop1(q.Img, q.SHA, q.Top1):
			return fmt.Sprintf("image %d: top-1 %d, model %.12s gives %v (cached %v, at %.2f s)", q.Img, q.Top1, q.SHA,
				r.pool[q.Img].expect[q.SHA], q.Cached, q.Done.Seconds())
		case q.Sent >= swapReady && q.SHA == r.models[0].SHA && !q.Cached:
			return fmt.Sprintf("image %d: fresh answer from the old model at %.2f s, after the new one served", q.Img, q.Done.Seconds())
		}
		return ""
	}
}

// faultOwners is, per request, the index of the last fault that started
// before it ended (shed ones: before they were due), or -1: one in flight
// when a fault hits counts for that fault.
func faultOwners(faults []*chaosFault, reqs []chaosReq) []int {
	owner := make([]int, len(reqs))
	for i, q := range reqs {
		at := q.Done
		if q.Shed {
			at = q.Sched
		}
		owner[i] = -1
		for fi, f := range faults {
			if f.Start <= at {
				owner[i] = fi
			}
		}
	}
	return owner
}

// faultAnalysis accumulates one fault's result.
type faultAnalysis struct {
	f         *chaosFault
	res       chaosResult
	detectEnd time.Duration // detection counts before this
	maxLat    time.Duration
}

func newFaultAnalysis(f *chaosFault) *faultAnalysis {
	a := &faultAnalysis{f: f, res: chaosResult{Name: f.Name, Kind: f.Kind, Short: f.Short, Graceful: graceful(f.Kind),
		StartS: f.Start.Seconds(), LiftS: f.Lift.Seconds(), ReadyS: -1, EndS: f.End.Seconds(),
		Statuses: map[string]int{}, DetectS: -1, Recover200S: -1, RecoverReadyS: -1, Notes: slices.Clone(f.Notes),
		MaxLatencyMs: 0}}
	if f.Ready >= 0 {
		a.res.ReadyS = f.Ready.Seconds()
	}
	// Detection is looked for before the lift for the stall (a 503
	// after SIGCONT detects nothing) and the socket (its remedy is
	// a restart, which shows anyway); for the others until the
	// window ends, as the restart is part of the fault.
	a.detectEnd = f.End
	if f.Kind == faultSocket || f.Kind == faultStop {
		a.detectEnd = f.Lift
	}
	return a
}

// detect records a sign of the fault at at, by what, if it is the first.
func (a *faultAnalysis) detect(at time.Duration, by string) {
	f, res := a.f, &a.res
	if f.Kind == faultBaseline || at < f.Start || at >= a.detectEnd {
		return
	}
	if d := (at - f.Start).Seconds(); res.DetectS < 0 || d < res.DetectS {
		res.DetectS, res.DetectBy = d, by
	}
}

// request counts q: for recovery and the stall whenever it was sent, for
// the rest only when it is the fault's own (owned).
func (a *faultAnalysis) request(q *chaosReq, owned bool, wrong func(*chaosReq) string, deadline time.Duration) {
	f, res := a.f, &a.res
	// Recovery may come after the window.
	if f.Kind != faultBaseline && q.Status == 200 && !q.Cached && q.Sent >= f.Lift {
		if d := (q.Done - f.Lift).Seconds(); res.Recover200S < 0 || d < res.Recover200S {
			res.Recover200S = d
		}
	}
	if f.Kind == faultStop && q.Sched >= f.Start+stallDetectWithin && q.Sched < f.Lift && !q.Shed {
		res.StalledSent++
		if res.StalledOutcomes == nil {
			res.StalledOutcomes = map[string]int{}
		}
		res.StalledOutcomes[q.outcome()]++
		if !(q.Status == 503 || q.Status == 200 && q.Cached) || q.latency() > stallFailFast {
			res.StalledSlow++
		}
	}
	if !owned {
		return
	}
	res.Sent++ // here: ended in the window
	res.Statuses[q.outcome()]++
	switch {
	case q.Shed:
		res.Shed++
		return
	case q.notConnected():
		res.Refused++
	case q.lost() && q.late():
		res.LostLate++
	case q.lost():
		res.Lost++
		if q.ErrText != "" && len(res.LostEx) < 3 {
			res.LostEx = append(res.LostEx, fmt.Sprintf("%s at %.2f s (sent %.2f s): %s", q.Err, q.Done.Seconds(), q.Sent.Seconds(), q.ErrText))
		}
	}
	if w := wrong(q); w != "" {
		res.Wrong++
		if len(res.WrongEx) < 5 {
			res.WrongEx = append(res.WrongEx, w)
		}
	}
	if q.Status == 504 && q.latency() < deadline-time.Second {
		res.Early504++
	}
	if l := q.latency(); l > a.maxLat {
		a.maxLat, res.MaxLatencyWhat = l, q.outcome()
	}
	switch {
	case q.Status == 503:
		a.detect(q.Done, "503")
	case q.Status == 429 && f.Kind == faultOverload:
		a.detect(q.Done, "429")
	case q.notConnected() && f.Kind == faultProxyTerm:
		a.detect(q.Done, "refused")
	}
	if f.Kind == faultModelSwap && q.Status == 200 {
		switch {
		case q.SHA == f.newSHA:
			res.NewModel200++
		case q.Cached:
			res.OldCached++
		default:
			res.OldModel200++
		}
	}
}

// probes counts the /readyz polls, the harness's lags and the RSS samples.
func (a *faultAnalysis) probes(readyz []readyzSample, rss []rssSample, lags []lagSample) {
	f, res := a.f, &a.res
	for _, s := range readyz {
		if s.At >= f.Start && s.At < f.End {
			res.ReadyzPolls++
			if s.Status != 200 {
				res.ReadyzNot200++
			}
		}
		if s.Status != 200 {
			a.detect(s.At, fmt.Sprintf("/readyz %s", readyzText(s.Status)))
		}
		if f.Kind != faultBaseline && s.Status == 200 && s.At >= f.Lift && res.RecoverReadyS < 0 {
			res.RecoverReadyS = (s.At - f.Lift).Seconds()
		}
	}
	for _, l := range lags {
		// A lag that ends in the window counts for it.
		if l.At+l.Lag >= f.Start && l.At < f.End {
			res.HarnessLagMs = max(res.HarnessLagMs, harness.Millis(l.Lag))
		}
	}
	for _, s := range rss {
		if s.At >= f.Start && s.At < f.End {
			res.ProxyRSSMiB = max(res.ProxyRSSMiB, s.Proxy)
			res.RuntimeRSSMiB = max(res.RuntimeRSSMiB, s.Runtime)
		}
	}
}

// notes explains the figures that need it.
func (a *faultAnalysis) notes(r *chaosRun, reqs []chaosReq) {
	f, res := a.f, &a.res
	if res.LostLate > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d more requests without an answer were sent over 1 s late by the starved harness, on connections it may have kept past their close: not counted as lost", res.LostLate))
	}
	if len(res.LostEx) > 0 {
		res.Notes = append(res.Notes, "lost: "+strings.Join(res.LostEx, "; "))
	}
	if res.HarnessLagMs > 1000 {
		res.Notes = append(res.Notes, fmt.Sprintf("the machine starved the harness for %.1f s in this window: its timings are not judged", res.HarnessLagMs/1000))
	}
	if f.Kind == faultStop || f.Kind == faultOverload {
		res.Notes = append(res.Notes, fmt.Sprintf("/readyz not 200 in %d of %d polls of the window", res.ReadyzNot200, res.ReadyzPolls))
	}
	if f.Kind == faultSocket && res.DetectS < 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("nothing visible during the %v hold: %s; /readyz stayed 200",
			r.cfg.SocketHold, mixText(r.mixBetween(reqs, f.Start, f.Lift))))
	}
	if res.Early504 > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d 504s came more than 1 s before the %v deadline (the API promises 504 only past it)",
			res.Early504, r.cfg.Deadline))
	}
	if f.Kind == faultModelSwap {
		res.Notes = append(res.Notes, fmt.Sprintf("200s in the window: %d from the new model (%.12s), %d fresh and %d cached from the old one (%.12s)",
			res.NewModel200, f.newSHA, res.OldModel200, res.OldCached, f.oldSHA))
	}
}

func readyzText(status int) string {
	if status == 0 {
		return "no answer"
	}
	return strconv.Itoa(status)
}

// mixBetween is the status mix of the requests due in [from, to).
func (r *chaosRun) mixBetween(reqs []chaosReq, from, to time.Duration) map[string]int {
	m := map[string]int{}
	for _, q := range reqs {
		if q.Sched >= from && q.Sched < to {
			m[q.outcome()]++
		}
	}
	return m
}

// mixText formats a status mix, 200s first.
func mixText(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		da, db := a == "" || a[0] < '0' || a[0] > '9', b == "" || b[0] < '0' || b[0] > '9'
		if da != db {
			if da {
				return 1
			}
			return -1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// maxSkippedShare is the share of a run's timing checks that may be SKIP
// (judged in a window where the machine starved the harness): past it, the
// run says too little of batchgate's timings, and its last check, the cap,
// fails. A third: in the short run (15 timing checks: one per window, three
// more for the stall) the stall window's four and one more window may be
// starved.
const maxSkippedShare = 1.0 / 3

// chaosChecks are what TestChaosShort asserts, each "PASS ...", "FAIL ..."
// or "SKIP ..." (a failed timing check of a starved window); the last one
// caps the SKIPs at maxSkippedShare of the timing checks.
func (r *chaosRun) chaosChecks(res []chaosResult) []string {
	var out []string
	check := func(ok bool, format string, args ...any) {
		verdict := "FAIL"
		if ok {
			verdict = "PASS"
		}
		out = append(out, verdict+" "+fmt.Sprintf(format, args...))
	}
	// Timings of a window in which the machine starved the harness (and
	// so, likely, the proxy and runtime) for over a second say nothing of
	// batchgate: they are reported, not judged.
	var starved float64
	var timed, skipped int
	timing := func(ok bool, format string, args ...any) {
		timed++
		if !ok && starved > 1000 {
			skipped++
			out = append(out, fmt.Sprintf("SKIP (harness starved %.1f s) ", starved/1000)+fmt.Sprintf(format, args...))
			return
		}
		check(ok, format, args...)
	}
	check(r.differ > 0, "the two models disagree on the top-1 of %d of %d images (a stale answer can be caught)", r.differ, len(r.pool))
	for _, f := range res {
		starved = f.HarnessLagMs
		check(f.Wrong == 0, "%s: %d wrong answers", f.Short, f.Wrong)
		if f.Graceful {
			check(f.Lost == 0, "%s: %d lost requests (graceful fault)", f.Short, f.Lost)
		}
		if f.Kind != faultBaseline {
			check(f.Recover200S >= 0 && f.RecoverReadyS >= 0, "%s: recovers: first fresh 200 %s, /readyz 200 %s after the lift",
				f.Short, secText(f.Recover200S), secText(f.RecoverReadyS))
		}
		timing(f.OverDeadlineMs <= float64(deadlineMargin.Milliseconds()), "%s: slowest request %.0f ms (%s), %+.0f ms against the %v deadline (margin %v)",
			f.Short, f.MaxLatencyMs, f.MaxLatencyWhat, f.OverDeadlineMs, r.cfg.Deadline, deadlineMargin)
		switch f.Kind {
		case faultStop:
			timing(f.DetectS >= 0 && f.DetectS <= stallDetectWithin.Seconds(), "%s: stall detected %s after SIGSTOP (want <= %v)",
				f.Short, secText(f.DetectS), stallDetectWithin)
			timing(f.StalledSent > 0 && f.StalledSlow == 0, "%s: %d of %d requests sent while stalled (>= %v after SIGSTOP) did not get a 503 within %v: %s",
				f.Short, f.StalledSlow, f.StalledSent, stallDetectWithin, stallFailFast, mixText(f.StalledOutcomes))
			timing(f.Recover200S >= 0 && f.Recover200S <= stallRecoverWithin.Seconds() && f.RecoverReadyS >= 0 && f.RecoverReadyS <= stallRecoverWithin.Seconds(),
				"%s: recovery after SIGCONT: first fresh 200 %s, /readyz 200 %s (want <= %v)",
				f.Short, secText(f.Recover200S), secText(f.RecoverReadyS), stallRecoverWithin)
		case faultModelSwap:
			check(f.NewModel200 > 0, "%s: %d answers from the new model", f.Short, f.NewModel200)
		}
	}
	check(float64(skipped) <= maxSkippedShare*float64(timed), "%d of %d timing checks skipped for a starved harness (at most %.0f%% may be)",
		skipped, timed, maxSkippedShare*100)
	return out
}

func secText(s float64) string {
	if s < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2f s", s)
}

// table is the Markdown table of every fault.
func (r *chaosRun) table() string {
	return chaosTable(r.analyze(), r.cfg.Deadline)
}

func chaosTable(res []chaosResult, deadline time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| fault | requests | status mix | wrong | lost | detect | first fresh 200 after lift | /readyz 200 after lift | max latency ms (deadline %d) | proxy RSS MiB | runtime RSS MiB | harness stall ms |\n",
		deadline.Milliseconds())
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range res {
		det, rec, rdy := "-", "-", "-"
		if f.Kind != faultBaseline {
			det = "not detected"
			if f.DetectS >= 0 {
				det = fmt.Sprintf("%.2f s (%s)", f.DetectS, f.DetectBy)
			}
			rec, rdy = secText(f.Recover200S), secText(f.RecoverReadyS)
		}
		fmt.Fprintf(&b, "| %s: %s | %d | %s | %d | %d | %s | %s | %s | %.0f (%s) | %.0f | %.0f | %.0f |\n",
			f.Short, f.Name, f.Sent, mixText(f.Statuses), f.Wrong, f.Lost, det, rec, rdy,
			f.MaxLatencyMs, f.MaxLatencyWhat, f.ProxyRSSMiB, f.RuntimeRSSMiB, f.HarnessLagMs)
	}
	return b.String()
}

// write writes report.md, results.json, requests.csv and timeline.png
// into dir.
func (r *chaosRun) write(dir string) error {
	res := r.analyze()
	checks := r.chaosChecks(res)
	doc := map[string]any{
		"started": r.started, "load_started": r.since.UTC(), "machine": r.machine, "command": r.command, "config": r.cfg,
		"models": r.models, "capacity_rps": r.capacity, "rate_rps": r.rate, "differ": r.differ, "near_ties": r.ambig,
		"images": len(r.pool), "faults": res, "checks": checks, "events": r.events,
	}
	j, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), j, 0o644); err != nil {
		return err
	}
	if err := r.writeCSV(filepath.Join(dir, "requests.csv")); err != nil {
		return err
	}
	plotErr := r.plot(filepath.Join(dir, "timeline.png"))
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(r.markdown(res, checks, plotErr)), 0o644)
}

func (r *chaosRun) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	w.Write([]string{"sched_s", "sent_s", "done_s", "image", "unique", "overload", "outcome", "status", "error", "model_sha256", "top1", "cached"})
	reqs := r.rec.snapshot()
	slices.SortFunc(reqs, func(a, b chaosReq) int { return int(a.Sched - b.Sched) })
	g := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }
	for _, q := range reqs {
		w.Write([]string{g(q.Sched), g(q.Sent), g(q.Done), strconv.Itoa(q.Img), strconv.FormatBool(q.Unique), strconv.FormatBool(q.Overload),
			q.outcome(), strconv.Itoa(q.Status), q.Err, q.SHA, strconv.Itoa(q.Top1), strconv.FormatBool(q.Cached)})
	}
	w.Flush()
	return w.Error()
}

func (r *chaosRun) markdown(res []chaosResult, checks []string, plotErr error) string {
	var b strings.Builder
	cfg := r.cfg
	total := time.Duration(0)
	if n := len(r.faults); n > 0 {
		total = r.faults[n-1].End
	}
	fmt.Fprintf(&b, "# batchgate chaos run (%s)\n\n", cfg.Name)
	fmt.Fprintf(&b, "%s on %s. Command: `%s`.\n\n", r.started.Format("2006-01-02 15:04 UTC"), r.machine, strings.TrimSpace(r.command))
	fmt.Fprintf(&b, "Models: %s (sha256 %.12s) then %s (sha256 %.12s), generated weights, MAX_BATCH_SIZE %d; %d distinct images "+
		"(%d differ in top-1 between the models, %d image x model near ties accepted either way). ",
		r.models[0].Name, r.models[0].SHA, r.models[1].Name, r.models[1].SHA, cfg.MaxBatch, len(r.pool), r.differ, r.ambig)
	if r.capacity > 0 {
		fmt.Fprintf(&b, "Capacity through the stack (closed loop): %.1f requests/s; ", r.capacity)
	}
	fmt.Fprintf(&b, "steady open-loop load %.1f requests/s (4 in 5 with unique bytes, 1 in 5 repeating an image byte for byte), "+
		"every request with `X-Request-Timeout-Ms: %d`. Load ran %.0f s.\n\n", r.rate, cfg.Deadline.Milliseconds(), total.Seconds())
	b.WriteString("Definitions: **wrong** = a 200 whose top-1 is not what the model named by its `model_sha256` gives that image " +
		"(measured per model in quiet runs), or that names an unknown model, or a fresh answer from the old model after the new one served. " +
		"**lost** = the proxy took the request (a connection was made and the request written) and there was no HTTP response " +
		"(reset, EOF, or none within deadline + 10 s), or a 5xx other than 503/504; refusals (`refused`, `dial`: nothing listening) " +
		"are counted apart and are not lost, nor are requests the starved harness sent over 1 s late (noted per fault). **detect** = from the fault to the first 503 (429 for the overload, a refusal for the proxy) " +
		"or /readyz not 200. **first fresh 200 after lift** = from the lift (restart started, SIGCONT, load back to normal) " +
		"to the first non-cached 200 of a request sent after it. A fault's window runs from its start to the next fault's " +
		"(recovery and settling included); a request counts for the window in which it ended (answered, failed or shed), " +
		"so one in flight when a fault hits counts for that fault. Detection is looked for before the lift for the stall " +
		"and the socket removal, until the window's end for the others. **harness stall** = the longest time the harness " +
		"itself was not scheduled in the window (the machine is shared): over 1 s, the window's timing checks are SKIP, not judged; " +
		fmt.Sprintf("more than %.0f%% of the timing checks SKIP fails the run.\n\n", maxSkippedShare*100))
	b.WriteString(chaosTable(res, cfg.Deadline))
	b.WriteString("\n## Checks (what TestChaosShort asserts)\n\n")
	for _, c := range checks {
		fmt.Fprintf(&b, "- %s\n", c)
	}
	b.WriteString("\n## Notes per fault\n\n")
	for _, f := range res {
		if len(f.Notes) == 0 && len(f.WrongEx) == 0 {
			continue
		}
		fmt.Fprintf(&b, "- **%s** (%s): %s", f.Short, f.Name, strings.Join(f.Notes, "; "))
		if len(f.WrongEx) > 0 {
			fmt.Fprintf(&b, "; wrong: %s", strings.Join(f.WrongEx, "; "))
		}
		b.WriteString("\n")
	}
	if plotErr != nil {
		fmt.Fprintf(&b, "\n(no plot: %v)\n", plotErr)
	} else {
		b.WriteString("\n## Timeline\n\n![answers per second by status; each fault shaded dark from its start to its lift, light from the lift until /readyz says 200 again](timeline.png)\n")
	}
	b.WriteString("\n## Timeline as text\n\n" + r.strip() + "\n")
	b.WriteString("\n## Events\n\n```\n")
	for _, e := range r.events {
		b.WriteString(e + "\n")
	}
	b.WriteString("```\n")
	return b.String()
}
