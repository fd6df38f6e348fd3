package httpapi

import (
	"bytes"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// Reading a /predict body allocates the buffer the caller gives it (cap:
// the body's length, reserved from the upload budget) and at most
// formBound more, whatever the body: the multipart reader's buffer, the
// parts and header lines before the file.
const formBound = 1 << 20

// TestReadImageAllocationBound: no /predict body makes readImage allocate
// more than formBound beyond the buffer it reads into, with a 10 MiB image
// limit.
func TestReadImageAllocationBound(t *testing.T) {
	const b = "XyZ"
	ct := []byte("multipart/form-data; boundary=" + b)
	file := "--" + b + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nIMAGE\r\n--" + b + "--\r\n"
	for _, tc := range []struct {
		name  string
		ctype []byte
		gen   func(size int) []byte
	}{
		{"raw image", []byte("image/jpeg"), func(n int) []byte { return make([]byte, n) }},
		{"one file part", ct, func(n int) []byte { return []byte(strings.Replace(file, "IMAGE", strings.Repeat("x", n), 1)) }},
		{"many empty parts", ct, func(n int) []byte { return testenv.FillTo("", "--"+b+"\r\n\r\n\r\n", file, n) }},
		{"many named parts", ct, func(n int) []byte {
			return testenv.FillTo("", "--"+b+"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n", file, n)
		}},
		{"many headers in one part", ct, func(n int) []byte { return testenv.FillTo("--"+b+"\r\n", "A: b\r\n", "\r\n\r\n"+file, n) }},
		{"many distinct headers", ct, func(n int) []byte {
			var h strings.Builder
			for i := 0; h.Len() < n; i++ {
				h.WriteString("H")
				h.WriteString(strings.Repeat("x", i%64))
				h.WriteString(": v\r\n")
			}
			return []byte("--" + b + "\r\n" + h.String() + "\r\n\r\n" + file)
		}},
		{"one long header", ct, func(n int) []byte { return testenv.FillTo("--"+b+"\r\nA: ", "b", "\r\n\r\n\r\n"+file, n) }},
		{"long preamble", ct, func(n int) []byte { return testenv.FillTo("", "x\r\n", file, n) }},
		{"long part before the file", ct, func(n int) []byte {
			return testenv.FillTo("--"+b+"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n", "y", "\r\n"+file, n)
		}},
		{"near-boundaries", ct, func(n int) []byte {
			return testenv.FillTo("--"+b+"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n", "\r\n--"+b[:2], "\r\n"+file, n)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{64 << 10, 1 << 20, 10 << 20} {
				body := tc.gen(size)
				r := bytes.NewReader(body)
				buf := make([]byte, 0, len(body))
				var ae *apiError
				got := testenv.AllocatedBy(func() { _, ae = readImage(tc.ctype, r, len(body), 10<<20, buf) })
				msg := "accepted"
				if ae != nil {
					msg = ae.msg
				}
				t.Logf("%8d bytes: %9d allocated (%.2fx): %.60s", len(body), got, float64(got)/float64(len(body)), msg)
				if got > formBound {
					t.Errorf("%d bytes: allocated %d (%.2fx), over %d", len(body), got, float64(got)/float64(len(body)), formBound)
				}
			}
		})
	}
}
