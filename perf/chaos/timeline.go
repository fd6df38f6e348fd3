package chaos

// The run's timeline: timeline.png (plot) and its text form in the report
// (strip).

import (
	"fmt"
	"image/color"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/batchgate/batchgate/perf/plot"
)

// plot draws answers per second by outcome over time, by completion time,
// with each fault shaded from its start to its lift and a dotted line when
// the stack was ready again.
func (r *chaosRun) plot(path string) error {
	reqs := r.rec.snapshot()
	if len(reqs) == 0 || len(r.faults) == 0 {
		return fmt.Errorf("no requests")
	}
	end := r.faults[len(r.faults)-1].End
	for _, q := range reqs {
		end = max(end, q.Done)
	}
	bucket, n := timelineBuckets(end)
	counts := answerRates(reqs, bucket, n)
	p := plot.New(fmt.Sprintf("batchgate chaos run (%s): answers per second by status, steady load %.1f/s, deadline %v",
		r.cfg.Name, r.rate, r.cfg.Deadline),
		"time since the load started (s)", fmt.Sprintf("answers/s (%v buckets, by completion)", bucket))
	ymax := 1.0
	for _, g := range answerGroups {
		for _, v := range counts[g] {
			ymax = max(ymax, v)
		}
	}
	ymax *= 1.12
	// Fault spans first, under the lines.
	labels, err := r.faultBands(p, ymax)
	if err != nil {
		return err
	}
	for _, g := range answerGroups {
		seen := false
		xy := make(plotter.XYs, n)
		for i, v := range counts[g] {
			xy[i] = plotter.XY{X: (float64(i) + 0.5) * bucket.Seconds(), Y: v}
			seen = seen || v > 0
		}
		if !seen {
			continue
		}
		if err := plot.Line(p, g, xy, plot.Style{Color: answerColors[g], Width: vg.Points(1.2)}); err != nil {
			return err
		}
	}
	if err := plot.Labels(p, labels, vg.Points(9), true); err != nil {
		return err
	}
	// Room on the right for the legend.
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, end.Seconds()*1.12, 0, ymax
	p.Legend.Top, p.Legend.Left = true, false
	p.Legend.XOffs = -vg.Points(4)
	return plot.Save(p, path, 14, 5)
}

// timelineBuckets is the width of the timeline's buckets (plot and strip)
// up to end, and their number.
func timelineBuckets(end time.Duration) (time.Duration, int) {
	bucket := time.Second
	if end > 5*time.Minute {
		bucket = 2 * time.Second
	}
	return bucket, int(end/bucket) + 1
}

// answerGroups are the plot's lines, answerColors their colors.
var (
	answerGroups = []string{"200", "200 cached", "429", "503", "504", "refused", "lost", "other"}
	answerColors = map[string]color.Color{
		"200": color.NRGBA{G: 150, A: 255}, "200 cached": color.NRGBA{R: 120, G: 200, B: 120, A: 255},
		"429": color.NRGBA{R: 230, G: 140, A: 255}, "503": color.NRGBA{R: 200, A: 255}, "504": color.NRGBA{R: 130, B: 160, A: 255},
		"refused": color.NRGBA{B: 200, A: 255}, "lost": color.NRGBA{A: 255}, "other": color.NRGBA{R: 150, G: 150, B: 150, A: 255},
	}
)

// answerGroup is the line q counts on; shed requests count when they were
// due, as "other".
func answerGroup(q *chaosReq) string {
	switch {
	case q.Shed:
		return "other"
	case q.notConnected():
		return "refused"
	case q.lost():
		return "lost"
	}
	if o := q.outcome(); slices.Contains(answerGroups, o) {
		return o
	}
	return "other"
}

// answerRates counts the requests per group and bucket, per second.
func answerRates(reqs []chaosReq, bucket time.Duration, n int) map[string][]float64 {
	counts := map[string][]float64{}
	for _, g := range answerGroups {
		counts[g] = make([]float64, n)
	}
	for i := range reqs {
		q := &reqs[i]
		at := q.Done
		if q.Shed {
			at = q.Sched
		}
		counts[answerGroup(q)][int(at/bucket)] += 1 / bucket.Seconds()
	}
	return counts
}

