package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/runtime/wire"
)

// The Open Inference Protocol v2 (KServe, Triton), REST.

type oipTensorMeta struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

type oipInput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters"`
	Data       json.RawMessage `json:"data"`
}

type oipRequest struct {
	ID      string     `json:"id"`
	Inputs  []oipInput `json:"inputs"`
	Outputs []struct {
		Name       string         `json:"name"`
		Parameters map[string]any `json:"parameters"`
	} `json:"outputs"`
}

type oipOutput struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
	Data     any     `json:"data"`
}

// v2 routes /v2 and /v2/...; model paths may carry /versions/{v}.
func (a *api) v2(ctx *fasthttp.RequestCtx, path string) (string, reply) {
	switch path {
	case "/v2":
		jsonReply(ctx, 200, map[string]any{"name": "batchgate", "version": a.version,
			"extensions": []string{"classification", "binary_tensor_data"}})
		return path, reply{}
	case "/v2/health/live":
		jsonReply(ctx, 200, map[string]bool{"live": true})
		return path, reply{}
	case "/v2/health/ready":
		ready := a.ready()
		jsonReply(ctx, map[bool]int{true: 200, false: 503}[ready], map[string]bool{"ready": ready})
		return path, reply{}
	}
	rest, ok := strings.CutPrefix(path, "/v2/models/")
	if !ok {
		a.fail(ctx, 404, "no such route; see /docs")
		return "/v2/other", reply{}
	}
	parts := strings.Split(rest, "/")
	name, action := parts[0], ""
	if len(parts) >= 3 && parts[1] == "versions" {
		parts = append(parts[:1], parts[3:]...)
	}
	if len(parts) == 2 {
		action = parts[1]
	} else if len(parts) > 2 {
		a.fail(ctx, 404, "no such route; see /docs")
		return "/v2/other", reply{}
	}
	info, ok := a.svc.rt.lastInfo()
	if !ok {
		a.failErr(ctx, errUnavailable)
		return "/v2/models", reply{}
	}
	if name != info.Model {
		a.fail(ctx, 404, fmt.Sprintf("unknown model %q; this server serves %q", name, info.Model))
		return "/v2/models", reply{}
	}
	switch action {
	case "":
		jsonReply(ctx, 200, map[string]any{
			"name": info.Model, "versions": []string{"1"}, "platform": "onnxruntime_onnx",
			"inputs": []oipTensorMeta{
				{Name: "image", Datatype: "BYTES", Shape: []int64{-1}},
				{Name: info.InputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Channels), int64(info.Height), int64(info.Width)}},
			},
			"outputs":    []oipTensorMeta{{Name: info.OutputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Classes)}}},
			"parameters": map[string]any{"model_sha256": info.ModelSHA256, "generated_weights": info.Generated, "max_batch_size": info.MaxBatchSize},
		})
		return "/v2/models/metadata", reply{}
	case "ready":
		ready := a.ready()
		jsonReply(ctx, map[bool]int{true: 200, false: 503}[ready], map[string]any{"name": info.Model, "ready": ready})
		return "/v2/models/ready", reply{}
	case "infer":
		if !ctx.IsPost() {
			a.fail(ctx, 405, "use POST")
		} else {
			a.infer(ctx, info)
		}
		return "/v2/models/infer", reply{}
	}
	a.fail(ctx, 404, "no such route; see /docs")
	return "/v2/other", reply{}
}

