// Package oip is the Open Inference Protocol v2 (KServe, Triton) REST codec
// for batchgate's model: it parses infer requests (JSON tensors, base64
// BYTES, and Triton's binary-data extension) and encodes the JSON answers.
// It knows nothing of HTTP servers or of the runtime: the model's contract
// comes in as a wire.Info.
//
// Every number a client sends is checked before it is used: counts, sizes
// and offsets in integer space against the bytes actually present, so no
// request can make the parser index out of range.
//
// # What parsing a request costs
//
// ParseInfer reads the JSON in place (scanner, in scan.go), in one pass
// that refuses a request as soon as it passes a limit, before anything is
// built from it: a second input, a ninth output, a 17th entry in one
// parameters object, a fifth dimension, nesting 33 deep, or more "data"
// elements than MaxElements images of any datatype hold. Whatever the pass
// skips (unknown fields, parameters, "data" itself) it validates without
// allocating, however long; "data" stays a span of the body, decoded once
// the datatype and shape are known and its element count matches them. So
// parsing a request of b bytes allocates, garbage included, at most
//
//	2*b + 64 KiB
//
// (k = 2, C = 64 KiB, for MaxElements up to 1024), on top of the body
// itself: FP32 JSON values take 4 bytes each from at least 2 bytes of text
// ("0,"); base64 images 3/4 of their text, plus one copy of the text when
// it holds escapes (1.75); binary FP32 data is copied once (1x); binary
// BYTES elements alias the body. The constant covers the Request, the id,
// the per-image slices and error messages (a few KiB measured).
// TestParseInferAllocationBound and FuzzParseInfer check the bound.
package oip

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

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

// SetOutput names the output the answer carries: the model's output, or
// "classification". Every front end (REST, gRPC) checks outputs with it.
func (r *Request) SetOutput(info *wire.Info, name []byte) error {
	switch {
	case string(name) == info.OutputName:
		r.Output = info.OutputName
	case string(name) == "classification":
		r.Output = "classification"
	default:
		return errorf("unknown output %.20q; the model's output is %q", name, info.OutputName)
	}
	return nil
}

// SetClassify asks for the classification extension's k best classes, k
// in [1, info.Classes].
func (r *Request) SetClassify(info *wire.Info, k uint64) error {
	if k < 1 || k > uint64(info.Classes) {
		return errorf("classification must be an integer in [1, %d]", info.Classes)
	}
	r.Classify = int(k)
	return nil
}

// Limits on the parts of a request's JSON, beyond Limits: a request that
// passes one is refused as the scanner reaches it, before anything is
// built from it.
const (
	maxIDLength   = 256 // bytes of the id echoed back
	maxOutputs    = 8   // entries of "outputs"
	maxParameters = 16  // entries of one "parameters" object
	maxDims       = 4   // entries of "shape"
)

// input is the one input of a request as read by the scanner: spans of the
// body, and a few numbers. Nothing is copied or decoded until the whole
// request has been read and checked.
type input struct {
	datatype []byte // the string's text, escapes included; nil when absent
	shape    [maxDims]int64
	dims     int
	// binarySize is parameters.binary_data_size's JSON value, nil when
	// absent.
	binarySize []byte
	// data is the JSON value of "data", nil when absent; values its
	// elements when it is an array.
	data   []byte
	values int
}

func (in *input) shapeOf() []int64 { return in.shape[:in.dims] }

// outputReq is one entry of "outputs".
type outputReq struct {
	name []byte // the string's text, escapes included
	// classify is parameters.classification's JSON value, nil when absent.
	classify []byte
}

