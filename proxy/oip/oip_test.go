package oip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/wire"
)

// info is a small model: 3x2x2 inputs, 5 classes.
var info = &wire.Info{Model: "resnet50", InputName: "data", OutputName: "resnetv17_dense0_fwd",
	Channels: 3, Height: 2, Width: 2, Classes: 5, Labels: []string{"a", "b", "c", "d", "e"}}

// binaryBody is Triton's binary-data form: JSON, then the elements, each a
// little-endian uint32 length and its bytes. It returns the body and the
// Inference-Header-Content-Length value.
func binaryBody(header string, elems ...string) ([]byte, []byte) {
	var bin []byte
	for _, e := range elems {
		bin = binary.LittleEndian.AppendUint32(bin, uint32(len(e)))
		bin = append(bin, e...)
	}
	header = strings.ReplaceAll(header, "SIZE", strconv.Itoa(len(bin)))
	return append([]byte(header), bin...), []byte(strconv.Itoa(len(header)))
}

func TestParseInfer(t *testing.T) {
	twelve := "[" + strings.TrimSuffix(strings.Repeat("0.5,", 12), ",") + "]"
	fp32bin := make([]byte, 4*12)
	for i := range 12 {
		binary.LittleEndian.PutUint32(fp32bin[4*i:], math.Float32bits(float32(i)))
	}
	bin1, hl1 := binaryBody(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":SIZE}}],"outputs":[{"name":"classification","parameters":{"classification":3}}]}`, "img-one", "img-two")
	fpHeader := `{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}`
	for _, tc := range []struct {
		name       string
		body, hlen []byte
		images     []string
		tensors    int
		output     string
		classify   int
		id         string
	}{
		// KServe's documented v2 example shape: JSON tensor, flat data.
		{name: "FP32 JSON", body: []byte(`{"id":"42","inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":` + twelve + `}]}`),
			tensors: 1, output: "resnetv17_dense0_fwd", id: "42"},
		// Triton's classification extension on an FP32 input.
		{name: "FP32 classification", body: []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":` + twelve + `}],
			"outputs":[{"name":"resnetv17_dense0_fwd","parameters":{"classification":2}}]}`),
			tensors: 1, output: "resnetv17_dense0_fwd", classify: 2},
		{name: "BYTES base64", body: []byte(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["aGk=",{"b64":"eW8="}]}]}`),
			images: []string{"hi", "yo"}, output: "resnetv17_dense0_fwd"},
		{name: "BYTES [N,1]", body: []byte(`{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":["aGk="]}]}`),
			images: []string{"hi"}, output: "resnetv17_dense0_fwd"},
		// Triton's binary-data extension.
		{name: "BYTES binary", body: bin1, hlen: hl1, images: []string{"img-one", "img-two"}, output: "classification", classify: 3},
		{name: "FP32 binary", body: append([]byte(fpHeader), fp32bin...), hlen: []byte(strconv.Itoa(len(fpHeader))),
			tensors: 1, output: "resnetv17_dense0_fwd"},
		// JSON fields come in any order: "data" is read once the shape is.
		{name: "FP32 data before shape", body: []byte(`{"inputs":[{"data":` + twelve + `,"datatype":"FP32","shape":[1,3,2,2]}],"id":"7"}`),
			tensors: 1, output: "resnetv17_dense0_fwd", id: "7"},
		// Keys match in any case, escapes are undone, unknown fields are
		// skipped: as encoding/json reads them.
		{name: "keys in any case, escapes", body: []byte(` {"ID":"4\u00e9\"2","Inputs":[{"NAME":"image","Shape":[1,1],"DataType":"BYT\u0045S","\u0064ata":[{"B64":"aG\u006b="}],
			"x":{"y":[1,true,null,"\ud83d\ude00"]}}],"outputs":[{"name":"classification","parameters":{"classification":1,"x":[]}}]} `),
			images: []string{"hi"}, output: "classification", classify: 1, id: `4é"2`},
		{name: "null elements", body: []byte(`{"id":null,"outputs":null,"inputs":[{"shape":[1],"datatype":"BYTES","parameters":null,"data":[{"b64":"aGk=","b64":null}]}]}`),
			images: []string{"hi"}, output: "resnetv17_dense0_fwd"},
	} {
		req, err := ParseInfer(tc.body, tc.hlen, info, Limits{})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var images []string
		for _, im := range req.Images {
			images = append(images, string(im))
		}
		if fmt.Sprint(images) != fmt.Sprint(tc.images) || len(req.Tensors) != tc.tensors || req.Output != tc.output ||
			req.Classify != tc.classify || req.ID != tc.id {
			t.Errorf("%s: got images %q, %d tensors, output %q, classify %d, id %q", tc.name, images, len(req.Tensors), req.Output, req.Classify, req.ID)
		}
		for _, tt := range req.Tensors {
			if len(tt) != 12 {
				t.Errorf("%s: tensor of %d values, want 12", tc.name, len(tt))
			}
		}
	}
}

