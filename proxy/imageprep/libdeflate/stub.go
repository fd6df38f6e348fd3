//go:build !cgo || nolibdeflate

package libdeflate

// Available is false: this build has no libdeflate.
const Available = false

// Zlib returns ErrUnavailable.
func Zlib(dst, src []byte) (used int, err error) { return 0, ErrUnavailable }