// request is an infer request as read by the scanner.
type request struct {
	id      []byte // the string's text, escapes included
	inputs  int
	in      input
	outputs [maxOutputs]outputReq
	nout    int
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
	s := scanner{b: jsonPart}
	// No datatype and shape take more values than MaxElements images.
	if err := s.request(&req, lim.MaxElements*max(1, info.ImageSize())); err != nil {
		return nil, err
	}
	var buf [maxIDLength]byte
	id, ok := unescape(buf[:0], req.id, maxIDLength)
	if !ok {
		return nil, errorf("id is longer than %d bytes", maxIDLength)
	}
	if req.inputs != 1 {
		return nil, errorf("want exactly one input, got %d", req.inputs)
	}
	out := &Request{ID: string(id), Output: info.OutputName}
	for _, o := range req.outputs[:req.nout] {
		// A name past the buffer is cut there: it names no output.
		name, _ := unescape(buf[:0], o.name, len(buf))
		if err := out.SetOutput(info, name); err != nil {
			return nil, err
		}
		if o.classify != nil {
			k, ok := parseUint(o.classify)
			if !ok {
				k = 0 // refused by SetClassify
			}
			if err := out.SetClassify(info, k); err != nil {
				return nil, err
			}
		}
	}
	in := &req.in
	datatype, _ := unescape(buf[:0], in.datatype, 80)
	var err error
	switch string(datatype) {
	case "BYTES":
		out.Images, err = bytesElements(in, bin, lim)
	case "FP32":
		out.Tensors, err = fp32Elements(in, bin, info, lim)
	default:
		err = errorf("input datatype %.20q: want BYTES (encoded images) or FP32 (preprocessed tensors)", datatype)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// request reads a whole request into r. maxValues bounds the elements of
// "data".
//
// A field given twice is read twice, the second replacing the first, as
// encoding/json does; parameters objects merge, as its maps do.
func (s *scanner) request(r *request, maxValues int) error {
	if s.null() { // encoding/json reads null as an empty request
		return s.end()
	}
	more, err := s.open('{', "", "an object")
	for more {
		k, err := s.key()
		if err != nil {
			return err
		}
		switch {
		case is(k, "id"):
			err = s.string("id", &r.id)
		case is(k, "inputs"):
			err = s.inputs(r, maxValues)
		case is(k, "outputs"):
			err = s.outputs(r)
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
		if more, err = s.next('}'); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	return s.end()
}

// inputs reads "inputs": the model takes one.
func (s *scanner) inputs(r *request, maxValues int) error {
	r.inputs, r.in = 0, input{}
	if s.null() {
		return nil
	}
	more, err := s.open('[', "inputs", "an array of objects")
	for more {
		if r.inputs == 1 {
			return errorf("want exactly one input, got more than 1")
		}
		r.inputs++
		if err := s.input(&r.in, maxValues); err != nil {
			return err
		}
		if more, err = s.next(']'); err != nil {
			return err
		}
	}
	return err
}

func (s *scanner) input(in *input, maxValues int) error {
	if s.null() {
		return nil
	}
	more, err := s.open('{', "inputs", "an array of objects")
	for more {
		k, err := s.key()
		if err != nil {
			return err
		}
		switch {
		case is(k, "name"): // any name: the model has one input
			var name []byte
			err = s.string("inputs.name", &name)
		case is(k, "datatype"):
			err = s.string("inputs.datatype", &in.datatype)
		case is(k, "shape"):
			err = s.shape(in)
		case is(k, "parameters"):
			err = s.parameters("inputs.parameters", "binary_data_size", &in.binarySize)
		case is(k, "data"):
			err = s.data(in, maxValues)
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
		if more, err = s.next('}'); err != nil {
			return err
		}
	}
	return err
}

// shape reads at most maxDims integers (null is 0, as in encoding/json).
func (s *scanner) shape(in *input) error {
	const want = "an array of integers"
	in.dims = 0
	if s.null() {
		return nil
	}
	more, err := s.open('[', "inputs.shape", want)
	for more {
		if in.dims == maxDims {
			return errorf("shape has more than %d dimensions", maxDims)
		}
		var v int64
		if !s.null() {
			if v, err = s.integer("inputs.shape", want); err != nil {
				return err
			}
		}
		in.shape[in.dims] = v
		in.dims++
		if more, err = s.next(']'); err != nil {
			return err
		}
	}
	return err
}

// data skips "data", keeping its span, and counts its elements when it is
// an array: more than maxValues refuse the request.
func (s *scanner) data(in *input, maxValues int) error {
	in.values = 0
	c := s.peek()
	start := s.i
	if c != '[' {
		err := s.skip()
		in.data = s.b[start:s.i]
		return err
	}
	more, err := s.open('[', "", "")
	for more {
		if in.values == maxValues {
			return errorf(`input "data" holds more than %d values, more than any request takes`, maxValues)
		}
		in.values++
		if err := s.skip(); err != nil {
			return err
		}
		if more, err = s.next(']'); err != nil {
			return err
		}
	}
	in.data = s.b[start:s.i]
	return err
}

// parameters reads a parameters object of at most maxParameters entries:
// it keeps the JSON value of the one called name in *value, and skips the
// others. Keys match exactly (they are a map's in encoding/json); null
// empties the map.
func (s *scanner) parameters(field, name string, value *[]byte) error {
	if s.null() {
		*value = nil
		return nil
	}
	more, err := s.open('{', field, "an object")
	for n := 0; more; n++ {
		if n == maxParameters {
			return errorf("%s has more than %d entries", field, maxParameters)
		}
		k, err := s.key()
		if err != nil {
			return err
		}
		s.peek() // the value starts after white space
		from := s.i
		if err := s.skip(); err != nil {
			return err
		}
		if string(k) == name {
			*value = s.b[from:s.i]
		}
		if more, err = s.next('}'); err != nil {
			return err
		}
	}
	return err
}

// outputs reads "outputs": at most maxOutputs.
func (s *scanner) outputs(r *request) error {
	const want = "an array of objects"
	r.nout = 0
	if s.null() {
		return nil
	}
	more, err := s.open('[', "outputs", want)
	for more {
		if r.nout == maxOutputs {
			return errorf("more than %d outputs", maxOutputs)
		}
		o := &r.outputs[r.nout]
		*o = outputReq{}
		r.nout++
		if !s.null() {
			fields, err := s.open('{', "outputs", want)
			for fields {
				k, err := s.key()
				if err != nil {
					return err
				}
				switch {
				case is(k, "name"):
					err = s.string("outputs.name", &o.name)
				case is(k, "parameters"):
					err = s.parameters("outputs.parameters", "classification", &o.classify)
				default:
					err = s.skip()
				}
				if err != nil {
					return err
				}
				if fields, err = s.next('}'); err != nil {
					return err
				}
			}
			if err != nil {
				return err
			}
		}
		if more, err = s.next(']'); err != nil {
			return err
		}
	}
	return err
}

// binarySize returns the input's binary_data_size, which must be exactly
// the binary data that follows the JSON (one input takes all of it).
func binarySize(in *input, bin []byte) (present bool, err error) {
	if in.binarySize == nil {
		if len(bin) > 0 {
			return false, errorf("%d bytes of binary data follow the JSON, but the input has no binary_data_size", len(bin))
		}
		return false, nil
	}
	n, ok := parseUint(in.binarySize)
	if !ok || n != uint64(len(bin)) {
		return true, errorf("binary_data_size must be the %d bytes of binary data after the JSON part", len(bin))
	}
	return true, nil
}

// bytesElements returns the encoded images of a BYTES input: base64 JSON
// strings (or {"b64": ...} objects), or binary elements, each a 4-byte
// little-endian length and its bytes. Binary elements alias bin; base64
// ones take 3/4 of their text, and one more copy of it when it holds
// escapes.
func bytesElements(in *input, bin []byte, lim Limits) ([][]byte, error) {
	binary_, err := binarySize(in, bin)
	if err != nil {
		return nil, err
	}
	if binary_ {
		out, err := SplitBytes(bin, lim)
		if err != nil {
			return nil, err
		}
		return out, CheckBytesShape(len(out), in.shapeOf(), lim)
	}
	if in.data == nil || in.data[0] != '[' && string(in.data) != "null" {
		return nil, errorf(`BYTES input "data" must be an array of base64 strings`)
	}
	// Counted and checked before anything is decoded.
	if err := CheckBytesShape(in.values, in.shapeOf(), lim); err != nil {
		return nil, err
	}
	out := make([][]byte, 0, in.values)
	s := scanner{b: in.data}
	more, err := s.open('[', "", "")
	for more {
		b, err := s.image(len(out))
		if err != nil {
			return nil, err
		}
		out = append(out, b)
		if more, err = s.next(']'); err != nil {
			return nil, err
		}
	}
	return out, err
}

// image decodes element i of a BYTES input's data: a base64 string, or
// {"b64": "..."}.
func (s *scanner) image(i int) ([]byte, error) {
	var text []byte
	switch s.peek() {
	case '"':
		text, _ = s.str()
	case 'n': // null reads as "", as in encoding/json
		s.null()
		return []byte{}, nil
	case '{':
		more, err := s.open('{', "", "")
		for more {
			k, err := s.key()
			if err != nil {
				return nil, err
			}
			switch c := s.peek(); {
			case !is(k, "b64"):
				err = s.skip()
			case c == '"':
				text, err = s.str()
			case c == 'n': // null leaves the field as it was, as in encoding/json
				s.null()
			default:
				return nil, errorf(`BYTES element %d must be a base64 string or {"b64": "..."}`, i)
			}
			if err != nil {
				return nil, err
			}
			if more, err = s.next('}'); err != nil {
				return nil, err
			}
		}
		if err != nil {
			return nil, err
		}
		if len(text) == 0 {
			return nil, errorf(`BYTES element %d must be a base64 string or {"b64": "..."}`, i)
		}
	default:
		return nil, errorf(`BYTES element %d must be a base64 string or {"b64": "..."}`, i)
	}
	b, ok := decodeBase64(text)
	if !ok {
		return nil, errorf("BYTES element %d is not valid base64", i)
	}
	return b, nil
}

// decodeBase64 decodes the text of a JSON string (as scanner.str returns
// it) as standard base64. It allocates 3/4 of the text, and the text once
// more if it holds escapes.
func decodeBase64(text []byte) ([]byte, bool) {
	if bytes.IndexByte(text, '\\') >= 0 {
		for _, c := range text {
			if c >= utf8.RuneSelf { // not base64, and U+FFFD would triple it
				return nil, false
			}
		}
		// ASCII text is no longer once its escapes are undone.
		text, _ = unescape(make([]byte, 0, len(text)), text, len(text))
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(out, text)
	return out[:n], err == nil
}

// SplitBytes splits the binary form of a BYTES tensor, each element a
// 4-byte little-endian length and its bytes (Triton's binary-data
// extension, and gRPC's raw_input_contents), into its elements, which
// alias bin. More than lim.MaxElements elements are refused.
func SplitBytes(bin []byte, lim Limits) ([][]byte, error) {
	if lim.MaxElements <= 0 {
		lim.MaxElements = 16
	}
	var out [][]byte
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
	return out, nil
}

// CheckBytesShape checks a BYTES input's shape, [N] or [N,1], against its
// n elements.
func CheckBytesShape(n int, shape []int64, lim Limits) error {
	if n == 0 || n > lim.MaxElements {
		return errorf("want 1 to %d elements, got %d", lim.MaxElements, n)
	}
	if len(shape) == 0 || len(shape) > 2 || shape[0] != int64(n) || (len(shape) == 2 && shape[1] != 1) {
		return errorf("shape %v does not match %d elements: want [%d] or [%d,1]", shape, n, n, n)
	}
	return nil
}

// fp32Elements returns the images of an FP32 [N,C,H,W] input, from a flat
// JSON array or little-endian binary data. Its values are allocated once
// their count is known to match the shape: 4 bytes each, from at least 2
// bytes of JSON ("0,") or 4 of binary.
func fp32Elements(in *input, bin []byte, info *wire.Info, lim Limits) ([][]float32, error) {
	shape := in.shapeOf()
	n, err := CheckFP32Shape(shape, info, lim)
	if err != nil {
		return nil, err
	}
	size := info.ImageSize() // n and size small: the product cannot overflow
	binary_, err := binarySize(in, bin)
	if err != nil {
		return nil, err
	}
	var flat []float32
	if binary_ {
		if len(bin) != 4*n*size {
			return nil, errorf("binary_data_size must be %d for shape %v", 4*n*size, shape)
		}
		flat = make([]float32, n*size)
		for i := range flat {
			flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
		}
	} else {
		if in.data == nil || in.data[0] != '[' {
			return nil, errorf(`FP32 input "data" must be a flat array of numbers`)
		}
		if in.values != n*size {
			return nil, errorf("FP32 input holds %d values, shape %v needs %d", in.values, shape, n*size)
		}
		flat = make([]float32, n*size)
		if err := parseFloats(in.data, flat); err != nil {
			return nil, err
		}
	}
	return SplitTensors(flat, n), nil
}

// CheckFP32Shape checks an FP32 input's shape, [N,C,H,W] with the model's
// C, H and W and 1 <= N <= lim.MaxElements, and returns N.
func CheckFP32Shape(shape []int64, info *wire.Info, lim Limits) (int, error) {
	c, h, w := int64(info.Channels), int64(info.Height), int64(info.Width)
	if len(shape) != 4 || shape[0] < 1 || shape[0] > int64(lim.MaxElements) ||
		shape[1] != c || shape[2] != h || shape[3] != w {
		return 0, errorf("FP32 input shape must be [N,%d,%d,%d] with 1 <= N <= %d, got %.8v", c, h, w, lim.MaxElements, shape)
	}
	return int(shape[0]), nil
}

// SplitTensors cuts flat, n images' values, into one slice per image.
func SplitTensors(flat []float32, n int) [][]float32 {
	size := len(flat) / n
	out := make([][]float32, n)
	for i := range out {
		out[i] = flat[i*size : (i+1)*size : (i+1)*size]
	}
	return out
}

// parseFloats reads the JSON array data, of len(flat) elements, into flat:
// numbers in float32's range, or null (0, as in encoding/json).
func parseFloats(data []byte, flat []float32) error {
	bad := func() error { return errorf(`FP32 input "data" must be a flat array of numbers`) }
	s := scanner{b: data}
	more, err := s.open('[', "", "")
	for i := 0; more; i++ {
		switch c := s.peek(); {
		case c == 'n':
			s.null()
		case c == '-' || c >= '0' && c <= '9':
			start := s.i
			if err := s.number(); err != nil {
				return err
			}
			// A conversion of up to 32 bytes stays on the stack; a longer
			// one allocates no more than the number's own text.
			v, err := strconv.ParseFloat(string(s.b[start:s.i]), 32)
			if err != nil {
				return bad()
			}
			flat[i] = float32(v)
		default:
			return bad()
		}
		if more, err = s.next(']'); err != nil {
			return err
		}
	}
	return err
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
