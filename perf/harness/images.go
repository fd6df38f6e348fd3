package harness

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"math/rand/v2"
	"mime/multipart"
	"os"
	"sync/atomic"

	"golang.org/x/image/draw"
)

// Upload is one test image.
type Upload struct {
	JPEG []byte
}

// uploadSeq numbers unique uploads.
var uploadSeq atomic.Uint64

// Body returns the multipart form for the image. With unique set, bytes
// after the JPEG's end-of-image marker (which decoders ignore) make the
// body differ from every other one, so that neither the cache nor the
// coalescing of identical requests can serve it: each request costs an
// inference, as with real traffic of distinct photos.
func (u Upload) Body(unique bool) ([]byte, string) {
	img := u.JPEG
	if unique {
		img = fmt.Appendf(append([]byte(nil), img...), "batchgate-perf-%d", uploadSeq.Add(1))
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "photo.jpg") // writes to a bytes.Buffer cannot fail
	fw.Write(img)
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// ImagePool makes n distinct JPEG photos from the committed photograph:
// random crops, sizes (320 to 1024 px wide) and qualities, so every body is
// unique and typical of uploads (tens to a few hundred KB).
func ImagePool(photo string, n int, seed uint64) ([]Upload, int, error) {
	src, err := readPhoto(photo)
	if err != nil {
		return nil, 0, err
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	b := src.Bounds()
	out := make([]Upload, 0, n)
	total := 0
	for i := range n {
		cw, ch := b.Dx()*(80+rng.IntN(21))/100, b.Dy()*(80+rng.IntN(21))/100
		x0, y0 := rng.IntN(b.Dx()-cw+1), rng.IntN(b.Dy()-ch+1)
		w := 320 + rng.IntN(705)
		h := w * ch / cw
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.ApproxBiLinear.Scale(dst, dst.Bounds(), src, image.Rect(x0, y0, x0+cw, y0+ch), draw.Src, nil)
		dst.Pix[0] = uint8(i) // distinct bytes even for equal draws
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 75 + rng.IntN(21)}); err != nil {
			return nil, 0, err
		}
		out = append(out, Upload{JPEG: buf.Bytes()})
		total += buf.Len()
	}
	return out, total / n, nil
}

// SizedPool makes n distinct w x h JPEG photos (quality 90) from the
// committed photograph: random crops scaled to the size, with noise so that
// their entropy, and so their decode time, is a real photo's.
func SizedPool(photo string, w, h, n int, seed uint64) ([]Upload, int, error) {
	src, err := readPhoto(photo)
	if err != nil {
		return nil, 0, err
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	b := src.Bounds()
	out := make([]Upload, 0, n)
	total := 0
	for range n {
		// The largest crop of the photo with the target's aspect ratio,
		// shifted at random.
		cw, ch := b.Dx(), b.Dx()*h/w
		if ch > b.Dy() {
			cw, ch = b.Dy()*w/h, b.Dy()
		}
		cw, ch = cw*(85+rng.IntN(16))/100, ch*(85+rng.IntN(16))/100
		x0, y0 := rng.IntN(b.Dx()-cw+1), rng.IntN(b.Dy()-ch+1)
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.CatmullRom.Scale(dst, dst.Bounds(), src, image.Rect(x0, y0, x0+cw, y0+ch), draw.Src, nil)
		for i := range dst.Pix {
			if i%4 != 3 {
				dst.Pix[i] = uint8(min(max(int(dst.Pix[i])+int(rng.NormFloat64()*5), 0), 255))
			}
		}
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 90}); err != nil {
			return nil, 0, err
		}
		out = append(out, Upload{JPEG: buf.Bytes()})
		total += buf.Len()
	}
	return out, total / n, nil
}

// readPhoto decodes the image file at path.
func readPhoto(path string) (image.Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	src, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("cannot decode %s: %w", path, err)
	}
	return src, nil
}
