package autoscale

import (
	"fmt"
	"image/color"
	"slices"
	"strings"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/batchgate/batchgate/perf/plot"
)

// timelineSeries is one policy's run on the timeline, and how it is drawn.
type timelineSeries struct {
	run   autoscaleRun
	style plot.Style
}

// timelinePlot draws, per start delay (columns), arrivals and ready
// capacity, replicas, and p99 per window over time for the chart's queue
// policy (target 8, or the first target) and the seed's CPU policy: three
// rows per scenario.
func timelinePlot(path string, o Config, sw autoscaleSweep) error {
	cols := len(o.Delays)
	var grid [][]*plot.Plot
	for _, sc := range sw.scens {
		end := sc.profile[len(sc.profile)-1].at
		rows := [][]*plot.Plot{make([]*plot.Plot, cols), make([]*plot.Plot, cols), make([]*plot.Plot, cols)}
		for c, d := range o.Delays {
			ss := timelineRuns(sw, sc.name, d)
			var err error
			if rows[0][c], err = capacityPlot(fmt.Sprintf("%s, start delay %.0f s", sc.name, d), ss, end, sw.capacity); err != nil {
				return err
			}
			rows[0][c].Y.Max = float64(o.MaxReplicas) * sw.capacity * 1.45 // room for the legend
			if rows[1][c], err = replicasPlot(ss, end, o.MaxReplicas); err != nil {
				return err
			}
			if rows[2][c], err = p99Plot(ss); err != nil {
				return err
			}
		}
		for _, r := range rows {
			for _, p := range r {
				p.X.Min, p.X.Max = 0, end/60
				p.X.Tick.Marker = plot.Every(5) // minutes
				p.Legend.Top = true
				p.Legend.TextStyle.Font.Size = vg.Points(7)
			}
		}
		grid = append(grid, rows...)
	}
	return plot.SaveGrid(path, grid, float64(4*cols), 7.5*float64(len(sw.scens)), 80)
}

// timelineRuns are the chart's policy (solid) and the seed's CPU policy
// (dashed) of one scenario and start delay.
func timelineRuns(sw autoscaleSweep, scenario string, delay float64) []timelineSeries {
	var ss []timelineSeries
	for _, r := range sw.runs {
		if r.delay != delay || r.scenario != scenario {
			continue
		}
		switch {
		case r.policy.chart:
			ss = append(ss, timelineSeries{r, plot.Style{Color: color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255}}})
		case r.policy.kind == cpuPolicy && r.policy.proxyCPU:
			ss = append(ss, timelineSeries{r, plot.Style{Color: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255},
				Dashes: []vg.Length{vg.Points(4), vg.Points(2)}}})
		}
	}
	return ss
}

// stepXY is y of each step against minutes, held until end seconds.
func stepXY(steps []stepPoint, end float64, y func(stepPoint) float64) plotter.XYs {
	var xy plotter.XYs
	for _, st := range steps {
		xy = append(xy, plotter.XY{X: st.at / 60, Y: y(st)})
	}
	return append(xy, plotter.XY{X: end / 60, Y: xy[len(xy)-1].Y})
}

// capacityPlot is the timeline's first row: offered arrivals and the
// capacity of ready pods.
func capacityPlot(title string, ss []timelineSeries, end, capacity float64) (*plot.Plot, error) {
	p := plot.New(title, "", "images/s")
	var offered plotter.XYs
	for i, ws := range ss[0].run.res.windows {
		offered = append(offered, plotter.XY{X: (float64(i) + 0.5) * simWindow / 60, Y: float64(ws.arrivals) / simWindow})
	}
	if err := plot.Line(p, "arrivals", offered, plot.Style{Color: color.Gray{Y: 0x60}, Width: vg.Points(1.5)}); err != nil {
		return nil, err
	}
	for _, s := range ss {
		st := s.style
		st.Steps = true
		xy := stepXY(s.run.res.steps, end, func(st stepPoint) float64 { return float64(st.ready) * capacity })
		if err := plot.Line(p, "capacity, "+s.run.policy.name, xy, st); err != nil {
			return nil, err
		}
	}
	p.Y.Min = 0
	return p, nil
}