// Every class of bad request is an *Error (a 400), never a panic.
func TestParseInferRejects(t *testing.T) {
	_, hl := binaryBody(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":SIZE}}]}`, "x")
	badLen := func(header string, bin []byte) ([]byte, []byte) {
		return append([]byte(header), bin...), []byte(strconv.Itoa(len(header)))
	}
	huge, hugeHL := badLen(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":1e300}}]}`, []byte("\x01\x00\x00\x00x"))
	neg, negHL := badLen(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":-5}}]}`, []byte("\x01\x00\x00\x00x"))
	frac, fracHL := badLen(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4.5}}]}`, []byte("\x01\x00\x00\x00x"))
	overrun, overrunHL := badLen(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}`, []byte("\xff\xff\xff\xffx"))
	short, shortHL := badLen(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":3}}]}`, []byte("\x01\x00\x00"))
	many := `{"inputs":[{"name":"image","shape":[17],"datatype":"BYTES","data":[` + strings.TrimSuffix(strings.Repeat(`"aGk=",`, 17), ",") + `]}]}`
	for _, tc := range []struct {
		name       string
		body, hlen []byte
	}{
		{"not JSON", []byte("{"), nil},
		{"trailing bytes", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}]} x`), nil},
		{"not an object", []byte(`[]`), nil},
		{"unterminated string", []byte(`{"id":"x`), nil},
		{"bad escape", []byte(`{"id":"\x"}`), nil},
		{"control character", []byte("{\"id\":\"\x01\"}"), nil},
		{"bad number", []byte(`{"x":01}`), nil},
		{"trailing comma", []byte(`{"x":[1,]}`), nil},
		{"inputs not an array", []byte(`{"inputs":{}}`), nil},
		{"BYTES element of another type", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":[{"b64":1}]}]}`), nil},
		{"BYTES element empty", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":[{"b64":""}]}]}`), nil},
		{"BYTES not base64, escaped", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\u00e9\/\/\/"]}]}`), nil},
		{"FP32 value out of range", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[1e39,0,0,0,0,0,0,0,0,0,0,0]}]}`), nil},
		{"FP32 value a string", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":["1",0,0,0,0,0,0,0,0,0,0,0]}]}`), nil},
		{"no inputs", []byte(`{"inputs":[]}`), nil},
		{"two inputs", []byte(`{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","data":["aGk="]},{"name":"b","shape":[1],"datatype":"BYTES","data":["aGk="]}]}`), nil},
		{"bad datatype", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}`), nil},
		{"bad base64", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["***"]}]}`), nil},
		{"shape mismatch", []byte(`{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","data":["aGk="]}]}`), nil},
		{"shape not integer", []byte(`{"inputs":[{"name":"x","shape":[1.5],"datatype":"BYTES","data":["aGk="]}]}`), nil},
		{"shape overflow", []byte(`{"inputs":[{"name":"x","shape":[99999999999999999999],"datatype":"BYTES","data":["aGk="]}]}`), nil},
		{"too many elements", []byte(many), nil},
		{"FP32 wrong shape", []byte(`{"inputs":[{"name":"data","shape":[1,3,9,9],"datatype":"FP32","data":[1]}]}`), nil},
		{"FP32 too few values", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[1,2]}]}`), nil},
		{"FP32 nested data", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":{"a":1}}]}`), nil},
		{"FP32 N huge", []byte(`{"inputs":[{"name":"data","shape":[9223372036854775807,3,2,2],"datatype":"FP32","data":[]}]}`), nil},
		{"classification zero", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"classification","parameters":{"classification":0}}]}`), nil},
		{"classification huge", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"classification","parameters":{"classification":1e300}}]}`), nil},
		{"unknown output", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"what"}]}`), nil},
		// The request that crashed the proxy: an out-of-range binary_data_size.
		{"binary_data_size 1e300", huge, hugeHL},
		{"binary_data_size negative", neg, negHL},
		{"binary_data_size fraction", frac, fracHL},
		{"element length beyond data", overrun, overrunHL},
		{"truncated length prefix", short, shortHL},
		{"header length beyond body", []byte(`{}`), []byte("99")},
		{"header length negative", []byte(`{}`), []byte("-1")},
		{"header length text", []byte(`{}`), []byte("ten")},
		{"header length huge", []byte(`{}`), []byte("99999999999999999999999")},
		{"binary data without size", append([]byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}]}`), 'x'), hl},
		{"long id", []byte(`{"id":"` + strings.Repeat("i", 300) + `","inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}]}`), nil},
	} {
		req, err := ParseInfer(tc.body, tc.hlen, info, Limits{})
		var oe *Error
		if !errors.As(err, &oe) || oe.Msg == "" {
			t.Errorf("%s: got %+v, %v; want an *Error", tc.name, req, err)
		}
	}
}

