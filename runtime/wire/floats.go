package wire

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// Tensor data is little-endian float32 on the wire. On a little-endian
// host (amd64, arm64: every platform the images are built for) that is
// the memory layout of a []float32, so a batch's 602 KB per image is one
// copy each way instead of a conversion per value: BenchmarkAppendBatch
// and BenchmarkParseBatch time both. Other hosts convert value by value.
var littleEndianHost = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// appendFloats appends fs as little-endian float32s.
func appendFloats(b []byte, fs []float32) []byte {
	if littleEndianHost && len(fs) > 0 {
		return append(b, unsafe.Slice((*byte)(unsafe.Pointer(&fs[0])), 4*len(fs))...)
	}
	b = grow(b, 4*len(fs))
	for _, f := range fs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

// readFloats fills dst from data, little-endian float32s, len(data) ==
// 4*len(dst).
func readFloats(dst []float32, data []byte) {
	if littleEndianHost && len(dst) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst)), data)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
}

// Finite reports whether every value of xs is finite (neither NaN nor
// infinite: the exponent bits are not all set).
func Finite(xs []float32) bool {
	for _, x := range xs {
		if math.Float32bits(x)&0x7f800000 == 0x7f800000 {
			return false
		}
	}
	return true
}
