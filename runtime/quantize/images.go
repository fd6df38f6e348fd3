package quantize

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // decoders for EvaluationSet
	"image/jpeg"
	_ "image/png"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// photo is the bundled calibration photograph: Grace Hopper, from Wikimedia
// Commons (the same file as proxy/testdata/grace_hopper.jpg).
//
//go:embed images/grace_hopper.jpg
var photo []byte

// CalibrationImages is how many images Twin calibrates on.
const CalibrationImages = 16

// The input transform of batchgate's models (torchvision's ImageNet one).
const (
	resizeShorter = 256
	crop          = 224
)

var (
	mean = [3]float32{0.485, 0.456, 0.406}
	std  = [3]float32{0.229, 0.224, 0.225}
)

// Photo returns the bundled photograph, decoded once; callers must not
// modify it.
var Photo = sync.OnceValue(func() image.Image {
	img, err := jpeg.Decode(bytes.NewReader(photo))
	if err != nil {
		panic(fmt.Sprintf("BUG: the bundled photo does not decode: %v", err))
	}
	rgba := image.NewRGBA(img.Bounds())
	draw.Copy(rgba, img.Bounds().Min, img, img.Bounds(), draw.Src, nil)
	return image.Image(rgba)
})

// Tensor returns img as a model input of 3x224x224 float32 values (CHW):
// the shorter side resized to 256, the center 224x224 cropped, scaled to
// [0,1] and normalized with the ImageNet mean and standard deviation. It is
// the proxy's transform up to the resampling filter (golang.org/x/image's
// bilinear here), close enough for calibration and comparisons.
func Tensor(img image.Image) []float32 {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	rw, rh := resizeShorter, resizeShorter
	if w <= h {
		rh = max(resizeShorter*h/w, resizeShorter)
	} else {
		rw = max(resizeShorter*w/h, resizeShorter)
	}
	resized, ok := img.(*image.RGBA)
	if !ok || rw != w || rh != h || b.Min != (image.Point{}) {
		resized = image.NewRGBA(image.Rect(0, 0, rw, rh))
		draw.BiLinear.Scale(resized, resized.Bounds(), img, b, draw.Src, nil)
	}
	left, top := (rw-crop)/2, (rh-crop)/2
	out := make([]float32, 3*crop*crop)
	for y := range crop {
		for x := range crop {
			i := resized.PixOffset(left+x, top+y)
			for c := range 3 {
				out[c*crop*crop+y*crop+x] = (float32(resized.Pix[i+c])/255 - mean[c]) / std[c]
			}
		}
	}
	return out
}

// Variants returns n deterministic variants of img (seed picks them):
// random crops of 50 to 100% of each side, mirror images, brightness,
// contrast and saturation changes, and pixel noise. They are made at the
// size Tensor resizes to (shorter side 256).
func Variants(img image.Image, n int, seed uint64) []image.Image {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	b := img.Bounds()
	out := make([]image.Image, 0, n)
	for range n {
		sw, sh := b.Dx()*(50+r.IntN(51))/100, b.Dy()*(50+r.IntN(51))/100
		x0, y0 := b.Min.X+r.IntN(b.Dx()-sw+1), b.Min.Y+r.IntN(b.Dy()-sh+1)
		// Scaled first, so the pixel changes below touch fewer pixels;
		// roughly (these are augmentations).
		cw, ch := resizeShorter, max(resizeShorter*sh/sw, resizeShorter)
		if sw > sh {
			cw, ch = max(resizeShorter*sw/sh, resizeShorter), resizeShorter
		}
		dst := image.NewRGBA(image.Rect(0, 0, cw, ch))
		draw.ApproxBiLinear.Scale(dst, dst.Bounds(), img, image.Rect(x0, y0, x0+sw, y0+sh), draw.Src, nil)
		flip := r.IntN(2) == 0
		bright := 0.6 + 0.8*r.Float64()
		contrast := 0.6 + 0.8*r.Float64()
		sat := 1.5 * r.Float64()
		noise := 25 * r.Float64() * float64(r.IntN(2)) // half of them none
		if flip {
			for y := range ch {
				row := dst.Pix[y*dst.Stride : y*dst.Stride+4*cw]
				for i, j := 0, cw-1; i < j; i, j = i+1, j-1 {
					for c := range 4 {
						row[4*i+c], row[4*j+c] = row[4*j+c], row[4*i+c]
					}
				}
			}
		}
		for i := 0; i < len(dst.Pix); i += 4 {
			px := dst.Pix[i : i+3 : i+3]
			gray := 0.299*float64(px[0]) + 0.587*float64(px[1]) + 0.114*float64(px[2])
			for c := range 3 {
				v := gray + sat*(float64(px[c])-gray)
				v = (v-128)*contrast + 128
				v *= bright
				if noise > 0 {
					v += noise * r.NormFloat64()
				}
				px[c] = clamp8(v)
			}
		}
		out = append(out, dst)
	}
	return out
}

