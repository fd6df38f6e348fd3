package topk

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestIndices(t *testing.T) {
	for _, tc := range []struct {
		vs   []float32
		k    int
		want []int
	}{
		{[]float32{1, 5, 3, 5, 0}, 3, []int{1, 3, 2}},
		{[]float32{1, 2}, 5, []int{1, 0}},
		{[]float32{3, 3, 3}, 2, []int{0, 1}},
		{[]float32{-1, -2, -0.5}, 1, []int{2}},
		{[]float32{4, 1}, 0, nil},
		{nil, 3, nil},
	} {
		if got := Indices(tc.vs, tc.k); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Indices(%v, %d) = %v, want %v", tc.vs, tc.k, got, tc.want)
		}
	}
}

// Against a full stable sort, on random scores with many ties, for every k.
func TestIndicesMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	vs := make([]float64, 300)
	for i := range vs {
		vs[i] = float64(r.IntN(50))
	}
	all := make([]int, len(vs))
	for i := range all {
		all[i] = i
	}
	slices.SortStableFunc(all, func(a, b int) int { return cmp.Compare(vs[b], vs[a]) })
	for k := 0; k <= len(vs); k++ {
		if got := Indices(vs, k); !slices.Equal(got, all[:k]) && !(k == 0 && got == nil) {
			t.Fatalf("k=%d: got %v, want %v", k, got, all[:k])
		}
	}
}
