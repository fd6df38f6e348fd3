// Package testenv gives tests the real ONNX Runtime library and generated
// models. `make test` fetches the library first; the models are generated
// here on first use and kept in .deps/models for the next run.
package testenv

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/batchgate/batchgate/runtime/modelgen"
)

// Root returns the repository root (the folder holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("cannot find go.mod above the test's folder")
		}
		dir = parent
	}
}

// ORTLibrary returns the ONNX Runtime library: $ORT_LIBRARY, or the one
// that `make deps` put in .deps/onnxruntime.
func ORTLibrary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ORT_LIBRARY"); p != "" {
		return p
	}
	p := filepath.Join(Root(t), ".deps", "onnxruntime", "libonnxruntime.so.1")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("ONNX Runtime library not found at %s: run `make test` (it fetches it) or set ORT_LIBRARY", p)
	}
	return p
}

var genMu sync.Mutex

// TinyModel returns the path of the generated tiny model.
func TinyModel(t testing.TB) string { return model(t, "tiny.onnx", modelgen.Tiny) }

// ResNet50Model returns the path of the generated ResNet50 v1 model.
func ResNet50Model(t testing.TB) string {
	return model(t, "resnet50-v1-generated.onnx", modelgen.ResNet50)
}

func model(t testing.TB, name string, gen func(uint64) ([]byte, modelgen.Stats)) string {
	t.Helper()
	genMu.Lock()
	defer genMu.Unlock()
	dir := filepath.Join(Root(t), ".deps", "models")
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	b, _ := gen(modelgen.DefaultSeed)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Other test binaries may generate the same file at once: write
	// to a private name and rename, so nobody reads half a model.
	tmp := fmt.Sprintf("%s.tmp-%d", p, os.Getpid())
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Image returns a file of proxy/testdata.
func Image(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Root(t), "proxy", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// UniquePNG returns a small (40x30) PNG that no other seed gives: distinct
// bodies that neither the cache nor coalescing can merge.
func UniquePNG(seed int) []byte {
	var buf bytes.Buffer
	png.Encode(&buf, uniqueImage(seed)) // writes to a bytes.Buffer cannot fail
	return buf.Bytes()
}

// UniqueJPEG is UniquePNG's image as a JPEG, for the JPEG decoder's path.
func UniqueJPEG(seed int) []byte {
	var buf bytes.Buffer
	jpeg.Encode(&buf, uniqueImage(seed), &jpeg.Options{Quality: 100}) // cannot fail either
	return buf.Bytes()
}

func uniqueImage(seed int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, 40, 30))
	for i := range img.Pix {
		img.Pix[i] = uint8(i*7 + seed*13)
	}
	img.Set(0, 0, color.RGBA{uint8(seed), uint8(seed >> 8), uint8(seed >> 16), 255})
	return img
}
