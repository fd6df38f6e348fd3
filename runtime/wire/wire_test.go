package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func TestResultRoundTrip(t *testing.T) {
	in := &Result{ID: 42, ExecNanos: 1234, Classes: 3,
		Scores: []float32{1, 2, 3, 0, 0, 0, -1.5, 0.25, 9},
		Errors: []string{"", "bad item", ""}}
	frame := AppendResult(nil, in)
	typ, body, err := ReadFrame(bufio.NewReader(bytes.NewReader(frame)), len(frame), nil)
	if err != nil || typ != TypeResult {
		t.Fatalf("ReadFrame = %d, %v; want a result", typ, err)
	}
	got, err := ParseResult(body, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("round trip = %+v, want %+v", got, in)
	}
}

func TestBatchRoundTrip(t *testing.T) {
	imgs := []float32{1, 2, 3, 4, 5, 6}
	tc := TraceContext{TraceID: [16]byte{1, 2, 3, 15: 16}, SpanID: [8]byte{9, 7: 8}, Flags: 1}
	for _, want := range []TraceContext{{}, tc} {
		frame := AppendBatch(nil, 9, 2, imgs, want)
		typ, body, err := ReadFrame(bufio.NewReader(bytes.NewReader(frame)), len(frame), nil)
		if err != nil || typ != TypeBatch {
			t.Fatalf("ReadFrame = %d, %v", typ, err)
		}
		if info := (Info{Channels: 1, Height: 1, Width: 3, MaxBatchSize: 2}); len(frame)-4 > info.MaxBatchFrame() {
			t.Errorf("frame of %d bytes over MaxBatchFrame %d", len(frame)-4, info.MaxBatchFrame())
		}
		b, code, err := ParseBatch(body, 3, 2)
		if err != nil || code != 0 || b.ID != 9 || b.N != 2 || !reflect.DeepEqual(b.Images, imgs) || b.Trace != want {
			t.Errorf("ParseBatch = %+v, %d, %v; want trace %+v", b, code, err, want)
		}
		if _, code, _ := ParseBatch(body, 3, 1); code != CodeTooLarge {
			t.Errorf("batch of 2 with max 1: code %d, want %d", code, CodeTooLarge)
		}
	}
}

// TestBatchTrailer: a trailer of an unknown version, or of the wrong size,
// is refused with CodeBadRequest, never read as tensor data.
func TestBatchTrailer(t *testing.T) {
	tc := TraceContext{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Flags: 1}
	body := AppendBatch(nil, 9, 1, []float32{1, 2, 3}, tc)[5:]
	for _, tt := range []struct {
		name string
		body []byte
	}{
		{"unknown tag", func() []byte { b := bytes.Clone(body); b[12+12] = 2; return b }()},
		{"short trailer", body[:len(body)-1]},
		{"long trailer", append(bytes.Clone(body), 0)},
	} {
		if _, code, err := ParseBatch(tt.body, 3, 1); err == nil || code != CodeBadRequest {
			t.Errorf("%s: ParseBatch = %d, %v; want CodeBadRequest", tt.name, code, err)
		}
	}
}

func TestReadFrameLimit(t *testing.T) {
	// A frame announcing 1 GiB must be refused before allocating it.
	r := bufio.NewReader(bytes.NewReader([]byte{0x40, 0, 0, 0, TypeBatch}))
	if _, _, err := ReadFrame(r, 1<<20, nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("ReadFrame of a 1 GiB frame = %v, want ErrFrameTooLarge", err)
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, and a
// frame that decodes must re-encode to the same bytes, whatever its type.
// Info and Stats carry JSON, whose spacing and key order a decoder drops:
// for them the re-encoding must keep every value and be a fixed point
// (TestSeedsRoundTrip checks that what the encoder wrote comes back byte
// for byte).
func FuzzDecode(f *testing.F) {
	for _, seed := range seedFrames(f) {
		f.Add(seed)
	}
	f.Add([]byte{0, 0, 0, 1, TypeResult})
	f.Add(AppendFrame(nil, TypeInfo, func(b []byte) []byte { return append(b, ` { "model" : "m", "classes": 2 } `...) }))
	f.Add(AppendFrame(nil, TypeStats, func(b []byte) []byte {
		return append(binary.BigEndian.AppendUint64(b, 7), `{"items":3, "queued":1}`...)
	}))
	// A trace trailer holding no trace: AppendBatch would drop it.
	f.Add(AppendFrame(nil, TypeBatch, func(b []byte) []byte {
		b = append(b, AppendBatch(nil, 3, 1, []float32{1, 2, 3}, TraceContext{})[5:]...)
		return append(append(b, TraceContextVersion), make([]byte, traceTrailer-1)...)
	}))
	f.Add(func() []byte {
		b := AppendBatch(nil, 3, 1, []float32{1, 2, 3}, TraceContext{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Flags: 1})
		clear(b[len(b)-9 : len(b)-1]) // zero span id
		return b
	}())
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, err := ReadFrame(bufio.NewReader(bytes.NewReader(data)), 1<<16, nil)
		if err != nil {
			return
		}
		roundTrip(t, typ, body, data[:4+1+len(body)], false)
	})
}

