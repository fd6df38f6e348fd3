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
	return map[string]any{"name": ServerName, "version": version, "extensions": Extensions()}
}

// ServerName is the server's name in its metadata.
const ServerName = "batchgate"

// Extensions are the protocol extensions served.
func Extensions() []string { return []string{"classification", "binary_tensor_data", "statistics"} }

// Platform is the models' platform in their metadata.
const Platform = "onnxruntime_onnx"

// Inputs are a model's inputs in its metadata: the BYTES input takes
// encoded images, the FP32 input preprocessed tensors.
func Inputs(info *wire.Info) []TensorMeta {
	return []TensorMeta{
		{Name: "image", Datatype: "BYTES", Shape: []int64{-1}},
		{Name: info.InputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Channels), int64(info.Height), int64(info.Width)}},
	}
}

// Outputs are a model's outputs in its metadata.
func Outputs(info *wire.Info) []TensorMeta {
	return []TensorMeta{{Name: info.OutputName, Datatype: "FP32", Shape: []int64{-1, int64(info.Classes)}}}
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
		"name": info.Model, "versions": []string{Version}, "platform": Platform,
		"inputs": Inputs(info), "outputs": Outputs(info), "parameters": params,
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
		out.Datatype, out.Shape, out.Data = "BYTES", []int64{n, int64(req.Classify)}, Classifications(info, req.Classify, scores)
	} else {
		flat, err := FlatScores(info, scores)
		if err != nil {
			return nil, err
		}
		out.Datatype, out.Shape, out.Data = "FP32", []int64{n, int64(info.Classes)}, flat
	}
	resp := map[string]any{"model_name": info.Model, "model_version": version, "outputs": []output{out}}
	if req.ID != "" {
		resp["id"] = req.ID
	}
	return json.Marshal(resp)
}

// Classifications are the classification extension's strings
// "score:index:label" of the k best classes of each image, best first
// (the score is the raw model output): shape [len(scores), k].
func Classifications(info *wire.Info, k int, scores [][]float32) []string {
	strs := make([]string, 0, len(scores)*k)
	for _, s := range scores {
		for _, i := range topk.Indices(s, k) {
			strs = append(strs, strconv.FormatFloat(float64(s[i]), 'f', 6, 32)+":"+strconv.Itoa(i)+":"+info.Labels[i])
		}
	}
	return strs
}

// FlatScores are every score of each image, one after another: shape
// [len(scores), info.Classes]. A non-finite score is an error.
func FlatScores(info *wire.Info, scores [][]float32) ([]float32, error) {
	flat := make([]float32, 0, len(scores)*info.Classes)
	for _, s := range scores {
		for _, v := range s {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("the model returned a non-finite score")
			}
		}
		flat = append(flat, s...)
	}
	return flat, nil
}
