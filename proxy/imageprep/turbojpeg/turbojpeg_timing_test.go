package turbojpeg_test

import (
	"testing"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
)

// BenchmarkNewDecoder is what a handle per image costs, to set against
// BenchmarkDecode.
func BenchmarkNewDecoder(b *testing.B) {
	skipUnavailable(b)
	b.ReportAllocs()
	for b.Loop() {
		d, err := turbojpeg.NewDecoder()
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

// BenchmarkDecode decodes a 512x600 photo at 1/2, the scale the proxy picks
// for it, on a new handle each time as package imageprep does.
func BenchmarkDecode(b *testing.B) {
	skipUnavailable(b)
	data := readFile(b, "grace_hopper.jpg")
	buf := make([]byte, 256*300*3)
	b.ReportAllocs()
	for b.Loop() {
		d, err := turbojpeg.NewDecoder()
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := d.Decode(data, 2, turbojpeg.RGB, buf); err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}
