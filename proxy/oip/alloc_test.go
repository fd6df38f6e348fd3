package oip

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/wire"
)

// The bound of the package doc: parsing a request allocates at most
// boundK times its body plus boundC.
const (
	boundK = 2
	boundC = 64 << 10
)

// fill repeats unit, separated by sep, between prefix and suffix until the
// whole is about size bytes (at least one unit).
func fill(prefix, unit, sep, suffix string, size int) []byte {
	return fillN(prefix, unit, sep, suffix, max(1, (size-len(prefix)-len(suffix))/(len(unit)+len(sep))))
}

// fillN is n units, separated by sep, between prefix and suffix.
func fillN(prefix, unit, sep, suffix string, n int) []byte {
	var b strings.Builder
	b.Grow(len(prefix) + n*(len(unit)+len(sep)) + len(suffix))
	b.WriteString(prefix)
	for i := range n {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(unit)
	}
	b.WriteString(suffix)
	return []byte(b.String())
}

// bigInfo is a model whose input is as large as a size-byte body of FP32
// numbers of width bytes each (a separator included) can fill with
// MaxElements (16) images: the worst case where the shape matches.
func bigInfo(size, width int) *wire.Info {
	side := max(1, int(math.Sqrt(float64(size/width/16/3))))
	return &wire.Info{Model: "m", InputName: "data", OutputName: "out", Channels: 3, Height: side, Width: side,
		Classes: 5, Labels: []string{"a", "b", "c", "d", "e"}}
}

// ok is a valid input, for bodies whose hostile part lies elsewhere.
const ok = `{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}`

// worstCase is a family of hostile bodies of about size bytes each.
type worstCase struct {
	name string
	gen  func(size int) (body, hlen []byte, info *wire.Info)
}

func plain(body []byte) ([]byte, []byte, *wire.Info) { return body, nil, info }

