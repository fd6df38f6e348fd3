package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// graphIO is what the engine reads from an ONNX file before handing it to
// ONNX Runtime: the graph's real inputs and outputs and the model metadata.
type graphIO struct {
	inputs, outputs []tensorInfo
	metadata        map[string]string
	// ops counts the graph's nodes by operator type.
	ops map[string]int
}

// tensorInfo is a graph input or output. A dimension < 0 is symbolic.
type tensorInfo struct {
	name     string
	elemType int64
	dims     []int64
}

var errTruncated = errors.New("truncated protobuf")

// fields calls fn for each field of the protobuf message b. For varint
// fields v holds the value; for length-delimited fields data holds the bytes.
func fields(b []byte, fn func(field int, v uint64, data []byte) error) error {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return errTruncated
		}
		b = b[n:]
		field, wireType := int(key>>3), key&7
		var v uint64
		var data []byte
		switch wireType {
		case 0:
			v, n = binary.Uvarint(b)
			if n <= 0 {
				return errTruncated
			}
			b = b[n:]
		case 1, 5:
			size := 8
			if wireType == 5 {
				size = 4
			}
			if len(b) < size {
				return errTruncated
			}
			b = b[size:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errTruncated
			}
			data = b[n : n+int(l)]
			b = b[n+int(l):]
		default:
			return fmt.Errorf("unsupported protobuf wire type %d", wireType)
		}
		if err := fn(field, v, data); err != nil {
			return err
		}
	}
	return nil
}

// readGraphIO parses an ONNX ModelProto. Inputs that are also initializers
// (listed as inputs by models with IR version < 4) are dropped.
func readGraphIO(model []byte) (*graphIO, error) {
	io := &graphIO{metadata: map[string]string{}, ops: map[string]int{}}
	var graph []byte
	err := fields(model, func(f int, _ uint64, data []byte) error {
		switch f {
		case 7:
			graph = data
		case 14:
			var k, v string
			if err := fields(data, func(f int, _ uint64, d []byte) error {
				switch f {
				case 1:
					k = string(d)
				case 2:
					v = string(d)
				}
				return nil
			}); err != nil {
				return err
			}
			io.metadata[k] = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot parse ONNX model: %w", err)
	}
	if graph == nil {
		return nil, errors.New("cannot parse ONNX model: it has no graph")
	}
	initializers := map[string]bool{}
	var inputs []tensorInfo
	err = fields(graph, func(f int, _ uint64, data []byte) error {
		switch f {
		case 1: // node: only its operator type matters here
			return fields(data, func(f int, _ uint64, d []byte) error {
				if f == 4 {
					io.ops[string(d)]++
				}
				return nil
			})
		case 5: // initializer: only its name matters here
			return fields(data, func(f int, _ uint64, d []byte) error {
				if f == 8 {
					initializers[string(d)] = true
				}
				return nil
			})
		case 11, 12:
			t, err := readValueInfo(data)
			if err != nil {
				return err
			}
			if f == 11 {
				inputs = append(inputs, t)
			} else {
				io.outputs = append(io.outputs, t)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot parse ONNX graph: %w", err)
	}
	for _, in := range inputs {
		if !initializers[in.name] {
			io.inputs = append(io.inputs, in)
		}
	}
	return io, nil
}

// readValueInfo parses a ValueInfoProto holding a tensor type.
func readValueInfo(b []byte) (tensorInfo, error) {
	var t tensorInfo
	err := fields(b, func(f int, _ uint64, data []byte) error {
		switch f {
		case 1:
			t.name = string(data)
		case 2: // TypeProto
			return fields(data, func(f int, _ uint64, data []byte) error {
				if f != 1 { // only tensor_type
					return nil
				}
				return fields(data, func(f int, v uint64, data []byte) error {
					switch f {
					case 1:
						t.elemType = int64(v)
					case 2: // TensorShapeProto
						return fields(data, func(f int, _ uint64, data []byte) error {
							if f != 1 {
								return nil
							}
							dim := int64(-1)
							err := fields(data, func(f int, v uint64, _ []byte) error {
								if f == 1 {
									dim = int64(v)
								}
								return nil
							})
							t.dims = append(t.dims, dim)
							return err
						})
					}
					return nil
				})
			})
		}
		return nil
	})
	return t, err
}

// graphOps counts the nodes of an ONNX model by operator type.
func graphOps(model []byte) (map[string]int, error) {
	io, err := readGraphIO(model)
	if err != nil {
		return nil, err
	}
	return io.ops, nil
}
