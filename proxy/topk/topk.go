// Package topk selects the indices of the k largest scores.
package topk

import "slices"

// Indices returns the indices of the k largest values of vs, largest first;
// equal values keep index order. It keeps the best k seen in a min-heap:
// O(n log k), for any k up to len(vs).
func Indices[T float32 | float64](vs []T, k int) []int {
	k = min(max(k, 0), len(vs))
	if k == 0 {
		return nil
	}
	// worse reports whether index a ranks below index b.
	worse := func(a, b int) bool { return vs[a] < vs[b] || (vs[a] == vs[b] && a > b) }
	h := make([]int, 0, k) // h[0] is the worst kept
	down := func(i int) {
		for {
			w, l, r := i, 2*i+1, 2*i+2
			if l < len(h) && worse(h[l], h[w]) {
				w = l
			}
			if r < len(h) && worse(h[r], h[w]) {
				w = r
			}
			if w == i {
				return
			}
			h[i], h[w] = h[w], h[i]
			i = w
		}
	}
	for i := range vs {
		switch {
		case len(h) < k:
			h = append(h, i)
			for j := len(h) - 1; j > 0 && worse(h[j], h[(j-1)/2]); j = (j - 1) / 2 {
				h[j], h[(j-1)/2] = h[(j-1)/2], h[j]
			}
		case worse(h[0], i):
			h[0] = i
			down(0)
		}
	}
	slices.SortFunc(h, func(a, b int) int {
		if worse(a, b) {
			return 1
		}
		return -1
	})
	return h
}