// TestSeedsRoundTrip: every frame the encoders write decodes and
// re-encodes to the same bytes, JSON frames included.
func TestSeedsRoundTrip(t *testing.T) {
	for _, frame := range seedFrames(t) {
		typ, body, err := ReadFrame(bufio.NewReader(bytes.NewReader(frame)), 1<<16, nil)
		if err != nil {
			t.Fatalf("frame %x: %v", frame, err)
		}
		roundTrip(t, typ, body, frame, true)
	}
}

// seedFrames is one frame of every type, as the encoders write them, for
// images of 3 values, 2 classes and batches of at most 8.
func seedFrames(t testing.TB) [][]byte {
	info, err := AppendJSON(nil, TypeInfo, &Info{ProtocolVersion: Version, Model: "m", Channels: 3, Height: 1, Width: 1,
		Classes: 2, Labels: []string{"a", "b"}, MaxBatchSize: 8, Ready: true, Mean: [3]float32{0.5, 0.25, 1}, TraceContext: 1})
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{
		AppendHello(nil, Version),
		info,
		AppendBatch(nil, 3, 1, []float32{1, 2, 3}, TraceContext{}),
		AppendBatch(nil, 3, 2, []float32{1, 2, 3, -4, 5e-9, 6}, TraceContext{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Flags: 1}),
		AppendResult(nil, &Result{ID: 1, Classes: 2, Scores: []float32{1, 2, 0, 0}, Errors: []string{"", "bad"}}),
		AppendError(nil, &Error{ID: 4, Code: CodeInternal, Message: "x"}),
		AppendStatsRequest(nil, 1<<40+5),
		AppendStats(nil, 6, Stats{Batches: 1, Items: 2, Queued: 3, RunningMs: 4, IdleMs: 5}),
	}
}

// roundTrip decodes body, a frame of type typ, with the decoder its
// receiver uses and checks that the frame re-encodes to the same bytes
// (JSON: to the same values, a fixed point). With mustDecode, a body that
// does not decode fails too.
func roundTrip(t *testing.T, typ byte, body, frame []byte, mustDecode bool) {
	t.Helper()
	same := func(what string, again []byte) {
		t.Helper()
		if !bytes.Equal(again, frame) {
			t.Errorf("%s re-encodes differently:\n got %x\nwant %x", what, again, frame)
		}
	}
	var err error
	switch typ {
	case TypeHello:
		var v uint16
		if v, err = ParseHello(body); err == nil {
			same("hello", AppendHello(nil, v))
		}
	case TypeInfo:
		var info Info
		if err = json.Unmarshal(body, &info); err == nil {
			again := jsonFixedPoint(t, "info", &info, func(i *Info) []byte {
				b, err := AppendJSON(nil, TypeInfo, i)
				if err != nil {
					t.Fatalf("info %+v does not encode: %v", i, err)
				}
				return b
			})
			if mustDecode {
				same("info", again)
			}
		}
	case TypeBatch:
		var b Batch
		if b, _, err = ParseBatch(body, 3, 8); err == nil {
			if len(b.Images) != b.N*3 {
				t.Errorf("batch of %d holds %d values", b.N, len(b.Images))
			}
			same("batch", AppendBatch(nil, b.ID, b.N, b.Images, b.Trace))
		}
	case TypeResult:
		var r *Result
		if r, err = ParseResult(body, 2, 8); err == nil {
			same("result", AppendResult(nil, r))
		}
	case TypeError:
		var e *Error
		if e, err = ParseError(body); err == nil {
			same("error", AppendError(nil, e))
		}
	case TypeStatsRequest:
		var id uint64
		if id, err = ParseStatsRequest(body); err == nil {
			same("stats request", AppendStatsRequest(nil, id))
		}
	case TypeStats:
		var id uint64
		var st Stats
		if id, st, err = ParseStats(body); err == nil {
			again := jsonFixedPoint(t, "stats", &st, func(s *Stats) []byte { return AppendStats(nil, id, *s) })
			if gotID, _ := ParseID(again[5:]); gotID != id {
				t.Errorf("stats id %d re-encodes as %d", id, gotID)
			}
			if mustDecode {
				same("stats", again)
			}
		}
	default:
		err = fmt.Errorf("unknown message type %d", typ)
	}
	if mustDecode && err != nil {
		t.Errorf("frame %x of type %d, as its encoder wrote it, does not decode: %v", frame, typ, err)
	}
}

// jsonFixedPoint checks that v, decoded from a frame, re-encodes to a frame
// that decodes to the same value and re-encodes to the same bytes; it
// returns the re-encoded frame.
func jsonFixedPoint[T any](t *testing.T, what string, v *T, encode func(*T) []byte) []byte {
	t.Helper()
	once := encode(v)
	start := 5
	if once[4] == TypeStats {
		start += 8 // the id
	}
	var back T
	if err := json.Unmarshal(once[start:], &back); err != nil {
		t.Fatalf("%s re-encoding %s does not decode: %v", what, once, err)
	}
	if !reflect.DeepEqual(&back, v) {
		t.Errorf("%s re-encoding loses values:\n got %+v\nwant %+v", what, back, *v)
	}
	if twice := encode(&back); !bytes.Equal(twice, once) {
		t.Errorf("%s re-encodes differently the second time:\n got %s\nwant %s", what, twice, once)
	}
	return once
}
