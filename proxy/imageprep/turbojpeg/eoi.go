package turbojpeg

import "bytes"

// reachesEOI reports whether data runs to an end-of-image marker, found as
// libjpeg finds it: marker segments are skipped by their length, entropy-
// coded data and stray bytes are scanned for the next 0xFF that starts a
// marker (0xFF 0x00 is a stuffed 0xFF, more 0xFF bytes are fill), and the
// markers without a length (SOI, RSTn, TEM) are stepped over. libjpeg reads
// every file to its EOI, so it needs bytes past the end of data exactly
// when this is false: its "Premature end of JPEG file", which PIL reports
// as "image file is truncated". Decode relies on this when an earlier
// warning hides that one (TurboJPEG reports a call's first warning only).
func reachesEOI(data []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(data[i:], 0xff)
		if j < 0 {
			return false
		}
		i += j + 1
		for i < len(data) && data[i] == 0xff {
			i++
		}
		if i >= len(data) {
			return false
		}
		m := data[i]
		i++
		switch {
		case m == 0xd9: // EOI
			return true
		case m == 0x00, m == 0x01, m == 0xd8, m >= 0xd0 && m <= 0xd7:
			// A stuffed byte, TEM, SOI, RSTn: no length.
		default:
			if i+2 > len(data) {
				return false
			}
			i += int(data[i])<<8 | int(data[i+1])
			if i > len(data) {
				return false
			}
		}
	}
}
