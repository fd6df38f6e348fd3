package modelgen

import (
	"encoding/binary"
	"math"
)

// pb is a minimal protocol-buffers writer: just the wire types ONNX needs
// (varint and length-delimited). Nested messages are encoded into their own
// pb and appended with their length, which is simple and fast enough for the
// ~100 MB a ResNet50 takes.
type pb struct{ b []byte }

const (
	wireVarint = 0
	wireBytes  = 2
)

func (p *pb) varint(v uint64) { p.b = binary.AppendUvarint(p.b, v) }

func (p *pb) tag(field, wireType int) { p.varint(uint64(field)<<3 | uint64(wireType)) }

func (p *pb) int(field int, v int64) {
	p.tag(field, wireVarint)
	p.varint(uint64(v))
}

func (p *pb) fixed32(field int, v uint32) {
	p.tag(field, 5)
	p.b = binary.LittleEndian.AppendUint32(p.b, v)
}

func (p *pb) bytes(field int, b []byte) {
	p.tag(field, wireBytes)
	p.varint(uint64(len(b)))
	p.b = append(p.b, b...)
}

func (p *pb) str(field int, s string) {
	p.tag(field, wireBytes)
	p.varint(uint64(len(s)))
	p.b = append(p.b, s...)
}

// msg appends the message that fill writes as field.
func (p *pb) msg(field int, fill func(*pb)) {
	var c pb
	fill(&c)
	p.bytes(field, c.b)
}

// packedInts appends a repeated int64 field in packed form.
func (p *pb) packedInts(field int, vs []int64) {
	var c pb
	for _, v := range vs {
		c.varint(uint64(v))
	}
	p.bytes(field, c.b)
}

// float32Bytes returns vs as little-endian bytes, ONNX's raw_data layout.
func float32Bytes(vs []float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}
