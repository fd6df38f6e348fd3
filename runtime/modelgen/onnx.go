package modelgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Model is the part of an ONNX ModelProto that batchgate's tools read and
// rewrite (package quantize turns a float model into its int8 twin). Parse
// reads it from bytes and Marshal writes it back, in the field order this
// package's generators use, so that Marshal(Parse(b)) == b for their models.
// What Model does not represent (training info, functions, value_info,
// sparse initializers, external data) is refused by Parse rather than
// dropped silently.
type Model struct {
	IRVersion       int64
	ProducerName    string
	ProducerVersion string
	Opsets          []Opset
	DocString       string
	Graph           Graph
	// Metadata is metadata_props, in file order.
	Metadata []KV
}

// Opset is one opset_import entry; Domain "" is the default ONNX domain.
type Opset struct {
	Domain  string
	Version int64
}

// KV is one metadata_props entry.
type KV struct{ Key, Value string }

// Graph is a GraphProto: nodes in topological order.
type Graph struct {
	Nodes        []Node
	Name         string
	Initializers []Tensor
	Inputs       []ValueInfo
	Outputs      []ValueInfo
}

// Node is a NodeProto.
type Node struct {
	Inputs  []string
	Outputs []string
	Name    string
	OpType  string
	Domain  string
	Attrs   []Attr
}

// Attribute types (AttributeProto.AttributeType) that Attr holds as values;
// others are kept as their encoded bytes.
const (
	AttrFloat = 1
	AttrInt   = 2
	AttrInts  = 7
)

// Attr is an AttributeProto. Float, int and ints attributes are decoded;
// any other kind is kept verbatim in Raw and written back as it was.
type Attr struct {
	Name string
	Kind int64
	F    float32
	I    int64
	Ints []int64
	Raw  []byte
}

// ONNX tensor element types (TensorProto.DataType) used by batchgate.
const (
	TypeFloat = 1
	TypeUint8 = 2
	TypeInt8  = 3
	TypeInt32 = 6
	TypeInt64 = 7
)

// Tensor is an initializer: its data always as raw little-endian bytes.
type Tensor struct {
	Dims     []int64
	DataType int64
	Name     string
	Raw      []byte
}

// Floats returns a float tensor's values.
func (t *Tensor) Floats() ([]float32, error) {
	if t.DataType != TypeFloat {
		return nil, fmt.Errorf("tensor %q has element type %d, want float (1)", t.Name, t.DataType)
	}
	if len(t.Raw)%4 != 0 || int64(len(t.Raw)/4) != t.Elems() {
		return nil, fmt.Errorf("tensor %q has %d bytes of data for dims %v", t.Name, len(t.Raw), t.Dims)
	}
	vs := make([]float32, len(t.Raw)/4)
	for i := range vs {
		vs[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Raw[4*i:]))
	}
	return vs, nil
}

// Elems is the number of elements that Dims describe.
func (t *Tensor) Elems() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// ValueInfo is a graph input or output: a tensor of ElemType. A nil Shape
// leaves the shape unknown; a Dim with a non-empty Param is symbolic.
type ValueInfo struct {
	Name     string
	ElemType int64
	Shape    []Dim
}

// Dim is one dimension of a ValueInfo's shape.
type Dim struct {
	Value int64
	Param string
}

