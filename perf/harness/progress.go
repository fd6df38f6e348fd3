package harness

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Progress draws a progress bar on stderr.
type Progress struct {
	w            *os.File
	total, steps atomic.Int64
	requests     atomic.Int64
	label        atomic.Value
	stop         chan struct{}
	finished     chan struct{}
}

// NewProgress draws a progress bar on w, four times a second, until Done.
func NewProgress(w *os.File) *Progress {
	p := &Progress{w: w, stop: make(chan struct{}), finished: make(chan struct{})}
	p.label.Store("")
	go func() {
		defer close(p.finished)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				p.draw()
				fmt.Fprintln(p.w)
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

func (p *Progress) draw() {
	total := max(p.total.Load(), 1)
	frac := min(float64(p.steps.Load())/float64(total), 1)
	const width = 30
	bar := strings.Repeat("=", int(frac*width)) + strings.Repeat(" ", width-int(frac*width))
	fmt.Fprintf(p.w, "\r[%s] %3.0f%% %d/%d points, %d requests  %-50.50s", bar, frac*100, p.steps.Load(), total, p.requests.Load(), p.label.Load())
}

// SetTotal sets the number of points the run measures.
func (p *Progress) SetTotal(n int) { p.total.Store(int64(n)) }

// Phase names what is being measured.
func (p *Progress) Phase(s string) { p.label.Store(s) }

// Tick counts one request answered.
func (p *Progress) Tick() { p.requests.Add(1) }

// Step counts one point measured.
func (p *Progress) Step() { p.steps.Add(1) }

// Done draws the bar one last time and stops it.
func (p *Progress) Done() { close(p.stop); <-p.finished }
