package oip

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/batchgate/batchgate/proxy/topk"
	"github.com/batchgate/batchgate/runtime/wire"
)

// Version is the only model version served: one model per runtime.
const Version = "1"

// TensorMeta describes an input or output in model metadata.
type TensorMeta struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

// ServerMetadata is GET /v2.
func ServerMetadata(version string) map[string]any {
	return map[string]any{"name": "batchgate", "version": version,
		"extensions": []string{"classification", "binary_tensor_data"}}
}

// ModelMetadata is GET /v2/models/{name}: the BYTES input takes encoded
// images, the FP32 input preprocessed tensors.
func ModelMetadata(info *wire.Info) map[string]any {
	params := map[string]any{"model_sha256": info.ModelSHA256, "generated_weights": info.Generated,
		"max_batch_size": info.MaxBatchSize}
	if info.Variant != "" {
		params["variant"] = info.Variant
	}
	return map[string]any{
		"name": info.Model, "versions": []string{Version}, "platform": "onnxruntime_onnx",
		"inputs": []TensorMeta{
			{Name: "image", Datatype: "BYTES", Shape: []int64{-1}},
			{Name: info.InputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Channels), int64(info.Height), int64(info.Width)}},
		},
		"outputs":    []TensorMeta{{Name: info.OutputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Classes)}}},
		"parameters": params,
	}
}

type output struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
	Data     any     `json:"data"`
}

// InferResponse encodes the answer to req: scores[i] are the model's
// scores for image i. With req.Classify it holds Triton's classification
// strings "score:index:label" of the best classes (the score is the raw
// model output); otherwise every score.
func InferResponse(info *wire.Info, req *Request, scores [][]float32) ([]byte, error) {
	return InferResponseAt(info, Version, req, scores)
}

// InferResponseAt is InferResponse from the model's version version (a
// routing file's version name).
func InferResponseAt(info *wire.Info, version string, req *Request, scores [][]float32) ([]byte, error) {
	n := int64(len(scores))
	out := output{Name: req.Output}
	if req.Classify > 0 {
		strs := make([]string, 0, len(scores)*req.Classify)
		for _, s := range scores {
			for _, i := range topk.Indices(s, req.Classify) {
				strs = append(strs, strconv.FormatFloat(float64(s[i]), 'f', 6, 32)+":"+strconv.Itoa(i)+":"+info.Labels[i])
			}
		}
		out.Datatype, out.Shape, out.Data = "BYTES", []int64{n, int64(req.Classify)}, strs
	} else {
		flat := make([]float32, 0, len(scores)*info.Classes)
		for _, s := range scores {
			for _, v := range s {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return nil, fmt.Errorf("the model returned a non-finite score")
				}
			}
			flat = append(flat, s...)
		}
		out.Datatype, out.Shape, out.Data = "FP32", []int64{n, int64(info.Classes)}, flat
	}
	resp := map[string]any{"model_name": info.Model, "model_version": version, "outputs": []output{out}}
	if req.ID != "" {
		resp["id"] = req.ID
	}
	return json.Marshal(resp)
}
