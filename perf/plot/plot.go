// Package plot is the one plotting helper of the perf studies: gonum/plot
// plots with the pieces the studies share (titled plots, styled and step
// lines, shaded bands, text labels, log and fixed-step ticks), saved as
// PNG, alone or as a grid.
package plot

import (
	"image/color"
	"math"
	"os"
	"strconv"

	gonum "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Plot and LogScale are gonum's, so that a study needs no other import
// than this package and plotter.
type (
	Plot     = gonum.Plot
	LogScale = gonum.LogScale
)

// New is an empty plot with a title and axis labels.
func New(title, x, y string) *Plot {
	p := gonum.New()
	p.Title.Text = title
	p.X.Label.Text, p.Y.Label.Text = x, y
	return p
}

// Style is how Line draws a line; the zero value is gonum's default.
type Style struct {
	Color  color.Color
	Width  vg.Length
	Dashes []vg.Length
	// Steps draws each value held until the next point (post-step).
	Steps bool
}

// Line adds xy to p as a line drawn in s, in the legend as label unless
// label is empty.
func Line(p *Plot, label string, xy plotter.XYs, s Style) error {
	l, err := plotter.NewLine(xy)
	if err != nil {
		return err
	}
	if s.Color != nil {
		l.Color = s.Color
	}
	if s.Width > 0 {
		l.Width = s.Width
	}
	l.Dashes = s.Dashes
	if s.Steps {
		l.StepStyle = plotter.PostStep
	}
	p.Add(l)
	if label != "" {
		p.Legend.Add(label, l)
	}
	return nil
}

// Band shades the rectangle x0..x1, y0..y1 in c, with no outline; what is
// added to p afterwards is drawn over it.
func Band(p *Plot, x0, x1, y0, y1 float64, c color.Color) error {
	poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}})
	if err != nil {
		return err
	}
	poly.Color = c
	poly.LineStyle.Width = 0
	p.Add(poly)
	return nil
}

// Labels adds text labels to p in a font of the given size (0: gonum's),
// left-aligned on their points when left.
func Labels(p *Plot, l plotter.XYLabels, size vg.Length, left bool) error {
	lab, err := plotter.NewLabels(l)
	if err != nil {
		return err
	}
	for i := range lab.TextStyle {
		if size > 0 {
			lab.TextStyle[i].Font.Size = size
		}
		if left {
			lab.TextStyle[i].XAlign = draw.XLeft
		}
	}
	p.Add(lab)
	return nil
}

// Save writes p to path as a PNG of w x h inches.
func Save(p *Plot, path string, w, h float64) error {
	return p.Save(vg.Length(w)*vg.Inch, vg.Length(h)*vg.Inch, path)
}

// SaveGrid writes the plots of grid (rows of equal length), aligned, to
// path as one PNG of w x h inches at dpi.
func SaveGrid(path string, grid [][]*Plot, w, h float64, dpi int) error {
	img := vgimg.NewWith(vgimg.UseWH(vg.Length(w)*vg.Inch, vg.Length(h)*vg.Inch), vgimg.UseDPI(dpi))
	t := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: vg.Millimeter, PadY: vg.Millimeter,
		PadTop: vg.Points(2), PadBottom: vg.Points(2), PadLeft: vg.Points(2), PadRight: vg.Points(2)}
	canvases := gonum.Align(grid, t, draw.New(img))
	for i, row := range grid {
		for j, p := range row {
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Ticks125 marks 1, 2 and 5 times the powers of ten (for log axes).
type Ticks125 struct{}

// Ticks implements gonum's plot.Ticker.
func (Ticks125) Ticks(lo, hi float64) []gonum.Tick {
	var out []gonum.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				out = append(out, gonum.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return out
}

// Every marks every multiple of its value, labelled as whole numbers.
type Every float64

// Ticks implements gonum's plot.Ticker.
func (e Every) Ticks(lo, hi float64) []gonum.Tick {
	var out []gonum.Tick
	step := float64(e)
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		out = append(out, gonum.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', 0, 64)})
	}
	return out
}
