package oipgrpc

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/batchgate/batchgate/proxy/oip"
	pb "github.com/batchgate/batchgate/proxy/oipgrpc/inferencepb"
	"github.com/batchgate/batchgate/runtime/wire"
)

// Limits on the parts of a ModelInferRequest, as proxy/oip's on a REST
// body: checked on the wire (precheck) before the message is unmarshalled.
const (
	maxIDLength   = 256 // bytes of the id echoed back
	maxOutputs    = 8   // requested outputs
	maxParameters = 16  // entries of one parameters map
	maxDims       = 4   // entries of a shape
)

func invalid(format string, args ...any) error {
	return &oip.Error{Msg: fmt.Sprintf(format, args...)}
}

// decodeInfer unmarshals a ModelInferRequest from its wire bytes, once
// precheck has bounded what unmarshalling it allocates: every repeated
// field that proto would allocate more per wire byte than a small constant
// for (messages, map entries, varints, bytes elements) is counted first,
// and a message over a limit is refused; unknown fields are dropped. So
// decoding b bytes allocates at most about b (proto copies bytes, strings
// and floats once) plus a few KiB.
func decodeInfer(b []byte, maxElements int) (*pb.ModelInferRequest, error) {
	if err := precheck(b, maxElements); err != nil {
		return nil, err
	}
	m := new(pb.ModelInferRequest)
	// Unknown fields are dropped, not kept: appended one by one they
	// would cost several times their size.
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return nil, invalid("malformed ModelInferRequest")
	}
	return m, nil
}

// walk calls f for each field of the message b, with its value's bytes
// (for varint and fixed fields, the encoded value).
func walk(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return invalid("malformed ModelInferRequest")
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				v = b[:n]
			}
		}
		if n < 0 {
			return invalid("malformed ModelInferRequest")
		}
		b = b[n:]
		if err := f(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

// precheck counts, on the wire, what ModelInferRequest may hold: one
// input and one raw_input_contents entry (the model takes one input), at
// most maxOutputs outputs, maxParameters entries in each parameters map,
// maxDims dimensions, maxElements bytes_contents elements, and in contents
// only fp32_contents and bytes_contents (the other datatypes would cost up
// to 8 bytes a wire byte, and the model takes neither).
func precheck(b []byte, maxElements int) error {
	var inputs, outputs, raws, params int
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil // unknown to proto: kept as bytes
		}
		switch num {
		case 3:
			if len(v) > maxIDLength {
				return invalid("id is longer than %d bytes", maxIDLength)
			}
		case 4:
			if params++; params > maxParameters {
				return invalid("parameters has more than %d entries", maxParameters)
			}
		case 5:
			if inputs++; inputs > 1 {
				return invalid("want exactly one input, got more than 1")
			}
			return precheckInput(v, maxElements)
		case 6:
			if outputs++; outputs > maxOutputs {
				return invalid("more than %d outputs", maxOutputs)
			}
			return precheckOutput(v)
		case 7:
			if raws++; raws > 1 {
				return invalid("raw_input_contents has more than 1 entry: the model takes one input")
			}
		}
		return nil
	})
}

func precheckInput(b []byte, maxElements int) error {
	var dims, params int
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 3 && typ == protowire.VarintType:
			dims++
		case num == 3 && typ == protowire.BytesType: // packed
			for len(v) > 0 {
				_, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return invalid("malformed ModelInferRequest")
				}
				v, dims = v[n:], dims+1
				if dims > maxDims {
					break
				}
			}
		case num == 4 && typ == protowire.BytesType:
			params++
		case num == 5 && typ == protowire.BytesType:
			return precheckContents(v, maxElements)
		}
		switch {
		case dims > maxDims:
			return invalid("shape has more than %d dimensions", maxDims)
		case params > maxParameters:
			return invalid("inputs.parameters has more than %d entries", maxParameters)
		}
		return nil
	})
}

func precheckContents(b []byte, maxElements int) error {
	var elements int
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch num {
		case 6: // fp32_contents: 4 bytes from 4 (packed) or 5 (not)
		case 8:
			if elements++; elements > maxElements {
				return invalid("more than %d BYTES elements", maxElements)
			}
		case 1, 2, 3, 4, 5, 7:
			return invalid("input contents may hold fp32_contents or bytes_contents only: the model takes FP32 tensors or BYTES images")
		}
		return nil
	})
}