// Parse reads ONNX model bytes.
func Parse(b []byte) (*Model, error) {
	m := &Model{}
	err := fields(b, func(f, wt int, v uint64, d []byte) error {
		switch f {
		case 1:
			m.IRVersion = int64(v)
		case 2:
			m.ProducerName = string(d)
		case 3:
			m.ProducerVersion = string(d)
		case 6:
			m.DocString = string(d)
		case 8:
			var o Opset
			if err := fields(d, func(f, _ int, v uint64, d []byte) error {
				switch f {
				case 1:
					o.Domain = string(d)
				case 2:
					o.Version = int64(v)
				}
				return nil
			}); err != nil {
				return err
			}
			m.Opsets = append(m.Opsets, o)
		case 7:
			return parseGraph(d, &m.Graph)
		case 14:
			var kv KV
			if err := fields(d, func(f, _ int, _ uint64, d []byte) error {
				switch f {
				case 1:
					kv.Key = string(d)
				case 2:
					kv.Value = string(d)
				}
				return nil
			}); err != nil {
				return err
			}
			m.Metadata = append(m.Metadata, kv)
		case 4, 5: // domain, model_version: not used by batchgate
		default:
			return fmt.Errorf("ModelProto field %d is not supported", f)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot parse ONNX model: %w", err)
	}
	return m, nil
}

func parseGraph(b []byte, g *Graph) error {
	return fields(b, func(f, _ int, _ uint64, d []byte) error {
		switch f {
		case 1:
			n, err := parseNode(d)
			if err != nil {
				return err
			}
			g.Nodes = append(g.Nodes, n)
		case 2:
			g.Name = string(d)
		case 5:
			t, err := parseTensor(d)
			if err != nil {
				return err
			}
			g.Initializers = append(g.Initializers, t)
		case 11, 12:
			vi, err := parseValueInfo(d)
			if err != nil {
				return err
			}
			if f == 11 {
				g.Inputs = append(g.Inputs, vi)
			} else {
				g.Outputs = append(g.Outputs, vi)
			}
		case 10, 13: // doc_string; value_info (shape hints, recomputed by ONNX Runtime)
		default:
			return fmt.Errorf("GraphProto field %d is not supported", f)
		}
		return nil
	})
}

func parseNode(b []byte) (Node, error) {
	var n Node
	err := fields(b, func(f, _ int, _ uint64, d []byte) error {
		switch f {
		case 1:
			n.Inputs = append(n.Inputs, string(d))
		case 2:
			n.Outputs = append(n.Outputs, string(d))
		case 3:
			n.Name = string(d)
		case 4:
			n.OpType = string(d)
		case 7:
			n.Domain = string(d)
		case 5:
			a, err := parseAttr(d)
			if err != nil {
				return err
			}
			n.Attrs = append(n.Attrs, a)
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("node %q: %w", n.Name, err)
	}
	return n, nil
}

func parseAttr(b []byte) (Attr, error) {
	a := Attr{Raw: b}
	err := fields(b, func(f, wt int, v uint64, d []byte) error {
		switch f {
		case 1:
			a.Name = string(d)
		case 20:
			a.Kind = int64(v)
		case 2:
			a.F = math.Float32frombits(uint32(v))
		case 3:
			a.I = int64(v)
		case 8:
			if wt == wireBytes {
				return ints(d, func(v uint64) { a.Ints = append(a.Ints, int64(v)) })
			}
			a.Ints = append(a.Ints, int64(v))
		}
		return nil
	})
	if a.Kind == AttrFloat || a.Kind == AttrInt || a.Kind == AttrInts {
		a.Raw = nil
	}
	return a, err
}

func parseTensor(b []byte) (Tensor, error) {
	var t Tensor
	var floats []float32
	err := fields(b, func(f, wt int, v uint64, d []byte) error {
		switch f {
		case 1:
			if wt == wireBytes {
				return ints(d, func(v uint64) { t.Dims = append(t.Dims, int64(v)) })
			}
			t.Dims = append(t.Dims, int64(v))
		case 2:
			t.DataType = int64(v)
		case 8:
			t.Name = string(d)
		case 9:
			t.Raw = d
		case 4: // float_data, packed or not
			if wt == wireBytes {
				if len(d)%4 != 0 {
					return errTruncated
				}
				for i := 0; i < len(d); i += 4 {
					floats = append(floats, math.Float32frombits(binary.LittleEndian.Uint32(d[i:])))
				}
			} else {
				floats = append(floats, math.Float32frombits(uint32(v)))
			}
		case 12: // doc_string
		default:
			return fmt.Errorf("TensorProto field %d (external or typed data) is not supported", f)
		}
		return nil
	})
	if err != nil {
		return t, fmt.Errorf("initializer %q: %w", t.Name, err)
	}
	if floats != nil {
		t.Raw = float32Bytes(floats)
	}
	return t, nil
}

func parseValueInfo(b []byte) (ValueInfo, error) {
	var vi ValueInfo
	err := fields(b, func(f, _ int, _ uint64, d []byte) error {
		switch f {
		case 1:
			vi.Name = string(d)
		case 2: // TypeProto
			return fields(d, func(f, _ int, _ uint64, d []byte) error {
				if f != 1 {
					return fmt.Errorf("value %q: only tensor types are supported", vi.Name)
				}
				return fields(d, func(f, _ int, v uint64, d []byte) error {
					switch f {
					case 1:
						vi.ElemType = int64(v)
					case 2:
						vi.Shape = []Dim{}
						return fields(d, func(f, _ int, _ uint64, d []byte) error {
							var dim Dim
							err := fields(d, func(f, _ int, v uint64, d []byte) error {
								switch f {
								case 1:
									dim.Value = int64(v)
								case 2:
									dim.Param = string(d)
								}
								return nil
							})
							vi.Shape = append(vi.Shape, dim)
							return err
						})
					}
					return nil
				})
			})
		}
		return nil
	})
	return vi, err
}

// Marshal returns the model as ONNX bytes.
func (m *Model) Marshal() []byte {
	var p pb
	p.int(1, m.IRVersion)
	if m.ProducerName != "" {
		p.str(2, m.ProducerName)
	}
	if m.ProducerVersion != "" {
		p.str(3, m.ProducerVersion)
	}
	for _, o := range m.Opsets {
		p.msg(8, func(q *pb) { q.str(1, o.Domain); q.int(2, o.Version) })
	}
	if m.DocString != "" {
		p.str(6, m.DocString)
	}
	p.msg(7, func(q *pb) { m.Graph.marshal(q) })
	for _, kv := range m.Metadata {
		p.msg(14, func(q *pb) { q.str(1, kv.Key); q.str(2, kv.Value) })
	}
	return p.b
}

func (g *Graph) marshal(p *pb) {
	for _, n := range g.Nodes {
		p.msg(1, func(q *pb) { n.marshal(q) })
	}
	p.str(2, g.Name)
	for _, t := range g.Initializers {
		p.msg(5, func(q *pb) {
			q.packedInts(1, t.Dims)
			q.int(2, t.DataType)
			q.str(8, t.Name)
			q.bytes(9, t.Raw)
		})
	}
	for _, vi := range g.Inputs {
		p.msg(11, func(q *pb) { vi.marshal(q) })
	}
	for _, vi := range g.Outputs {
		p.msg(12, func(q *pb) { vi.marshal(q) })
	}
}

func (n *Node) marshal(p *pb) {
	for _, in := range n.Inputs {
		p.str(1, in)
	}
	for _, out := range n.Outputs {
		p.str(2, out)
	}
	p.str(3, n.Name)
	p.str(4, n.OpType)
	if n.Domain != "" {
		p.str(7, n.Domain)
	}
	for _, a := range n.Attrs {
		if a.Raw != nil {
			p.bytes(5, a.Raw)
			continue
		}
		p.msg(5, func(q *pb) {
			q.str(1, a.Name)
			q.int(20, a.Kind)
			switch a.Kind {
			case AttrInt:
				q.int(3, a.I)
			case AttrFloat:
				q.fixed32(2, math.Float32bits(a.F))
			case AttrInts:
				q.packedInts(8, a.Ints)
			}
		})
	}
}

func (vi *ValueInfo) marshal(p *pb) {
	p.str(1, vi.Name)
	p.msg(2, func(tp *pb) {
		tp.msg(1, func(t *pb) {
			t.int(1, vi.ElemType)
			if vi.Shape == nil {
				return
			}
			t.msg(2, func(s *pb) {
				for _, d := range vi.Shape {
					s.msg(1, func(q *pb) {
						if d.Param != "" {
							q.str(2, d.Param)
						} else {
							q.int(1, d.Value)
						}
					})
				}
			})
		})
	})
}

// Attr returns the node's attribute called name, if it has one.
func (n *Node) Attr(name string) (Attr, bool) {
	for _, a := range n.Attrs {
		if a.Name == name {
			return a, true
		}
	}
	return Attr{}, false
}

// IntAttr, IntsAttr and FloatAttr build attributes.
func IntAttr(name string, v int64) Attr     { return Attr{Name: name, Kind: AttrInt, I: v} }
func IntsAttr(name string, v ...int64) Attr { return Attr{Name: name, Kind: AttrInts, Ints: v} }
func FloatAttr(name string, v float32) Attr { return Attr{Name: name, Kind: AttrFloat, F: v} }

var errTruncated = errors.New("truncated protobuf")

// fields calls fn for each field of the protobuf message b: wt is the wire
// type; varint and fixed32 values are in v, length-delimited ones in d.
func fields(b []byte, fn func(field, wt int, v uint64, d []byte) error) error {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return errTruncated
		}
		b = b[n:]
		field, wt := int(key>>3), int(key&7)
		var v uint64
		var d []byte
		switch wt {
		case wireVarint:
			v, n = binary.Uvarint(b)
			if n <= 0 {
				return errTruncated
			}
			b = b[n:]
		case 5: // fixed32
			if len(b) < 4 {
				return errTruncated
			}
			v = uint64(binary.LittleEndian.Uint32(b))
			b = b[4:]
		case 1: // fixed64
			if len(b) < 8 {
				return errTruncated
			}
			v = binary.LittleEndian.Uint64(b)
			b = b[8:]
		case wireBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errTruncated
			}
			d = b[n : n+int(l)]
			b = b[n+int(l):]
		default:
			return fmt.Errorf("unsupported protobuf wire type %d", wt)
		}
		if err := fn(field, wt, v, d); err != nil {
			return err
		}
	}
	return nil
}

// ints calls fn for each varint of a packed repeated field.
func ints(b []byte, fn func(uint64)) error {
	for len(b) > 0 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return errTruncated
		}
		fn(v)
		b = b[n:]
	}
	return nil
}