// Synthetic returns n deterministic synthetic images (seed picks them), in
// turn: color gradients, stripes, checkerboards and uniform noise.
func Synthetic(n int, seed uint64) []image.Image {
	r := rand.New(rand.NewPCG(seed, 0x243f6a8885a308d3))
	out := make([]image.Image, 0, n)
	for k := range n {
		w, h := 160+r.IntN(480), 160+r.IntN(480)
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		var c0, c1 [3]float64
		for c := range 3 {
			c0[c], c1[c] = 255*r.Float64(), 255*r.Float64()
		}
		period := 4 + r.IntN(60)
		angle := math.Pi * r.Float64()
		sin, cos := math.Sincos(angle)
		for y := range h {
			for x := range w {
				var t float64
				switch k % 4 {
				case 0: // gradient along angle
					t = (float64(x)*cos + float64(y)*sin) / float64(w+h)
					t = t - math.Floor(t)
				case 1: // stripes
					t = 0.5 + 0.5*math.Sin(2*math.Pi*(float64(x)*cos+float64(y)*sin)/float64(period))
				case 2: // checkerboard
					t = float64((x/period + y/period) % 2)
				case 3: // noise
					t = r.Float64()
				}
				i := dst.PixOffset(x, y)
				for c := range 3 {
					dst.Pix[i+c] = clamp8(c0[c] + t*(c1[c]-c0[c]))
				}
				dst.Pix[i+3] = 255
			}
		}
		out = append(out, dst)
	}
	return out
}

func clamp8(v float64) uint8 { return uint8(min(max(math.Round(v), 0), 255)) }

// CalibrationSet returns the tensors Twin calibrates on: the bundled
// photograph and CalibrationImages-1 variants of it. They are made once;
// callers must not modify them.
var CalibrationSet = sync.OnceValue(func() [][]float32 {
	img := Photo()
	set := [][]float32{Tensor(img)}
	for _, v := range Variants(img, CalibrationImages-1, 1) {
		set = append(set, Tensor(v))
	}
	return set
})

// EvaluationSet returns the images to Compare a quantized model with its
// float model on, and what they are: every image file of dir that decodes
// (JPEG, PNG, GIF, WebP; none when dir is "" or missing), 24 variants of the
// bundled photograph (not those of calibration) and 8 synthetic images.
func EvaluationSet(dir string) ([][]float32, string, error) {
	var set [][]float32
	files := 0
	if dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, "", err
		}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil || e.IsDir() {
				continue
			}
			if img, _, err := image.Decode(bytes.NewReader(data)); err == nil {
				set = append(set, Tensor(img))
				files++
			}
		}
	}
	for _, v := range Variants(Photo(), 24, 2) {
		set = append(set, Tensor(v))
	}
	for _, v := range Synthetic(8, 3) {
		set = append(set, Tensor(v))
	}
	what := "24 variants of the bundled photograph, 8 synthetic images"
	if files > 0 {
		what = fmt.Sprintf("%d images of %s, %s", files, dir, what)
	}
	return set, what, nil
}
