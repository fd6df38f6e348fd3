//go:build !cgo || nojpegturbo

package turbojpeg

// Available is false: this build has no libjpeg-turbo.
const Available = false

// Decoder is a placeholder; its methods return ErrUnavailable.
type Decoder struct{}

func NewDecoder() (*Decoder, error)                 { return nil, ErrUnavailable }
func (d *Decoder) Close()                           {}
func (d *Decoder) Header(data []byte) (Info, error) { return Info{}, ErrUnavailable }
func (d *Decoder) Decode(data []byte, denom int, f Format, dst []byte) (w, h int, err error) {
	return 0, 0, ErrUnavailable
}
