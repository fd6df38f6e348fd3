package preprocess

import (
	"context"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/imageprep"
)

// TestParityShort is `perf -preprocess` without the timings, on the varied
// set plus a few crops of the 12 MP photo: batchgate's tensors against
// PIL's (Debian's python3-pil, which `make test` installs) on the same files.
// With libjpeg-turbo, every JPEG's tensor equals PIL + torchvision's on the
// exact path and PIL-with-draft()'s on the served path, bit for bit (and
// with libdeflate and libwebp every PNG's and lossy WebP's), and a ResNet50
// gives the same top-1 on our exact tensors as on PIL's.
func TestParityShort(t *testing.T) {
	if imageprep.JPEGDecoder() != "libjpeg-turbo" {
		t.Skip("the parity is exact with libjpeg-turbo only (this build has Go's decoder)")
	}
	t.Setenv("ORT_LIBRARY", testenv.ORTLibrary(t))
	c := Config{Extra: 4, NoSpeed: true, Model: testenv.ResNet50Model(t)}
	_, par, err := runPreprocess(context.Background(), testenv.Root(t), t.TempDir(), c, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(par) < 16 {
		t.Fatalf("%d images compared, want the whole set", len(par))
	}
	scaled, pngs, webps := 0, 0, 0
	for _, p := range par {
		jpeg := strings.HasSuffix(p.Image, ".jpg")
		// PNG too: its fast path (libdeflate) must give PIL's pixels.
		png := strings.HasSuffix(p.Image, ".png")
		if png {
			pngs++
		}
		// Lossy WebP through libwebp, the library PIL decodes it with.
		webp := strings.HasSuffix(p.Image, ".webp") && imageprep.WebPDecoder() == "libwebp"
		if webp {
			webps++
		}
		if (jpeg || png || webp) && (p.ExactMax != 0 || p.ServedMax != 0) {
			t.Errorf("%s: differs from PIL: exact path max %g (want 0), served path max %g against draft() (want 0)", p.Image, p.ExactMax, p.ServedMax)
		}
		if jpeg && p.Denom > 1 {
			scaled++
			if p.DeviationMean == 0 {
				t.Errorf("%s: scaled 1/%d but equal to the full-size tensor", p.Image, p.Denom)
			}
		}
		if !p.Top1Exact || p.Top5Exact != 5 {
			t.Errorf("%s: the exact path's top-1/top-5 differ from PIL's (top-1 same: %v, top-5 shared %d)", p.Image, p.Top1Exact, p.Top5Exact)
		}
	}
	if pngs < 2 {
		t.Errorf("%d PNGs compared, want 2", pngs)
	}
	if imageprep.WebPDecoder() == "libwebp" && webps < 2 {
		t.Errorf("%d lossy WebPs compared with libwebp, want 2", webps)
	}
	if scaled < 8 {
		t.Errorf("only %d images took the DCT-scaled path", scaled)
	}
	t.Log("\n" + prepReport(nil, par, c))
}
