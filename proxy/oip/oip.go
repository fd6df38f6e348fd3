// Package oip is the Open Inference Protocol v2 (KServe, Triton) REST codec
// for batchgate's model: it parses infer requests (JSON tensors, base64
// BYTES, and Triton's binary-data extension) and encodes the JSON answers.
// It knows nothing of HTTP servers or of the runtime: the model's contract
// comes in as a wire.Info.
//
// Every number a client sends is checked before it is used: counts, sizes
// and offsets in integer space against the bytes actually present, so no
// request can make the parser index out of range or allocate more than a
// small multiple of its own size.
package oip

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/batchgate/batchgate/runtime/wire"
)

// Error is a request the protocol or the model cannot take. Its message is
// safe to show the client.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

// Limits bound a request.
type Limits struct {
	// MaxElements is the most images or tensors in one request. Zero
	// means 16.
	MaxElements int
}

// maxIDLength bounds the request id echoed back.
const maxIDLength = 256

// Request is a parsed infer request: exactly one of Images and Tensors is
// set.
type Request struct {
	ID string
	// Images are the encoded images of a BYTES input. Binary elements
	// alias the request body.
	Images [][]byte
	// Tensors are the preprocessed images of an FP32 input, one
	// Channels*Height*Width slice each.
	Tensors [][]float32
	// Output is the name the answer carries: the model's output, or
	// "classification".
	Output string
	// Classify is k for the classification extension ("score:index:label"
	// strings of the k best classes); zero asks for the raw scores.
	Classify int
}

// N is the number of images in the request.
func (r *Request) N() int { return len(r.Images) + len(r.Tensors) }

type input struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   string                     `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters"`
	Data       json.RawMessage            `json:"data"`
}

type request struct {
	ID      string  `json:"id"`
	Inputs  []input `json:"inputs"`
	Outputs []struct {
		Name       string                     `json:"name"`
		Parameters map[string]json.RawMessage `json:"parameters"`
	} `json:"outputs"`
}

