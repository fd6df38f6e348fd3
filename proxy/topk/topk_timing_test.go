package topk

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func BenchmarkIndices(b *testing.B) {
	vs := make([]float32, 1000)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range vs {
		vs[i] = r.Float32()
	}
	for _, k := range []int{5, 100, 1000} {
		b.Run(fmt.Sprint("k=", k), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Indices(vs, k)
			}
		})
	}
}
