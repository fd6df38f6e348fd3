package classify

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/wire"
)

// TestTargetsStayApart: two versions whose runtimes serve the same model
// (same sha256) never share cache entries or coalesced work when their tags
// differ, and do when they share a tag (routing's share_cache). The mirror
// sees each computed image once, never a cached answer.
func TestTargetsStayApart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := newFake(), newFake() // same testInfo: identical weights
		s, _ := newService(Config{CacheEntries: 100, CacheBytes: 1 << 20}, a)
		data := testenv.Image(t, "small.png")
		ctx := context.Background()
		var mirrored int
		mirror := func(_ context.Context, tensor []float32, info wire.Info, scores []float32) {
			if len(tensor) != info.ImageSize() || len(scores) != info.Classes {
				t.Errorf("mirror got %d values and %d scores", len(tensor), len(scores))
			}
			mirrored++
		}
		va := Target{Backend: a, Tag: "v1", Mirror: mirror}
		vb := Target{Backend: b, Tag: "v2"}
		for i, step := range []struct {
			t      Target
			cached bool
		}{
			{va, false}, {va, true}, // v1 computes, then caches
			{vb, false}, {vb, true}, // v2 does not get v1's answer
			{Target{Backend: b, Tag: "v1"}, true}, // a shared tag shares
		} {
			out, err := s.ClassifyOn(ctx, step.t, data, nil, false)
			if err != nil || out.Cached != step.cached {
				t.Fatalf("step %d: cached=%v, %v; want cached=%v", i, out != nil && out.Cached, err, step.cached)
			}
		}
		if a.calls.Load() != 1 || b.calls.Load() != 1 {
			t.Errorf("backend calls: v1 %d, v2 %d; want 1 each", a.calls.Load(), b.calls.Load())
		}
		if mirrored != 1 {
			t.Errorf("mirrored %d images, want 1 (the computed one)", mirrored)
		}
		// Untagged (single-model mode) keys are today's.
		if out, err := s.Classify(ctx, data, nil, false); err != nil || out.Cached {
			t.Errorf("untagged: cached=%v, %v; want a fresh answer under the untagged key", out != nil && out.Cached, err)
		}
	})
}