// The limits on a request's JSON are refused as the scanner reaches them,
// whatever follows, with what was passed.
func TestParseInferLimits(t *testing.T) {
	list := func(elem string, n int) string { return strings.TrimSuffix(strings.Repeat(elem+",", n), ",") }
	const in = `{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}`
	for _, tc := range []struct{ name, body, want string }{
		{"two inputs", `{"inputs":[` + in + `,` + in + `]}`, "want exactly one input, got more than 1"},
		{"nine outputs", `{"inputs":[` + in + `],"outputs":[` + list(`{}`, 9) + `]}`, "more than 8 outputs"},
		{"17 parameters", `{"inputs":[{"parameters":{` + list(`"k":0`, 17) + `}}]}`, "inputs.parameters has more than 16 entries"},
		{"17 output parameters", `{"outputs":[{"parameters":{` + list(`"k":0`, 17) + `}}]}`, "outputs.parameters has more than 16 entries"},
		{"5 dimensions", `{"inputs":[{"shape":[1,1,1,1,1]}]}`, "shape has more than 4 dimensions"},
		{"nested 33 deep", `{"x":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`, "deeper than 32 levels"},
		{"more values than any request", `{"inputs":[{"data":[` + list(`0`, 16*12+1) + `]}]}`, `"data" holds more than 192 values`},
		{"long number in shape", `{"inputs":[{"shape":[` + strings.Repeat("1", 30) + `]}]}`, `field "inputs.shape" must be an array of integers`},
	} {
		_, err := ParseInfer([]byte(tc.body+strings.Repeat(" x", 100)), nil, info, Limits{})
		var oe *Error
		if !errors.As(err, &oe) || !strings.Contains(oe.Msg, tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestInferResponse(t *testing.T) {
	req := &Request{ID: "r1", Output: "classification", Classify: 2, Images: [][]byte{nil, nil}}
	b, err := InferResponse(info, req, [][]float32{{0.1, 3, 0.2, 2, 1}, {5, 4, 3, 2, 1}})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID      string `json:"id"`
		Outputs []struct {
			Datatype string   `json:"datatype"`
			Shape    []int64  `json:"shape"`
			Data     []string `json:"data"`
		} `json:"outputs"`
	}
	json.Unmarshal(b, &got)
	want := `r1 BYTES [2 2] [3.000000:1:b 2.000000:3:d 5.000000:0:a 4.000000:1:b]`
	if o := got.Outputs[0]; fmt.Sprint(got.ID, " ", o.Datatype, " ", o.Shape, " ", o.Data) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	if _, err := InferResponse(info, &Request{Output: "x"}, [][]float32{{float32(math.NaN()), 0, 0, 0, 0}}); err == nil {
		t.Error("a NaN score encoded without error")
	}
}

// FuzzParseInfer: no body or header makes ParseInfer panic or allocate
// more than the package doc's bound; a request it accepts holds 1 to
// MaxElements images or full tensors, binary images lie inside the body,
// and its answer encodes.
func FuzzParseInfer(f *testing.F) {
	for _, wc := range worstCases { // small versions of each
		body, hlen, _ := wc.gen(4 << 10)
		f.Add(body, hlen)
	}
	twelve := "[" + strings.TrimSuffix(strings.Repeat("1,", 12), ",") + "]"
	add := func(body, hlen []byte) { f.Add(body, hlen) }
	add([]byte(`{"id":"42","inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":`+twelve+`}],"outputs":[{"name":"resnetv17_dense0_fwd","parameters":{"classification":2}}]}`), nil)
	add([]byte(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["aGk=",{"b64":"eW8="}]}]}`), nil)
	add(binaryBody(`{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":SIZE}}],"outputs":[{"name":"classification","parameters":{"classification":3}}]}`, "img-one", "img-two"))
	add([]byte(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":1e300}}]}`+"\x01\x00\x00\x00x"), []byte("86"))
	add([]byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}`+strings.Repeat("\x00", 48)), []byte("91"))
	add([]byte(`{"inputs":[{"name":"x","shape":[99999999999999999999],"datatype":"BYTES","data":["aGk="]}]}`), nil)
	f.Fuzz(func(t *testing.T, body, hlen []byte) {
		if len(hlen) == 0 {
			hlen = nil
		}
		lim := Limits{MaxElements: 4}
		var req *Request
		var err error
		// The count is the worker process's: its other goroutines' noise
		// fits in boundC.
		if got := testenv.AllocatedBy(func() { req, err = ParseInfer(body, hlen, info, lim) }); got > uint64(boundK*len(body)+boundC) {
			t.Fatalf("%d bytes allocated for a body of %d", got, len(body))
		}
		if err != nil {
			var oe *Error
			if !errors.As(err, &oe) {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		if n := req.N(); n < 1 || n > lim.MaxElements || (len(req.Images) > 0 && len(req.Tensors) > 0) {
			t.Fatalf("%d images and %d tensors", len(req.Images), len(req.Tensors))
		}
		for _, tt := range req.Tensors {
			if len(tt) != info.ImageSize() {
				t.Fatalf("tensor of %d values", len(tt))
			}
		}
		if req.Classify < 0 || req.Classify > info.Classes {
			t.Fatalf("classify %d", req.Classify)
		}
		if hlen != nil {
			for _, im := range req.Images {
				if len(im) > 0 && !bytes.Contains(body, im) {
					t.Fatalf("a binary image is not inside the body")
				}
			}
		}
		scores := make([][]float32, req.N())
		for i := range scores {
			scores[i] = []float32{1, 2, 3, 4, 5}
		}
		if _, err := InferResponse(info, req, scores); err != nil {
			t.Fatalf("encoding the answer: %v", err)
		}
	})
}