// replicasPlot is the second row: replicas, started or not.
func replicasPlot(ss []timelineSeries, end float64, maxReplicas int) (*plot.Plot, error) {
	p := plot.New("", "", "replicas")
	for _, s := range ss {
		st := s.style
		st.Steps = true
		xy := stepXY(s.run.res.steps, end, func(st stepPoint) float64 { return float64(st.total) })
		if err := plot.Line(p, s.run.policy.name, xy, st); err != nil {
			return nil, err
		}
	}
	p.Y.Min, p.Y.Max = 0, float64(maxReplicas)+1.5
	return p, nil
}

// p99Plot is the third row: p99 per window, log scale.
func p99Plot(ss []timelineSeries) (*plot.Plot, error) {
	p := plot.New("", "minutes", fmt.Sprintf("p99 per %.0f s, s", simWindow))
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.Ticks125{}
	for _, s := range ss {
		var xy plotter.XYs
		for i, ws := range s.run.res.windows {
			if len(ws.lat) > 0 {
				xy = append(xy, plotter.XY{X: (float64(i) + 0.5) * simWindow / 60, Y: pctSeconds(ws.lat, 99)})
			}
		}
		if err := plot.Line(p, s.run.policy.name, xy, s.style); err != nil {
			return nil, err
		}
	}
	p.Y.Min, p.Y.Max = 0.05, 20
	return p, nil
}

// tradeoffPlot draws p99 against replica-seconds over the first scenario
// (the ramp): one line per start delay through the queue targets, the
// load-proportional candidates as dots (the frontier), and the chart's
// default and the CPU policies as labelled crosses.
func tradeoffPlot(path string, sw autoscaleSweep) error {
	first := sw.scens[0].name
	p := plot.New(fmt.Sprintf("p99 vs cost, %s (queue targets labelled; dots: load-proportional candidates)", first),
		"replica-seconds", "p99 latency, s")
	delays := []float64{}
	for _, r := range sw.runs {
		if r.scenario == first && !slices.Contains(delays, r.delay) {
			delays = append(delays, r.delay)
		}
	}
	for i, d := range delays {
		if err := tradeoffDelay(p, sw, first, d, i); err != nil {
			return err
		}
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.Ticks125{}
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return plot.Save(p, path, 8, 5)
}

// tradeoffDelay adds one start delay's runs to the trade-off plot in the
// i-th color; the first delay's other policies are labelled.
func tradeoffDelay(p *plot.Plot, sw autoscaleSweep, scenario string, d float64, i int) error {
	var q, cpu, cand plotter.XYs
	var ql, cl []string
	for _, r := range sw.runs {
		if r.delay != d || r.scenario != scenario {
			continue
		}
		pt := plotter.XY{X: r.replicaSeconds, Y: r.p99}
		switch {
		case r.policy.sweep:
			q, ql = append(q, pt), append(ql, fmt.Sprintf("%g", r.policy.target))
		case r.policy.kind == loadPolicy && !r.policy.chart:
			cand = append(cand, pt)
		case r.policy.chart:
			cpu, cl = append(cpu, pt), append(cl, "chart default")
		default:
			cpu, cl = append(cpu, pt), append(cl, strings.TrimPrefix(r.policy.name, "CPU "))
		}
	}
	if len(cand) > 0 {
		dots, err := plotter.NewScatter(cand)
		if err != nil {
			return err
		}
		dots.Color, dots.Radius = plotutil.Color(i), vg.Points(1.5)
		p.Add(dots)
	}
	l, pts, err := plotter.NewLinePoints(q)
	if err != nil {
		return err
	}
	l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
	p.Add(l, pts)
	p.Legend.Add(fmt.Sprintf("queue depth, start delay %.0f s", d), l, pts)
	if err := plot.Labels(p, plotter.XYLabels{XYs: q, Labels: ql}, 0, false); err != nil {
		return err
	}
	sc, err := plotter.NewScatter(cpu)
	if err != nil {
		return err
	}
	sc.Color, sc.Shape = plotutil.Color(i), draw.CrossGlyph{}
	p.Add(sc)
	p.Legend.Add(fmt.Sprintf("other policies, start delay %.0f s", d), sc)
	if i == 0 {
		return plot.Labels(p, plotter.XYLabels{XYs: cpu, Labels: cl}, vg.Points(7), false)
	}
	return nil
}