func precheckOutput(b []byte) error {
	var params int
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == 2 && typ == protowire.BytesType {
			if params++; params > maxParameters {
				return invalid("outputs.parameters has more than %d entries", maxParameters)
			}
		}
		return nil
	})
}

// parseInfer reads a ModelInferRequest as oip.ParseInfer reads a REST
// body, with the same limits and messages: one input, BYTES images (in
// contents.bytes_contents, or in raw_input_contents as tritonclient sends
// them: each a 4-byte little-endian length and its bytes) or FP32
// [N,C,H,W] tensors (in contents.fp32_contents, or little-endian in
// raw_input_contents), and the classification extension on the output.
// Images alias m's bytes.
func parseInfer(m *pb.ModelInferRequest, info *wire.Info, lim oip.Limits) (*oip.Request, error) {
	if lim.MaxElements <= 0 {
		lim.MaxElements = 16
	}
	if len(m.Id) > maxIDLength {
		return nil, invalid("id is longer than %d bytes", maxIDLength)
	}
	if len(m.Inputs) != 1 {
		return nil, invalid("want exactly one input, got %d", len(m.Inputs))
	}
	if len(m.Outputs) > maxOutputs {
		return nil, invalid("more than %d outputs", maxOutputs)
	}
	req := &oip.Request{ID: m.Id, Output: info.OutputName}
	for _, o := range m.Outputs {
		if err := req.SetOutput(info, []byte(o.Name)); err != nil {
			return nil, err
		}
		if p, ok := o.Parameters["classification"]; ok {
			var k uint64 // 0: refused
			switch v := p.GetParameterChoice().(type) {
			case *pb.InferParameter_Int64Param:
				k = uint64(max(v.Int64Param, 0))
			case *pb.InferParameter_Uint64Param:
				k = v.Uint64Param
			}
			if err := req.SetClassify(info, k); err != nil {
				return nil, err
			}
		}
	}
	in := m.Inputs[0]
	var raw []byte
	switch len(m.RawInputContents) {
	case 0:
	case 1:
		raw = m.RawInputContents[0]
		if c := in.Contents; c != nil && (len(c.Fp32Contents) > 0 || len(c.BytesContents) > 0) {
			return nil, invalid("input %.20q has both contents and raw_input_contents: send one", in.Name)
		}
	default:
		return nil, invalid("raw_input_contents has %d entries: the model takes one input", len(m.RawInputContents))
	}
	c := in.GetContents()
	switch in.Datatype {
	case "BYTES":
		if len(c.GetFp32Contents()) > 0 {
			return nil, invalid("BYTES input holds fp32_contents: send the images in bytes_contents or raw_input_contents")
		}
		images := c.GetBytesContents()
		if m.RawInputContents != nil {
			var err error
			if images, err = oip.SplitBytes(raw, lim); err != nil {
				return nil, err
			}
		}
		if err := oip.CheckBytesShape(len(images), in.Shape, lim); err != nil {
			return nil, err
		}
		req.Images = images
	case "FP32":
		if len(c.GetBytesContents()) > 0 {
			return nil, invalid("FP32 input holds bytes_contents: send the values in fp32_contents or raw_input_contents")
		}
		n, err := oip.CheckFP32Shape(in.Shape, info, lim)
		if err != nil {
			return nil, err
		}
		want := n * info.ImageSize() // both small: no overflow
		var flat []float32
		if m.RawInputContents != nil {
			if len(raw) != 4*want {
				return nil, invalid("raw_input_contents must hold %d bytes for FP32 shape %v, got %d", 4*want, in.Shape, len(raw))
			}
			flat = make([]float32, want)
			for i := range flat {
				flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		} else {
			if flat = c.GetFp32Contents(); len(flat) != want {
				return nil, invalid("FP32 input holds %d values, shape %v needs %d", len(flat), in.Shape, want)
			}
		}
		req.Tensors = oip.SplitTensors(flat, n)
	default:
		return nil, invalid("input datatype %.20q: want BYTES (encoded images) or FP32 (preprocessed tensors)", in.Datatype)
	}
	return req, nil
}