// infer serves POST /v2/models/{name}/infer.
func (a *api) infer(ctx *fasthttp.RequestCtx, info wire.Info) {
	body := ctx.Request.Body()
	if len(body) > a.maxBodyBytes {
		a.fail(ctx, 413, fmt.Sprintf("request body larger than %d bytes", a.maxBodyBytes))
		return
	}
	jsonPart, binPart := body, []byte(nil)
	if h := ctx.Request.Header.Peek("Inference-Header-Content-Length"); h != nil {
		n, err := strconv.Atoi(string(h))
		if err != nil || n < 0 || n > len(body) {
			a.fail(ctx, 400, "Inference-Header-Content-Length must be the length of the JSON part")
			return
		}
		jsonPart, binPart = body[:n], body[n:]
	}
	var req oipRequest
	if err := json.Unmarshal(jsonPart, &req); err != nil {
		a.fail(ctx, 400, "request is not valid JSON: "+err.Error())
		return
	}
	if len(req.Inputs) != 1 {
		a.fail(ctx, 400, fmt.Sprintf("want exactly one input, got %d", len(req.Inputs)))
		return
	}
	classify := 0
	outName := info.OutputName
	for _, o := range req.Outputs {
		if o.Name != info.OutputName && o.Name != "classification" {
			a.fail(ctx, 400, fmt.Sprintf("unknown output %q; the model's output is %q", o.Name, info.OutputName))
			return
		}
		outName = o.Name
		if v, ok := o.Parameters["classification"]; ok {
			k, ok := v.(float64)
			if !ok || k < 1 || k > float64(info.Classes) || k != math.Trunc(k) {
				a.fail(ctx, 400, fmt.Sprintf("classification must be an integer in [1, %d]", info.Classes))
				return
			}
			classify = int(k)
		}
	}
	rctx, cancel, err := a.deadline(ctx)
	if err != nil {
		a.fail(ctx, 400, err.Error())
		return
	}
	defer cancel()

	in := req.Inputs[0]
	var scores [][]float32
	switch in.Datatype {
	case "BYTES":
		images, err := bytesElements(in, binPart)
		if err != nil {
			a.fail(ctx, 400, err.Error())
			return
		}
		scores, err = classifyAll(rctx, images, func(ctx context.Context, b []byte) ([]float32, error) {
			out, err := a.svc.classify(ctx, b, false)
			if err != nil {
				return nil, err
			}
			return out.scores, nil
		})
		if err != nil {
			a.failErr(ctx, err)
			return
		}
	case "FP32":
		tensors, err := fp32Elements(in, binPart, info)
		if err != nil {
			a.fail(ctx, 400, err.Error())
			return
		}
		scores, err = classifyAll(rctx, tensors, func(ctx context.Context, t []float32) ([]float32, error) {
			inf, err := a.svc.infer(ctx, t, info)
			if err != nil {
				return nil, err
			}
			return inf.scores, nil
		})
		if err != nil {
			a.failErr(ctx, err)
			return
		}
	default:
		a.fail(ctx, 400, fmt.Sprintf("input datatype %q: want BYTES (encoded images) or FP32 (preprocessed tensor)", in.Datatype))
		return
	}

	n := int64(len(scores))
	out := oipOutput{Name: outName}
	if classify > 0 {
		// Triton's classification extension: "value:index:label".
		strs := make([]string, 0, len(scores)*classify)
		for _, s := range scores {
			for _, i := range topIndices(s, classify) {
				strs = append(strs, fmt.Sprintf("%f:%d:%s", s[i], i, info.Labels[i]))
			}
		}
		out.Datatype, out.Shape, out.Data = "BYTES", []int64{n, int64(classify)}, strs
	} else {
		flat := make([]float32, 0, len(scores)*info.Classes)
		for _, s := range scores {
			flat = append(flat, s...)
		}
		out.Datatype, out.Shape, out.Data = "FP32", []int64{n, int64(info.Classes)}, flat
	}
	resp := map[string]any{"model_name": info.Model, "model_version": "1", "outputs": []oipOutput{out}}
	if req.ID != "" {
		resp["id"] = req.ID
	}
	jsonReply(ctx, 200, resp)
}

