package imageprep

import (
	"math/rand/v2"
	"testing"
)

// TestClip8 checks the fast clamp against PIL's definition over the edges
// and random sums.
func TestClip8(t *testing.T) {
	pil := func(v int32) uint8 {
		if v >= 1<<precision<<8 {
			return 255
		}
		if v <= 0 {
			return 0
		}
		return uint8(v >> precision)
	}
	vals := []int32{-1 << 31, -1, 0, 1, 1<<precision - 1, 1 << precision, 255 << precision, 255<<precision - 1, 256<<precision - 1, 256 << precision, 1<<31 - 1}
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		vals = append(vals, int32(r.Uint32()))
	}
	for _, v := range vals {
		if got, want := clip8(v), pil(v); got != want {
			t.Fatalf("clip8(%d) = %d, PIL gives %d", v, got, want)
		}
	}
}

// TestWiden: moving windows inside the source keeps every weighted sum.
func TestWiden(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range [][2]int{{500, 341}, {375, 256}, {48, 384}, {7, 3}, {5, 2}, {600, 300}, {1000, 256}} {
		in, out := tc[0], tc[1]
		src := make([]int32, in)
		for i := range src {
			src[i] = int32(r.IntN(256))
		}
		sums := func(c coeffs) []int32 {
			s := make([]int32, out)
			for i := range out {
				for j := range c.n[i] {
					s[i] += src[c.first[i]+j] * c.weight[i*c.k+j]
				}
			}
			return s
		}
		c := newCoeffs(in, out, 0, out)
		want := sums(c)
		if !c.widen(in) {
			if in >= c.k {
				t.Fatalf("%d->%d: widen refused with k=%d", in, out, c.k)
			}
			continue
		}
		got := sums(c)
		for i := range out {
			if c.n[i] != c.k || c.first[i] < 0 || c.first[i]+c.k > in {
				t.Fatalf("%d->%d: output %d has window %d+%d of %d", in, out, i, c.first[i], c.n[i], in)
			}
			if got[i] != want[i] {
				t.Fatalf("%d->%d: output %d sums to %d, %d before widen", in, out, i, got[i], want[i])
			}
		}
	}
}
