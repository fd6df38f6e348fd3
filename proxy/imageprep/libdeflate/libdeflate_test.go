package libdeflate_test

import (
	"bytes"
	"compress/zlib"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/batchgate/batchgate/proxy/imageprep/libdeflate"
)

func deflate(t testing.TB, raw []byte) []byte {
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	w.Write(raw)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestZlib(t *testing.T) {
	if !libdeflate.Available {
		if _, err := libdeflate.Zlib(make([]byte, 1), []byte{1}); !errors.Is(err, libdeflate.ErrUnavailable) {
			t.Fatalf("without libdeflate: got %v, want ErrUnavailable", err)
		}
		t.Skip("this build has no libdeflate (nolibdeflate tag or cgo off)")
	}
	r := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, 100000)
	for i := range raw {
		raw[i] = byte(r.IntN(16)) // compressible, not trivially
	}
	z := deflate(t, raw)
	withTail := append(append([]byte{}, z...), "trailing"...)
	flipped := append([]byte{}, z...)
	flipped[len(flipped)-1] ^= 1 // the Adler-32 checksum
	tests := []struct {
		name     string
		src      []byte
		dstLen   int
		wantUsed int
		wantErr  error
	}{
		{"exact size", z, len(raw), len(z), nil},
		{"trailing bytes are not read", withTail, len(raw), len(z), nil},
		{"one byte short of the output", z, len(raw) - 1, 0, libdeflate.ErrCorrupt},
		{"one byte more room than the output", z, len(raw) + 1, 0, libdeflate.ErrCorrupt},
		{"checksum mismatch", flipped, len(raw), 0, libdeflate.ErrCorrupt},
		{"truncated", z[:len(z)/2], len(raw), 0, libdeflate.ErrCorrupt},
		{"not zlib", []byte("not a zlib stream at all"), len(raw), 0, libdeflate.ErrCorrupt},
		{"empty input", nil, len(raw), 0, libdeflate.ErrCorrupt},
		{"empty output", z, 0, 0, libdeflate.ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, tc.dstLen)
			used, err := libdeflate.Zlib(dst, tc.src)
			if !errors.Is(err, tc.wantErr) || used != tc.wantUsed {
				t.Fatalf("got (%d, %v), want (%d, %v)", used, err, tc.wantUsed, tc.wantErr)
			}
			if err == nil && !bytes.Equal(dst, raw) {
				t.Fatal("inflated bytes differ from the original")
			}
		})
	}
}

// BenchmarkZlib against compress/zlib on the same 6 MB of noisy bytes (a
// photo's PNG data is about as compressible).
func BenchmarkZlib(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	raw := make([]byte, 6<<20)
	for i := range raw {
		raw[i] = byte(128 + r.NormFloat64()*6)
	}
	z := deflate(b, raw)
	dst := make([]byte, len(raw))
	b.Run("libdeflate", func(b *testing.B) {
		if !libdeflate.Available {
			b.Skip("no libdeflate in this build")
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, err := libdeflate.Zlib(dst, z); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compress-zlib", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			zr, err := zlib.NewReader(bytes.NewReader(z))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(zr, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}
