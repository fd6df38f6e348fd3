package oip

import (
	"encoding/base64"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/runtime/wire"
)

// resnet50 is the served model's contract.
var resnet50 = &wire.Info{Model: "resnet50", InputName: "data", OutputName: "resnetv17_dense0_fwd",
	Channels: 3, Height: 224, Width: 224, Classes: 1000}

type benchBody struct {
	name string
	body []byte
}

// benchBodies are typical requests: n base64 images (110 KiB of random
// bytes each, the size of a photo's JPEG), and one preprocessed image as an
// FP32 JSON array.
func benchBodies() []benchBody {
	rng := rand.New(rand.NewPCG(1, 2))
	images := func(n int) []byte {
		elems := make([]string, n)
		for i := range elems {
			img := make([]byte, 110<<10)
			for j := range img {
				img[j] = byte(rng.Uint32())
			}
			elems[i] = `"` + base64.StdEncoding.EncodeToString(img) + `"`
		}
		return []byte(`{"id":"bench","inputs":[{"name":"image","shape":[` + strconv.Itoa(n) + `],"datatype":"BYTES","data":[` +
			strings.Join(elems, ",") + `]}],"outputs":[{"name":"classification","parameters":{"classification":5}}]}`)
	}
	values := make([]string, resnet50.ImageSize())
	for i := range values {
		values[i] = strconv.FormatFloat(rng.NormFloat64(), 'f', 6, 32)
	}
	fp32 := []byte(`{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","data":[` + strings.Join(values, ",") + `]}]}`)
	return []benchBody{
		{name: "1 image base64", body: images(1)},
		{name: "16 images base64", body: images(16)},
		{name: "FP32 JSON", body: fp32},
	}
}

func BenchmarkParseInfer(b *testing.B) {
	for _, bc := range benchBodies() {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				if _, err := ParseInfer(bc.body, nil, resnet50, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
