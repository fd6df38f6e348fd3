package oipgrpc

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// rawMessage is a request left as its wire bytes, for a handler that
// checks them before they are unmarshalled (ModelInfer: decodeInfer).
type rawMessage struct{ buf mem.Buffer }

// Bytes are the message's wire bytes, valid until free.
func (r *rawMessage) Bytes() []byte {
	if r.buf == nil {
		return nil
	}
	return r.buf.ReadOnlyData()
}

// free returns the bytes to gRPC's pool.
func (r *rawMessage) free() {
	if r.buf != nil {
		r.buf.Free()
		r.buf = nil
	}
}

// codec is gRPC's proto codec, except that it leaves a *rawMessage as its
// bytes (in a pooled buffer): the server's only codec
// (grpc.ForceServerCodecV2).
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Name() string { return c.proto.Name() }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMessage); ok {
		r.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
		return nil
	}
	return c.proto.Unmarshal(data, v)
}
