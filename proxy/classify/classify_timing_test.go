package classify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/imageprep"
)

// BenchmarkCacheHitFloor times what every cached request pays: the sha256 of
// its body (the cache key) and a cache get, then the whole cached Classify
// call.
func BenchmarkCacheHitFloor(b *testing.B) {
	data := testenv.Image(b, "grace_hopper.jpg")
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
	c := newCache(10000, 64<<20)
	sum := sha256.Sum256(data)
	key := hex.EncodeToString(sum[:]) + "|" + testInfo.ModelSHA256 + "|" + strconv.Itoa(imageprep.Version)
	c.add(key, make([]float32, 1000))
	b.Run("lru-get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := c.get(key); !ok {
				b.Fatal("miss")
			}
		}
	})
	// The whole cached path: key, lookup, outcome; no lease.
	s, _ := newService(Config{CacheEntries: 10000, CacheBytes: 64 << 20}, newFake())
	s.cache.add(key, make([]float32, 1000))
	b.Run("Classify", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if out, err := s.Classify(context.Background(), data, nil, false); err != nil || !out.Cached {
				b.Fatalf("not a cache hit: %v", err)
			}
		}
	})
}
