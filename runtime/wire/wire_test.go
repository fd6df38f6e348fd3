package wire

import (
	"bufio"
	"bytes"
	"errors"
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
// frame that decodes must re-encode to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(AppendResult(nil, &Result{ID: 1, Classes: 2, Scores: []float32{1, 2}, Errors: []string{""}}))
	f.Add(AppendBatch(nil, 3, 1, []float32{1, 2, 3}, TraceContext{}))
	f.Add(AppendBatch(nil, 3, 1, []float32{1, 2, 3}, TraceContext{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Flags: 1}))
	f.Add(AppendError(nil, &Error{ID: 4, Code: CodeInternal, Message: "x"}))
	f.Add(AppendHello(nil, Version))
	f.Add([]byte{0, 0, 0, 1, TypeResult})
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, err := ReadFrame(bufio.NewReader(bytes.NewReader(data)), 1<<16, nil)
		if err != nil {
			return
		}
		switch typ {
		case TypeResult:
			if r, err := ParseResult(body, 2, 8); err == nil {
				if again := AppendResult(nil, r); !bytes.Equal(again[5:], body) {
					t.Errorf("result re-encodes differently:\n got %x\nwant %x", again[5:], body)
				}
			}
		case TypeBatch:
			if b, _, err := ParseBatch(body, 3, 8); err == nil && len(b.Images) != b.N*3 {
				t.Errorf("batch of %d holds %d values", b.N, len(b.Images))
			}
		case TypeError:
			ParseError(body)
		case TypeHello:
			ParseHello(body)
		}
	})
}