// worstCases: everything a body can hold many of, or deeply, or long.
var worstCases = []worstCase{
	{"empty inputs", func(n int) ([]byte, []byte, *wire.Info) { return plain(fill(`{"inputs":[`, `{}`, ",", `]}`, n)) }},
	{"null inputs", func(n int) ([]byte, []byte, *wire.Info) { return plain(fill(`{"inputs":[`, `null`, ",", `]}`, n)) }},
	{"many outputs", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[`+ok+`],"outputs":[`, `{"name":"classification"}`, ",", `]}`, n))
	}},
	{"outputs before inputs", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"outputs":[`, `{}`, ",", `],"inputs":[`+ok+`]}`, n))
	}},
	{"input parameters", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="],"parameters":{`, `"k":0`, ",", `}}]}`, n))
	}},
	{"output parameters", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[`+ok+`],"outputs":[{"name":"classification","parameters":{`, `"k":0`, ",", `}}]}`, n))
	}},
	{"many unknown fields", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{`, `"k":{}`, ",", `,"inputs":[`+ok+`]}`, n))
	}},
	{"repeated inputs field", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{`, `"inputs":[`+ok+`]`, ",", `}`, n))
	}},
	{"escaped keys", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{`, `"\u0069d":"\u0069"`, ",", `,"inputs":[`+ok+`]}`, n))
	}},
	{"long key", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"`, `k`, "", `":0,"inputs":[`+ok+`]}`, n))
	}},
	{"deep arrays", func(n int) ([]byte, []byte, *wire.Info) {
		return plain([]byte(`{"x":` + strings.Repeat("[", n/2) + strings.Repeat("]", n/2) + `}`))
	}},
	{"deep objects", func(n int) ([]byte, []byte, *wire.Info) {
		return plain([]byte(`{"x":` + strings.Repeat(`{"a":`, n/6) + "0" + strings.Repeat("}", n/6) + `}`))
	}},
	{"deep parameters", func(n int) ([]byte, []byte, *wire.Info) {
		return plain([]byte(`{"inputs":[{"parameters":{"a":` + strings.Repeat("[", n/2) + strings.Repeat("]", n/2) + `}}]}`))
	}},
	{"long shape", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","datatype":"BYTES","data":["aGk="],"shape":[`, `1`, ",", `]}]}`, n))
	}},
	{"long number in shape", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","datatype":"BYTES","data":["aGk="],"shape":[`, `9`, "", `]}]}`, n))
	}},
	{"FP32 data, shape mismatch", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[`, `0`, ",", `]}]}`, n))
	}},
	{"FP32 data before shape", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"data":[`, `0`, ",", `],"name":"data","shape":[1,3,2,2],"datatype":"FP32"}]}`, n))
	}},
	{"FP32 data, no shape", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"data","datatype":"FP32","data":[`, `0`, ",", `]}]}`, n))
	}},
	{"FP32 data of nulls", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[`, `null`, ",", `]}]}`, n))
	}},
	{"FP32 data, shape matches", func(n int) ([]byte, []byte, *wire.Info) {
		in := bigInfo(n, 2)
		v := 16 * in.ImageSize()
		shape := "[16,3," + strconv.Itoa(in.Height) + "," + strconv.Itoa(in.Width) + "]"
		return fillN(`{"inputs":[{"name":"data","shape":`+shape+`,"datatype":"FP32","data":[`, `0`, ",", `]}]}`, v), nil, in
	}},
	{"FP32 data before shape, shape matches", func(n int) ([]byte, []byte, *wire.Info) {
		in := bigInfo(n, 2)
		v := 16 * in.ImageSize()
		shape := "[16,3," + strconv.Itoa(in.Height) + "," + strconv.Itoa(in.Width) + "]"
		return fillN(`{"inputs":[{"data":[`, `0`, ",", `],"name":"data","shape":`+shape+`,"datatype":"FP32"}]}`, v), nil, in
	}},
	{"FP32 long numbers, shape matches", func(n int) ([]byte, []byte, *wire.Info) {
		num := "0." + strings.Repeat("0", 31) + "1" // 34 bytes: over the stack buffer of a conversion
		in := bigInfo(n, len(num)+1)
		v := 16 * in.ImageSize()
		shape := "[16,3," + strconv.Itoa(in.Height) + "," + strconv.Itoa(in.Width) + "]"
		return fillN(`{"inputs":[{"name":"data","shape":`+shape+`,"datatype":"FP32","data":[`, num, ",", `]}]}`, v), nil, in
	}},
	{"FP32 binary, shape matches", func(n int) ([]byte, []byte, *wire.Info) {
		in := bigInfo(n, 4)
		size := 4 * 16 * in.ImageSize()
		header := `{"inputs":[{"name":"data","shape":[16,3,` + strconv.Itoa(in.Height) + "," + strconv.Itoa(in.Width) +
			`],"datatype":"FP32","parameters":{"binary_data_size":` + strconv.Itoa(size) + `}}]}`
		return append([]byte(header), make([]byte, size)...), []byte(strconv.Itoa(len(header))), in
	}},
	{"BYTES many elements", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[`, `""`, ",", `]}]}`, n))
	}},
	{"BYTES many objects", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[`, `{"b64":""}`, ",", `]}]}`, n))
	}},
	{"BYTES object of many fields", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[{`, `"x":""`, ",", `,"b64":"aGk="}]}]}`, n))
	}},
	{"BYTES one long element", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["`, "AAAA", "", `"]}]}`, n))
	}},
	{"BYTES 16 long elements", func(n int) ([]byte, []byte, *wire.Info) {
		e := `"` + base64.StdEncoding.EncodeToString(make([]byte, max(3, n/16/4*3))) + `"`
		return plain(fillN(`{"inputs":[{"name":"image","shape":[16],"datatype":"BYTES","data":[`, e, ",", `]}]}`, 16))
	}},
	{"BYTES escaped element", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["`, `A\/\/A`, "", `"]}]}`, n))
	}},
	{"BYTES long element, one escape", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["\/AAA`, "AAAA", "", `"]}]}`, n))
	}},
	{"BYTES non-ASCII escaped element", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["\n`, "\xff", "", `"]}]}`, n))
	}},
	{"BYTES binary, many empty elements", func(n int) ([]byte, []byte, *wire.Info) {
		bin := make([]byte, n/4*4)
		header := `{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":` + strconv.Itoa(len(bin)) + `}}]}`
		return append([]byte(header), bin...), []byte(strconv.Itoa(len(header))), info
	}},
	{"BYTES binary, 16 elements", func(n int) ([]byte, []byte, *wire.Info) {
		var bin []byte
		for range 16 {
			bin = binary.LittleEndian.AppendUint32(bin, uint32(n/16))
			bin = append(bin, make([]byte, n/16)...)
		}
		header := `{"inputs":[{"name":"image","shape":[16],"datatype":"BYTES","parameters":{"binary_data_size":` + strconv.Itoa(len(bin)) + `}}]}`
		return append([]byte(header), bin...), []byte(strconv.Itoa(len(header))), info
	}},
	{"long id", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"id":"`, `i`, "", `","inputs":[`+ok+`]}`, n))
	}},
	{"long escaped id", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"id":"`, `\u00e9`, "", `","inputs":[`+ok+`]}`, n))
	}},
	{"long datatype", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"name":"image","shape":[1],"data":["aGk="],"datatype":"`, `\u00e9`, "", `"}]}`, n))
	}},
	{"long input name", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[{"shape":[1],"datatype":"BYTES","data":["aGk="],"name":"`, `\n`, "", `"}]}`, n))
	}},
	{"long output name", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[`+ok+`],"outputs":[{"name":"`, `\n`, "", `"}]}`, n))
	}},
	{"long unknown string", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"x":"`, `\n`, "", `","inputs":[`+ok+`]}`, n))
	}},
	{"long classification", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"inputs":[`+ok+`],"outputs":[{"name":"classification","parameters":{"classification":`, `1`, "", `}}]}`, n))
	}},
	{"numbers in an unknown field", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(`{"x":[`, `0`, ",", `],"inputs":[`+ok+`]}`, n))
	}},
	{"whitespace", func(n int) ([]byte, []byte, *wire.Info) {
		return plain(fill(``, ` `, "", `{"inputs":[`+ok+`]}`, n))
	}},
}

// TestParseInferAllocationBound: no body makes ParseInfer allocate more
// than boundK times its size plus boundC.
func TestParseInferAllocationBound(t *testing.T) {
	sizes := []int{64 << 10, 1 << 20, 10 << 20}
	if testing.Short() || testenv.RaceEnabled() { // the race detector makes 10 MiB slow
		sizes = sizes[:2]
	}
	for _, wc := range worstCases {
		for _, size := range sizes {
			body, hlen, in := wc.gen(size)
			var err error
			got := testenv.AllocatedBy(func() { _, err = ParseInfer(body, hlen, in, Limits{}) })
			limit := uint64(boundK*len(body) + boundC)
			t.Logf("%-38s %8d bytes: %10d allocated (%.2fx), %v", wc.name, len(body), got, float64(got)/float64(len(body)), err)
			if got > limit {
				t.Errorf("%s, %d bytes: allocated %d bytes (%.2fx), over %d", wc.name, len(body), got, float64(got)/float64(len(body)), limit)
			}
		}
	}
}
