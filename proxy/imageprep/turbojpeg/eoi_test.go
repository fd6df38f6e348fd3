package turbojpeg_test

import (
	"testing"

	"github.com/batchgate/batchgate/proxy/imageprep/turbojpeg"
)

func TestReachesEOI(t *testing.T) {
	photo := readFile(t, "grace_hopper.jpg")
	soi, eoi := "\xff\xd8", "\xff\xd9"
	app := func(payload string) string { // an APP1 segment
		n := len(payload) + 2
		return "\xff\xe1" + string([]byte{byte(n >> 8), byte(n)}) + payload
	}
	sos := "\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
	for _, tc := range []struct {
		name string
		data string
		want bool
	}{
		{"a photo", string(photo), true},
		{"a photo cut short", string(photo[:len(photo)/2]), false},
		{"a photo without its EOI", string(photo[:len(photo)-2]), false},
		{"a photo and trailing bytes", string(photo) + "junk\xff\xda", true},
		{"empty", "", false},
		{"SOI EOI", soi + eoi, true},
		{"an EOI inside an APP segment", soi + app("thumb"+eoi) + sos + "\x12\x34", false},
		{"an APP segment longer than the data", soi + "\xff\xe1\x40\x00" + eoi, false},
		{"a stuffed 0xFF then D9 in a scan", soi + sos + "\x12\xff\x00\xd9\x34", false},
		{"restart markers in a scan", soi + sos + "\x12\xff\xd0\x34\xff\xd1\x56" + eoi, true},
		{"fill bytes before EOI", soi + sos + "\x12\xff\xff\xff\xd9", true},
		{"stray bytes before EOI", soi + "\x01\x02\x03" + eoi, true},
		{"a lone 0xFF at the end", soi + sos + "\x12\xff", false},
		{"a marker without its length", soi + "\xff\xe1\x00", false},
	} {
		if got := turbojpeg.ReachesEOI([]byte(tc.data)); got != tc.want {
			t.Errorf("%s: ReachesEOI = %v, want %v", tc.name, got, tc.want)
		}
	}
}