// faultBands shades each fault on p, dark from its start to its lift
// (the fault applied), light from the lift to /readyz 200 again
// (recovering), and returns the faults' labels along the top.
func (r *chaosRun) faultBands(p *plot.Plot, ymax float64) (plotter.XYLabels, error) {
	var labels plotter.XYLabels
	for _, f := range r.faults {
		if f.Kind == faultBaseline {
			continue
		}
		x0, x1 := f.Start.Seconds(), max(f.Lift.Seconds(), f.Start.Seconds()+0.3)
		x2 := x1
		if f.Ready >= 0 {
			x2 = max(f.Ready.Seconds(), x1)
		}
		for _, span := range []struct {
			from, to float64
			c        color.NRGBA
		}{{x0, x1, color.NRGBA{R: 255, G: 140, B: 0, A: 90}}, {x1, x2, color.NRGBA{R: 255, G: 200, B: 120, A: 60}}} {
			if span.to <= span.from {
				continue
			}
			if err := plot.Band(p, span.from, span.to, 0, ymax, span.c); err != nil {
				return labels, err
			}
		}
		labels.XYs = append(labels.XYs, plotter.XY{X: x0, Y: ymax * 0.965})
		labels.Labels = append(labels.Labels, f.Short)
	}
	return labels, nil
}

// strip is the timeline as text, for places where the PNG cannot go: per
// bucket (as in the plot) the worst outcome of the requests that ended in
// it, under a line marking each fault (label, '#' until the lift, '~'
// until /readyz said 200 again).
func (r *chaosRun) strip() string {
	reqs := r.rec.snapshot()
	if len(reqs) == 0 || len(r.faults) == 0 {
		return "(no requests)"
	}
	bucket, n := timelineBuckets(r.faults[len(r.faults)-1].End)
	rank := map[byte]int{' ': 0, '.': 1, '4': 2, '5': 3, 'T': 4, '?': 5, 'R': 6, 'X': 7}
	cells := []byte(strings.Repeat(" ", n))
	for i := range reqs {
		q := &reqs[i]
		at := q.Done
		if q.Shed {
			at = q.Sched
		}
		k := int(at / bucket)
		if k >= n {
			continue
		}
		c := byte('?')
		switch {
		case q.Shed:
			c = '?'
		case q.notConnected():
			c = 'R'
		case q.lost():
			c = 'X'
		case q.Status == 200:
			c = '.'
		case q.Status == 429:
			c = '4'
		case q.Status == 503:
			c = '5'
		case q.Status == 504:
			c = 'T'
		}
		if rank[c] > rank[cells[k]] {
			cells[k] = c
		}
	}
	marks := []byte(strings.Repeat(" ", n))
	for _, f := range r.faults {
		if f.Kind == faultBaseline {
			continue
		}
		ready := f.Ready
		if ready < 0 {
			ready = f.End
		}
		for k := int(f.Start / bucket); k < n && time.Duration(k)*bucket < ready; k++ {
			marks[k] = '~'
			if time.Duration(k)*bucket < f.Lift {
				marks[k] = '#'
			}
		}
	}
	// Labels on their own line, each pushed right past the one before.
	labels := []byte(strings.Repeat(" ", n+16))
	next := 0
	for _, f := range r.faults {
		if f.Kind != faultBaseline {
			at := max(int(f.Start/bucket), next)
			if at+len(f.Short) <= len(labels) {
				copy(labels[at:], f.Short)
				next = at + len(f.Short) + 1
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "One column per %v by completion time: `.` only 200s, `4` a 429, `5` a 503, `T` a 504, `R` a refusal, "+
		"`X` a lost request, `?` anything else (the worst one shown); above, each fault's label and its span from its start "+
		"(`#` until the lift, `~` until /readyz said 200 again).\n\n```\n", bucket)
	const width = 75
	for i := 0; i < n; i += width {
		j := min(i+width, n)
		lj := j
		if j == n { // the last labels may run past the end
			lj = len(labels)
		}
		fmt.Fprintf(&b, "%6s  %s\n", "", strings.TrimRight(string(labels[i:lj]), " "))
		fmt.Fprintf(&b, "%6s  %s\n", "", strings.TrimRight(string(marks[i:j]), " "))
		fmt.Fprintf(&b, "%5.0fs  %s\n", (time.Duration(i) * bucket).Seconds(), string(cells[i:j]))
	}
	b.WriteString("```")
	return b.String()
}