// classifyAll runs fn on every element concurrently (they meet in the
// batcher) and returns the first error.
func classifyAll[T any](ctx context.Context, elems []T, fn func(context.Context, T) ([]float32, error)) ([][]float32, error) {
	out := make([][]float32, len(elems))
	errs := make([]error, len(elems))
	var wg sync.WaitGroup
	for i, e := range elems {
		wg.Go(func() { out[i], errs[i] = fn(ctx, e) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// maxElements bounds the images or tensors in one request.
const maxElements = 64

// bytesElements returns the encoded images of a BYTES input: base64 JSON
// strings (or {"b64": ...} objects), or binary data after the JSON.
func bytesElements(in oipInput, bin []byte) ([][]byte, error) {
	if size, ok := in.Parameters["binary_data_size"]; ok {
		n, ok := size.(float64)
		if !ok || n < 0 || int(n) > len(bin) {
			return nil, errors.New("binary_data_size does not match the binary data")
		}
		var out [][]byte
		rest := bin[:int(n)]
		for len(rest) > 0 {
			if len(rest) < 4 {
				return nil, errors.New("binary BYTES element: truncated length prefix")
			}
			l := int(binary.LittleEndian.Uint32(rest))
			if l > len(rest)-4 {
				return nil, errors.New("binary BYTES element: length beyond the data")
			}
			out = append(out, rest[4:4+l])
			rest = rest[4+l:]
		}
		return checkCount(out, in.Shape)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(in.Data, &raw); err != nil {
		return nil, errors.New(`BYTES input "data" must be an array of base64 strings`)
	}
	out := make([][]byte, 0, len(raw))
	for _, r := range raw {
		var s string
		if err := json.Unmarshal(r, &s); err != nil {
			var obj struct {
				B64 string `json:"b64"`
			}
			if err := json.Unmarshal(r, &obj); err != nil || obj.B64 == "" {
				return nil, errors.New(`BYTES input "data" must be an array of base64 strings`)
			}
			s = obj.B64
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, errors.New("BYTES element is not valid base64")
		}
		out = append(out, b)
	}
	return checkCount(out, in.Shape)
}

func checkCount[T any](elems []T, shape []int64) ([]T, error) {
	if len(elems) == 0 || len(elems) > maxElements {
		return nil, fmt.Errorf("want 1 to %d elements, got %d", maxElements, len(elems))
	}
	if len(shape) == 0 || shape[0] != int64(len(elems)) {
		return nil, fmt.Errorf("shape %v does not match %d elements", shape, len(elems))
	}
	return elems, nil
}

// fp32Elements returns the images of an FP32 [N,C,H,W] input, from a flat
// JSON array or binary little-endian data.
func fp32Elements(in oipInput, bin []byte, info wire.Info) ([][]float32, error) {
	want := []int64{-1, int64(info.Channels), int64(info.Height), int64(info.Width)}
	if len(in.Shape) != 4 || in.Shape[0] < 1 || in.Shape[0] > maxElements ||
		in.Shape[1] != want[1] || in.Shape[2] != want[2] || in.Shape[3] != want[3] {
		return nil, fmt.Errorf("FP32 input shape must be [N,%d,%d,%d] with 1 <= N <= %d, got %v", want[1], want[2], want[3], maxElements, in.Shape)
	}
	n, size := int(in.Shape[0]), info.ImageSize()
	var flat []float32
	if bsize, ok := in.Parameters["binary_data_size"]; ok {
		b, ok := bsize.(float64)
		if !ok || int(b) != n*size*4 || int(b) > len(bin) {
			return nil, fmt.Errorf("binary_data_size must be %d for shape %v", n*size*4, in.Shape)
		}
		flat = make([]float32, n*size)
		for i := range flat {
			flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
		}
	} else if err := json.Unmarshal(in.Data, &flat); err != nil {
		return nil, errors.New(`FP32 input "data" must be a flat array of numbers`)
	}
	if len(flat) != n*size {
		return nil, fmt.Errorf("FP32 input holds %d values, shape %v needs %d", len(flat), in.Shape, n*size)
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = flat[i*size : (i+1)*size]
	}
	return out, nil
}
