package imageprep

import (
	"fmt"
	"math"
)

// The resize is PIL's (Pillow's libImaging/Resample.c, 8 bits a channel),
// computed only for the pixels inside the crop: the same coefficients, in
// the same fixed point, with the same rounding to 8 bits after each pass. On
// the same decoded pixels it gives PIL's bytes exactly; ToTensor and
// Normalize then run in float32 as torchvision does (a lookup table).

// precision is PIL's PRECISION_BITS for 8-bit images: coefficients carry 22
// fractional bits, so an 8-bit value times a coefficient sum fits in int32.
const precision = 32 - 8 - 2

// coeffs holds, for each of count output pixels, the first source pixel, the
// number of taps n <= k, and k fixed-point weights (zero past n).
type coeffs struct {
	k      int
	first  []int
	n      []int
	weight []int32
}

// newCoeffs is PIL's precompute_coeffs and normalize_coeffs_8bpc for the
// bilinear (triangle) filter, whose support widens with the downscale factor
// (antialiasing), when in source pixels become out, for the count outputs
// from first on.
func newCoeffs(in, out, first, count int) coeffs {
	scale := float64(in) / float64(out)
	filterScale := max(scale, 1)
	support := filterScale // the triangle's support is 1
	c := coeffs{k: int(math.Ceil(support))*2 + 1, first: make([]int, count), n: make([]int, count)}
	c.weight = make([]int32, count*c.k)
	ww := make([]float64, c.k)
	for i := range count {
		center := (float64(first+i) + 0.5) * scale
		// C's (int) truncates toward zero, as Go's conversion does.
		lo := max(int(center-support+0.5), 0)
		n := min(int(center+support+0.5), in) - lo
		n = min(max(n, 0), c.k)
		var sum float64
		for x := range n {
			w := 1 - math.Abs((float64(x+lo)-center+0.5)/filterScale)
			ww[x] = max(w, 0)
			sum += ww[x]
		}
		for x := range n {
			w := ww[x]
			if sum != 0 {
				w /= sum
			}
			c.weight[i*c.k+x] = int32(0.5 + w*(1<<precision)) // weights are >= 0
		}
		c.first[i], c.n[i] = lo, n
	}
	return c
}

// clip8 is PIL's: round-to-nearest was added up front, so this truncates
// and clamps to 0..255 (one unsigned compare on the common path).
func clip8(v int32) uint8 {
	u := v >> precision
	if uint32(u) <= 255 {
		return uint8(u)
	}
	if u < 0 {
		return 0
	}
	return 255
}

// half is the rounding term every sum starts from.
const half = 1 << (precision - 1)

// geometry is torchvision's Resize(shorter side) + CenterCrop for a w x h
// image: the resized size and the crop's top-left corner in it.
func geometry(w, h int, p Params) (rw, rh, left, top int, err error) {
	rw, rh = p.ResizeShorter, p.ResizeShorter
	if w <= h {
		rh = int(float64(p.ResizeShorter) * float64(h) / float64(w))
	} else {
		rw = int(float64(p.ResizeShorter) * float64(w) / float64(h))
	}
	if rw < p.Width || rh < p.Height {
		return 0, 0, 0, 0, fmt.Errorf("BUG: resize to %dx%d is smaller than the crop", rw, rh)
	}
	// center_crop: int(round((size - crop) / 2.0)), and Python's round
	// goes to even on halves.
	left = int(math.RoundToEven(float64(rw-p.Width) / 2))
	top = int(math.RoundToEven(float64(rh-p.Height) / 2))
	return rw, rh, left, top, nil
}

// widen gives every output exactly k taps, all inside the in source
// pixels: a window that would run past the end moves left, its weights
// right, with zeros in front. Zero weights add exactly nothing, so the sums
// are unchanged, and the loops need no per-output tap count. It returns
// false, changing nothing, when the source is narrower than k.
func (c *coeffs) widen(in int) bool {
	if in < c.k {
		return false
	}
	for i, first := range c.first {
		if shift := first + c.k - in; shift > 0 {
			w := c.weight[i*c.k : (i+1)*c.k]
			copy(w[shift:], w[:c.k-shift])
			clear(w[:shift])
			c.first[i] = first - shift
		}
		c.n[i] = c.k
	}
	return true
}

