package main

import (
	"crypto/sha256"
	"os"
	"testing"
)

// BenchmarkCacheHitFloor times what every cached request must pay: the
// sha256 of its body (the cache key) and, on a miss, a copy of the body.
func BenchmarkCacheHitFloor(b *testing.B) {
	data, err := os.ReadFile("testdata/grace_hopper.jpg")
	if err != nil {
		b.Fatal(err)
	}
	for len(data) < 100_000 { // a typical ~100 KB upload
		data = append(data, data...)
	}
	data = data[:100_000]
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			sha256.Sum256(data)
		}
	})
	b.Run("copy", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			_ = append([]byte(nil), data...)
		}
	})
	c := newResultCache(10000, 64<<20)
	c.add("key", make([]float32, 1000))
	b.Run("lru-get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.get("key")
		}
	})
}
