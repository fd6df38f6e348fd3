// Package modelmeta names the batchgate keys of an ONNX model's metadata:
// written by the model generators (modelgen, quantize) and read by the
// engine that loads the model. A leaf package, so that neither side imports
// the other for a key.
package modelmeta

const (
	// Generated is "true" in a model with generated pseudo-random weights.
	Generated = "batchgate.generated"
	// Architecture names a generated model's architecture.
	Architecture = "batchgate.architecture"
	// Note is a human-readable note on a generated model.
	Note = "batchgate.note"
	// Variant is the numeric variant, "fp32" or "int8". The fp32
	// generators do not write it (their bytes, and so their sha256, stay
	// as they were): a model without it is told apart by its graph.
	Variant = "batchgate.variant"
)