// resample resizes src (w x h) as PIL does, crops, and writes ToTensor +
// Normalize in CHW order into dst, using s's buffers.
func resample(src *rowReader, w, h int, p Params, dst []float32, s *scratch) error {
	if len(dst) != 3*p.Height*p.Width {
		return fmt.Errorf("BUG: dst holds %d values, want %d", len(dst), 3*p.Height*p.Width)
	}
	rw, rh, left, top, err := geometry(w, h, p)
	if err != nil {
		return err
	}
	xs := newCoeffs(w, rw, left, p.Width)
	ys := newCoeffs(h, rh, top, p.Height)
	xs.widen(w)
	ys.widen(h)
	ch := src.channels()
	W := p.Width * ch

	// Horizontal pass over only the source rows and columns the crop
	// needs, rounded to 8 bits as PIL does. PIL skips the pass when the
	// width does not change: it would be the identity.
	y0, y1 := ys.first[0], ys.first[p.Height-1]+ys.n[p.Height-1]
	x0, x1 := xs.first[0], xs.first[p.Width-1]+xs.n[p.Width-1]
	tmp := grow(&s.tmp, (y1-y0)*W)
	for y := y0; y < y1; y++ {
		row := src.row(y, x0, x1, &s.row)
		out := tmp[(y-y0)*W : (y-y0+1)*W]
		switch {
		case rw == w:
			copy(out, row[(left-x0)*ch:])
		case ch == 1:
			horizontal1(row, out, xs, x0)
		default:
			horizontal3(row, out, xs, x0)
		}
	}

	// Vertical pass into one 8-bit row, then ToTensor and Normalize
	// through a table, into CHW.
	var lut [3][256]float32
	for c := range 3 {
		for v := range 256 {
			// float32 at each step, as torch: x.div(255).sub(mean).div(std)
			x := float32(v) / 255
			x -= p.Mean[c]
			lut[c][v] = x / p.Std[c]
		}
	}
	plane := p.Height * p.Width
	for y := range p.Height {
		var row []byte
		if rh == h {
			row = tmp[(top+y-y0)*W : (top+y-y0+1)*W]
		} else {
			row = grow(&s.acc, W)
			vertical(tmp[(ys.first[y]-y0)*W:], W, ys.weight[y*ys.k:y*ys.k+ys.n[y]], row, &s.sums)
		}
		r := dst[y*p.Width : (y+1)*p.Width]
		g := dst[plane+y*p.Width : plane+(y+1)*p.Width]
		b := dst[2*plane+y*p.Width : 2*plane+(y+1)*p.Width]
		if ch == 1 {
			for x, v := range row[:len(r)] {
				r[x], g[x], b[x] = lut[0][v], lut[1][v], lut[2][v]
			}
			continue
		}
		for x := range r {
			v := row[3*x : 3*x+3 : 3*x+3]
			r[x], g[x], b[x] = lut[0][v[0]], lut[1][v[1]], lut[2][v[2]]
		}
	}
	return nil
}

// vertical writes to out the weighted sum of the len(k) rows of width W
// that start at rows, rounded to 8 bits; sums is a buffer for the generic
// case. Five taps (every downscale by a factor up to 2) is unrolled.
func vertical(rows []byte, W int, k []int32, out []byte, sums *[]int32) {
	if len(k) == 5 {
		r0, r1, r2, r3, r4 := rows[:W], rows[W:2*W], rows[2*W:3*W], rows[3*W:4*W], rows[4*W:5*W]
		w0, w1, w2, w3, w4 := k[0], k[1], k[2], k[3], k[4]
		out = out[:W]
		r0, r1, r2, r3, r4 = r0[:len(out)], r1[:len(out)], r2[:len(out)], r3[:len(out)], r4[:len(out)]
		for i := range out {
			out[i] = clip8(half + int32(r0[i])*w0 + int32(r1[i])*w1 + int32(r2[i])*w2 + int32(r3[i])*w3 + int32(r4[i])*w4)
		}
		return
	}
	if cap(*sums) < W {
		*sums = make([]int32, W)
	}
	acc := (*sums)[:W]
	for i := range acc {
		acc[i] = half
	}
	for j, wt := range k {
		for i, v := range rows[j*W : (j+1)*W][:len(acc)] {
			acc[i] += int32(v) * wt
		}
	}
	for i, a := range acc {
		out[i] = clip8(a)
	}
}

