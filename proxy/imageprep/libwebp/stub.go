//go:build !cgo || nolibwebp

package libwebp

// Available is false: this build has no libwebp.
const Available = false

// DecodeVP8 returns ErrUnavailable.
func DecodeVP8(frame []byte, width, height, outW, outH int, dst []byte) error {
	return ErrUnavailable
}