// ParseInfer parses the body of POST /v2/models/{name}/infer. headerLength
// is the Inference-Header-Content-Length header (nil when absent): the
// length of the JSON part, binary data following it.
func ParseInfer(body, headerLength []byte, info *wire.Info, lim Limits) (*Request, error) {
	if lim.MaxElements <= 0 {
		lim.MaxElements = 16
	}
	jsonPart, bin := body, []byte(nil)
	if headerLength != nil {
		n, ok := parseUint(headerLength)
		if !ok || n > uint64(len(body)) {
			return nil, errorf("Inference-Header-Content-Length must be the length of the JSON part (0 to %d), got %.20q", len(body), headerLength)
		}
		jsonPart, bin = body[:n], body[n:]
	}
	var req request
	if err := json.Unmarshal(jsonPart, &req); err != nil {
		return nil, errorf("request is not valid JSON: %s", jsonError(err))
	}
	if len(req.ID) > maxIDLength {
		return nil, errorf("id is longer than %d bytes", maxIDLength)
	}
	if len(req.Inputs) != 1 {
		return nil, errorf("want exactly one input, got %d", len(req.Inputs))
	}
	out := &Request{ID: req.ID, Output: info.OutputName}
	for _, o := range req.Outputs {
		if o.Name != info.OutputName && o.Name != "classification" {
			return nil, errorf("unknown output %.100q; the model's output is %q", o.Name, info.OutputName)
		}
		out.Output = o.Name
		if raw, ok := o.Parameters["classification"]; ok {
			k, ok := parseUint(raw)
			if !ok || k < 1 || k > uint64(info.Classes) {
				return nil, errorf("classification must be an integer in [1, %d]", info.Classes)
			}
			out.Classify = int(k)
		}
	}
	in := req.Inputs[0]
	var err error
	switch in.Datatype {
	case "BYTES":
		out.Images, err = bytesElements(in, bin, lim)
	case "FP32":
		out.Tensors, err = fp32Elements(in, bin, info, lim)
	default:
		err = errorf("input datatype %.20q: want BYTES (encoded images) or FP32 (preprocessed tensors)", in.Datatype)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// binarySize returns the input's binary_data_size, which must be exactly
// the binary data that follows the JSON (one input takes all of it).
func binarySize(in input, bin []byte) (present bool, err error) {
	raw, ok := in.Parameters["binary_data_size"]
	if !ok {
		if len(bin) > 0 {
			return false, errorf("%d bytes of binary data follow the JSON, but the input has no binary_data_size", len(bin))
		}
		return false, nil
	}
	n, ok := parseUint(raw)
	if !ok || n != uint64(len(bin)) {
		return true, errorf("binary_data_size must be the %d bytes of binary data after the JSON part", len(bin))
	}
	return true, nil
}

// bytesElements returns the encoded images of a BYTES input: base64 JSON
// strings (or {"b64": ...} objects), or binary elements, each a 4-byte
// little-endian length and its bytes.
func bytesElements(in input, bin []byte, lim Limits) ([][]byte, error) {
	binary_, err := binarySize(in, bin)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	if binary_ {
		for rest := bin; len(rest) > 0; {
			if len(out) == lim.MaxElements {
				return nil, errorf("more than %d BYTES elements", lim.MaxElements)
			}
			if len(rest) < 4 {
				return nil, errorf("binary BYTES element %d: truncated length prefix", len(out))
			}
			l := uint64(binary.LittleEndian.Uint32(rest))
			if l > uint64(len(rest)-4) {
				return nil, errorf("binary BYTES element %d: length %d beyond the %d bytes left", len(out), l, len(rest)-4)
			}
			out = append(out, rest[4:4+l:4+l])
			rest = rest[4+l:]
		}
	} else {
		var raw []json.RawMessage
		if err := json.Unmarshal(in.Data, &raw); err != nil {
			return nil, errorf(`BYTES input "data" must be an array of base64 strings`)
		}
		if len(raw) > lim.MaxElements {
			return nil, errorf("want 1 to %d elements, got %d", lim.MaxElements, len(raw))
		}
		for i, r := range raw {
			var s string
			if err := json.Unmarshal(r, &s); err != nil {
				var obj struct {
					B64 string `json:"b64"`
				}
				if err := json.Unmarshal(r, &obj); err != nil || obj.B64 == "" {
					return nil, errorf(`BYTES element %d must be a base64 string or {"b64": "..."}`, i)
				}
				s = obj.B64
			}
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return nil, errorf("BYTES element %d is not valid base64", i)
			}
			out = append(out, b)
		}
	}
	return out, checkShape(len(out), in.Shape, lim)
}

// checkShape checks a BYTES input's shape, [N] or [N,1], against its n
// elements.
func checkShape(n int, shape []int64, lim Limits) error {
	if n == 0 || n > lim.MaxElements {
		return errorf("want 1 to %d elements, got %d", lim.MaxElements, n)
	}
	if len(shape) == 0 || len(shape) > 2 || shape[0] != int64(n) || (len(shape) == 2 && shape[1] != 1) {
		return errorf("shape %v does not match %d elements: want [%d] or [%d,1]", clip(shape), n, n, n)
	}
	return nil
}

// fp32Elements returns the images of an FP32 [N,C,H,W] input, from a flat
// JSON array or little-endian binary data.
func fp32Elements(in input, bin []byte, info *wire.Info, lim Limits) ([][]float32, error) {
	c, h, w := int64(info.Channels), int64(info.Height), int64(info.Width)
	if len(in.Shape) != 4 || in.Shape[0] < 1 || in.Shape[0] > int64(lim.MaxElements) ||
		in.Shape[1] != c || in.Shape[2] != h || in.Shape[3] != w {
		return nil, errorf("FP32 input shape must be [N,%d,%d,%d] with 1 <= N <= %d, got %v", c, h, w, lim.MaxElements, clip(in.Shape))
	}
	n, size := int(in.Shape[0]), info.ImageSize() // both small: the product cannot overflow
	binary_, err := binarySize(in, bin)
	if err != nil {
		return nil, err
	}
	var flat []float32
	if binary_ {
		if len(bin) != 4*n*size {
			return nil, errorf("binary_data_size must be %d for shape %v", 4*n*size, in.Shape)
		}
		flat = make([]float32, n*size)
		for i := range flat {
			flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
		}
	} else {
		if len(in.Data) > 0 && in.Data[0] != '[' {
			return nil, errorf(`FP32 input "data" must be a flat array of numbers`)
		}
		if err := json.Unmarshal(in.Data, &flat); err != nil {
			return nil, errorf(`FP32 input "data" must be a flat array of numbers`)
		}
	}
	if len(flat) != n*size {
		return nil, errorf("FP32 input holds %d values, shape %v needs %d", len(flat), in.Shape, n*size)
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = flat[i*size : (i+1)*size : (i+1)*size]
	}
	return out, nil
}

// parseUint reads a non-negative JSON integer literal (or a header value):
// digits only, at most 18 of them, so it fits any int.
func parseUint(b []byte) (uint64, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	return n, err == nil
}

// jsonError describes a JSON error without echoing the client's bytes.
func jsonError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	}
	return "cannot parse it"
}

// clip shortens a client's shape for an error message.
func clip(s []int64) []int64 { return s[:min(len(s), 8)] }