// horizontal1 resamples one gray row: src holds pixels from x0 on.
func horizontal1(src, out []byte, xs coeffs, x0 int) {
	for x := range out {
		k := xs.weight[x*xs.k : x*xs.k+xs.n[x]]
		p := src[xs.first[x]-x0:]
		p = p[:len(k)]
		var s int32 = half
		for j, wt := range k {
			s += int32(p[j]) * wt
		}
		out[x] = clip8(s)
	}
}

// horizontal3 resamples one RGB row: src holds pixels from x0 on. It is the
// pipeline's hot loop; five taps (every downscale by a factor up to 2) is
// unrolled, and the generic loop walks slices forward so the compiler drops
// most bounds checks.
func horizontal3(src, out []byte, xs coeffs, x0 int) {
	if xs.k == 5 && xs.n[0] == 5 {
		for i := range len(out) / 3 {
			p := src[3*(xs.first[i]-x0):]
			p = p[:15:15]
			w := xs.weight[5*i : 5*i+5 : 5*i+5]
			o := out[3*i : 3*i+3 : 3*i+3]
			o[0] = clip8(half + int32(p[0])*w[0] + int32(p[3])*w[1] + int32(p[6])*w[2] + int32(p[9])*w[3] + int32(p[12])*w[4])
			o[1] = clip8(half + int32(p[1])*w[0] + int32(p[4])*w[1] + int32(p[7])*w[2] + int32(p[10])*w[3] + int32(p[13])*w[4])
			o[2] = clip8(half + int32(p[2])*w[0] + int32(p[5])*w[1] + int32(p[8])*w[2] + int32(p[11])*w[3] + int32(p[14])*w[4])
		}
		return
	}
	for i := range len(out) / 3 {
		k := xs.weight[i*xs.k : i*xs.k+xs.n[i]]
		p := src[3*(xs.first[i]-x0):]
		var s0, s1, s2 int32 = half, half, half
		for _, wt := range k {
			q := p[:3:3]
			s0 += int32(q[0]) * wt
			s1 += int32(q[1]) * wt
			s2 += int32(q[2]) * wt
			p = p[3:]
		}
		o := out[3*i : 3*i+3 : 3*i+3]
		o[0], o[1], o[2] = clip8(s0), clip8(s1), clip8(s2)
	}
}

// scratch holds one preprocessing's buffers. A small free list keeps a few
// for the next image; buffers larger than maxPooled are left to the GC, so
// idle buffers never hold more than pooledScratch*(maxPooled+...) bytes.
type scratch struct {
	pix, tmp, row, acc []byte
	idat               []byte // a PNG's image data in one piece, for libdeflate
	sums               []int32
}

const (
	pooledScratch = 4
	maxPooled     = 2 << 20
)

var scratchPool = make(chan *scratch, pooledScratch)

func getScratch() *scratch {
	select {
	case s := <-scratchPool:
		return s
	default:
		return new(scratch)
	}
}

func putScratch(s *scratch) {
	for _, b := range []*[]byte{&s.pix, &s.tmp, &s.row, &s.acc, &s.idat} {
		if cap(*b) > maxPooled {
			*b = nil
		}
	}
	select {
	case scratchPool <- s:
	default:
	}
}

// grow returns (*b)[:n], reallocating when too small.
func grow(b *[]byte, n int) []byte {
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	return (*b)[:n]
}
