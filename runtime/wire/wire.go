// Package wire is the protocol between the batchgate proxy and the runtime
// sidecar, spoken over a unix socket. Both sides import it.
//
// Every message is a frame: a 4-byte big-endian length, then that many bytes,
// the first of which is the message type. Lengths are checked against a
// limit before anything is allocated.
//
// A connection starts with the client's Hello (protocol version); the
// server answers Info (JSON: the model, its input contract, the labels,
// readiness) or an Error and closes. Then the client sends Batch frames, each
// with an id it chose, and gets one Result or Error per Batch with the same
// id. A client may have several batches outstanding; the server runs them one
// at a time in arrival order. StatsRequest asks for the server's counters.
//
// Batch body:  id u64 | n u32 | n*C*H*W float32 (little-endian, NCHW) |
// optional trailer
// Trailer:     tag u8 = 1 (trace context, version 1) | trace_id [16] |
// span_id [8] | trace_flags u8. A client sends it only to a server whose
// Info says trace_context >= 1, so older runtimes never see it.
// Result body: id u64 | exec_ns u64 | n u32 | classes u32 | n items, each
// status u8 (0 ok: classes float32 follow; 1 error: u16 length + message)
// Error body:  id u64 | code u16 | message
// StatsRequest body: id u64; Stats body: id u64 | JSON
//
// All integers are big-endian except tensor data, which is little-endian.
package wire

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// Message types.
const (
	TypeHello        byte = 1
	TypeInfo         byte = 2
	TypeBatch        byte = 3
	TypeResult       byte = 4
	TypeError        byte = 5
	TypeStatsRequest byte = 6
	TypeStats        byte = 7
)

// Error codes carried by Error frames.
const (
	CodeBadRequest   uint16 = 1 // malformed frame or batch
	CodeVersion      uint16 = 2 // unsupported protocol version
	CodeTooLarge     uint16 = 3 // frame or batch larger than allowed
	CodeNotReady     uint16 = 4 // still loading or warming up
	CodeShuttingDown uint16 = 5 // the batch was not run: the server is stopping
	CodeInternal     uint16 = 6 // the model failed on the whole batch
)

// MaxControlFrame bounds frames other than Batch and Result.
const MaxControlFrame = 1 << 20

// Info is the handshake: everything the proxy needs to preprocess images and
// interpret scores, and the runtime's state.
type Info struct {
	ProtocolVersion int    `json:"protocol_version"`
	Model           string `json:"model"`
	// ModelSHA256 is the sha256 of the model file: its identity.
	ModelSHA256 string `json:"model_sha256"`
	// Generated is true for models with generated weights, whose
	// predictions are meaningless.
	Generated bool `json:"generated"`
	// Variant is the model's numeric variant: "fp32" or "int8". Empty
	// from runtimes older than the field.
	Variant    string `json:"variant,omitempty"`
	InputName  string `json:"input_name"`
	OutputName string `json:"output_name"`
	Channels   int    `json:"channels"`
	Height     int    `json:"height"`
	Width      int    `json:"width"`
	// ResizeShorter is the size the shorter image side is resized to
	// before the center crop to Height x Width.
	ResizeShorter int        `json:"resize_shorter"`
	Mean          [3]float32 `json:"mean"`
	Std           [3]float32 `json:"std"`
	Classes       int        `json:"classes"`
	LabelSet      string     `json:"label_set"`
	Labels        []string   `json:"labels"`
	MaxBatchSize  int        `json:"max_batch_size"`
	Ready         bool       `json:"ready"`
	ORTVersion    string     `json:"ort_version"`
	Threads       int        `json:"threads"`
	// TraceContext is the newest Batch trace trailer the server reads
	// (TraceContextVersion); 0 from runtimes older than the field, which
	// must not be sent one.
	TraceContext int `json:"trace_context,omitempty"`
}

// TraceContextVersion is the Batch trailer this package writes and reads.
const TraceContextVersion = 1

// traceTrailer is the size of the version 1 trailer: tag, trace id, span
// id, flags.
const traceTrailer = 1 + 16 + 8 + 1

// TraceContext is a W3C trace context (the batch span's) carried by a
// Batch frame, so the runtime's span joins the proxy's trace. The zero
// value is none.
type TraceContext struct {
	TraceID [16]byte
	SpanID  [8]byte
	Flags   byte // W3C trace flags; bit 0: sampled
}

// IsValid reports whether tc holds a trace: both ids non-zero.
func (tc TraceContext) IsValid() bool { return tc.TraceID != [16]byte{} && tc.SpanID != [8]byte{} }

// ImageSize is the number of float32 values of one preprocessed image.
func (i *Info) ImageSize() int { return i.Channels * i.Height * i.Width }

// MaxBatchFrame is the largest Batch frame a server with this Info accepts.
func (i *Info) MaxBatchFrame() int { return 1 + 12 + i.MaxBatchSize*i.ImageSize()*4 + traceTrailer }

// MaxResultFrame bounds the Result frames a client may receive.
func (i *Info) MaxResultFrame() int {
	return 1 + 24 + i.MaxBatchSize*(1+max(i.Classes*4, 2+maxItemError))
}

// Stats are the server's counters and the executor's progress. The
// connection's reader answers a StatsRequest at once, so a runtime whose
// executor is stuck still says so; a stopped process does not answer.
type Stats struct {
	Batches uint64 `json:"batches"`
	Items   uint64 `json:"items"`
	// Queued is the number of batches waiting for the executor.
	Queued int `json:"queued"`
	// RunningMs is how long the batch running now has run; 0 when idle.
	RunningMs int64 `json:"running_ms"`
	// IdleMs is how long ago the executor last finished a batch (or
	// started, before the first).
	IdleMs int64 `json:"idle_ms"`
}

// Stalled reports whether the executor has made no progress for after:
// one batch has run longer than that, or batches wait and none has
// finished for that long.
func (s Stats) Stalled(after time.Duration) bool {
	ms := after.Milliseconds()
	return s.RunningMs > ms || (s.Queued > 0 && s.RunningMs == 0 && s.IdleMs > ms)
}

// AppendStatsRequest appends a StatsRequest frame.
func AppendStatsRequest(dst []byte, id uint64) []byte {
	return AppendFrame(dst, TypeStatsRequest, func(b []byte) []byte { return binary.BigEndian.AppendUint64(b, id) })
}

// AppendStats appends a Stats frame answering request id.
func AppendStats(dst []byte, id uint64, s Stats) []byte {
	j, _ := json.Marshal(s) // cannot fail: two integers
	return AppendFrame(dst, TypeStats, func(b []byte) []byte {
		return append(binary.BigEndian.AppendUint64(b, id), j...)
	})
}

// ParseID returns the request id that starts StatsRequest, Stats, Batch,
// Result and Error bodies.
func ParseID(body []byte) (uint64, error) {
	if len(body) < 8 {
		return 0, fmt.Errorf("want an 8-byte id, got %d bytes", len(body))
	}
	return binary.BigEndian.Uint64(body), nil
}

// ParseStatsRequest decodes a StatsRequest body: its id and nothing else.
func ParseStatsRequest(body []byte) (uint64, error) {
	if len(body) != 8 {
		return 0, fmt.Errorf("stats request: want an 8-byte id, got %d bytes", len(body))
	}
	return binary.BigEndian.Uint64(body), nil
}

// ParseStats decodes a Stats body.
func ParseStats(body []byte) (uint64, Stats, error) {
	var s Stats
	id, err := ParseID(body)
	if err != nil {
		return 0, s, fmt.Errorf("stats: %w", err)
	}
	if err := json.Unmarshal(body[8:], &s); err != nil {
		return id, s, fmt.Errorf("stats: %w", err)
	}
	return id, s, nil
}

// ErrFrameTooLarge is returned by ReadFrame for a frame over its limit.
var ErrFrameTooLarge = errors.New("frame too large")

// ReadFrame reads one frame of at most limit bytes. It returns the type and
// the body, which aliases buf when buf is large enough.
func ReadFrame(r *bufio.Reader, limit int, buf []byte) (typ byte, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return 0, nil, errors.New("empty frame")
	}
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, limit)
	}
	if cap(buf) >= int(n) {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return buf[0], buf[1:], nil
}

// AppendFrame appends a frame of type typ whose body body writes.
func AppendFrame(dst []byte, typ byte, body func([]byte) []byte) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, typ)
	dst = body(dst)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// AppendHello appends a Hello frame.
func AppendHello(dst []byte, version uint16) []byte {
	return AppendFrame(dst, TypeHello, func(b []byte) []byte { return binary.BigEndian.AppendUint16(b, version) })
}

// ParseHello returns the version in a Hello body.
func ParseHello(body []byte) (uint16, error) {
	if len(body) != 2 {
		return 0, fmt.Errorf("hello: want 2 bytes, got %d", len(body))
	}
	return binary.BigEndian.Uint16(body), nil
}

// AppendJSON appends a frame of type typ holding v as JSON.
func AppendJSON(dst []byte, typ byte, v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	return AppendFrame(dst, typ, func(b []byte) []byte { return append(b, j...) }), nil
}

// AppendBatch appends a Batch frame for n images held in images, with
// tc's trailer when tc is valid (send one only to a server whose Info has
// TraceContext >= 1).
func AppendBatch(dst []byte, id uint64, n int, images []float32, tc TraceContext) []byte {
	return AppendFrame(dst, TypeBatch, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, id)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = appendFloats(b, images)
		if tc.IsValid() {
			b = append(b, TraceContextVersion)
			b = append(b, tc.TraceID[:]...)
			b = append(b, tc.SpanID[:]...)
			b = append(b, tc.Flags)
		}
		return b
	})
}

// Batch is a decoded Batch frame.
type Batch struct {
	ID     uint64
	N      int
	Images []float32
	// Trace is the sender's batch span, when the frame carried one.
	Trace TraceContext
}

// ParseBatch decodes a Batch body for images of imageSize values and at most
// maxN images. On error it still returns the id when the body holds one, so
// the error can be sent back for the right batch.
func ParseBatch(body []byte, imageSize, maxN int) (Batch, uint16, error) {
	return ParseBatchInto(body, imageSize, maxN, nil)
}

// ParseBatchInto is ParseBatch with the images decoded into buf when it
// has room for them (a buffer the caller reuses), else into a new slice.
func ParseBatchInto(body []byte, imageSize, maxN int, buf []float32) (Batch, uint16, error) {
	if len(body) < 12 {
		return Batch{}, CodeBadRequest, fmt.Errorf("batch: header needs 12 bytes, got %d", len(body))
	}
	b := Batch{ID: binary.BigEndian.Uint64(body), N: int(binary.BigEndian.Uint32(body[8:]))}
	data := body[12:]
	switch {
	case b.N == 0:
		return b, CodeBadRequest, errors.New("batch: holds no images")
	case b.N > maxN:
		return b, CodeTooLarge, fmt.Errorf("batch: %d images, max batch size is %d", b.N, maxN)
	case len(data) != b.N*imageSize*4 && len(data) != b.N*imageSize*4+traceTrailer:
		return b, CodeBadRequest, fmt.Errorf("batch: %d images need %d bytes of tensor data, got %d", b.N, b.N*imageSize*4, len(data))
	}
	if t := data[b.N*imageSize*4:]; len(t) > 0 {
		if t[0] != TraceContextVersion {
			return b, CodeBadRequest, fmt.Errorf("batch: unknown trailer tag %d (this runtime reads trace context version %d)", t[0], TraceContextVersion)
		}
		copy(b.Trace.TraceID[:], t[1:17])
		copy(b.Trace.SpanID[:], t[17:25])
		b.Trace.Flags = t[25]
		if !b.Trace.IsValid() {
			// AppendBatch never writes one: it would read as no trace.
			return b, CodeBadRequest, errors.New("batch: trace trailer with a zero trace or span id")
		}
		data = data[:b.N*imageSize*4]
	}
	if n := b.N * imageSize; cap(buf) >= n {
		b.Images = buf[:n]
	} else {
		b.Images = make([]float32, n)
	}
	readFloats(b.Images, data)
	return b, 0, nil
}

// Result is a decoded Result frame: the outcome of one batch.
type Result struct {
	ID uint64
	// ExecNanos is how long the model ran on the batch.
	ExecNanos uint64
	Classes   int
	// Scores holds Classes scores per item; an item with an error has zeros.
	Scores []float32
	// Errors[i] is non-empty when item i failed.
	Errors []string
}

// maxItemError bounds per-item error messages.
const maxItemError = 1024

// AppendResult appends a Result frame.
func AppendResult(dst []byte, r *Result) []byte {
	return AppendFrame(dst, TypeResult, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, r.ID)
		b = binary.BigEndian.AppendUint64(b, r.ExecNanos)
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Errors)))
		b = binary.BigEndian.AppendUint32(b, uint32(r.Classes))
		for i, msg := range r.Errors {
			if msg != "" {
				msg = msg[:min(len(msg), maxItemError)]
				b = append(b, 1)
				b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
				b = append(b, msg...)
				continue
			}
			b = append(b, 0)
			b = appendFloats(b, r.Scores[i*r.Classes:(i+1)*r.Classes])
		}
		return b
	})
}

// ParseResult decodes a Result body, which must hold at most maxN items of
// exactly classes scores: a peer cannot make it allocate more than that.
func ParseResult(body []byte, classes, maxN int) (*Result, error) {
	if len(body) < 24 {
		return nil, fmt.Errorf("result: header needs 24 bytes, got %d", len(body))
	}
	r := &Result{
		ID:        binary.BigEndian.Uint64(body),
		ExecNanos: binary.BigEndian.Uint64(body[8:]),
		Classes:   int(binary.BigEndian.Uint32(body[20:])),
	}
	n := int(binary.BigEndian.Uint32(body[16:]))
	body = body[24:]
	if r.Classes != classes || n < 1 || n > maxN {
		return nil, fmt.Errorf("result: %d items of %d scores, want 1 to %d items of %d", n, r.Classes, maxN, classes)
	}
	r.Scores = make([]float32, n*r.Classes)
	r.Errors = make([]string, n)
	for i := range n {
		if len(body) < 1 {
			return nil, errors.New("result: truncated")
		}
		status := body[0]
		body = body[1:]
		switch status {
		case 0:
			if len(body) < 4*r.Classes {
				return nil, errors.New("result: truncated scores")
			}
			for j := range r.Classes {
				r.Scores[i*r.Classes+j] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*j:]))
			}
			body = body[4*r.Classes:]
		case 1:
			if len(body) < 2 {
				return nil, errors.New("result: truncated error")
			}
			l := int(binary.BigEndian.Uint16(body))
			if len(body) < 2+l {
				return nil, errors.New("result: truncated error")
			}
			if l == 0 || l > maxItemError {
				// AppendResult never writes these: an empty message
				// would read as success.
				return nil, fmt.Errorf("result: item error of %d bytes, want 1 to %d", l, maxItemError)
			}
			r.Errors[i] = string(body[2 : 2+l])
			body = body[2+l:]
		default:
			return nil, fmt.Errorf("result: item %d has unknown status %d", i, status)
		}
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("result: %d trailing bytes", len(body))
	}
	return r, nil
}

// Error is a request-level error sent by the server.
type Error struct {
	ID      uint64
	Code    uint16
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("runtime error %d: %s", e.Code, e.Message) }

// AppendError appends an Error frame.
func AppendError(dst []byte, e *Error) []byte {
	return AppendFrame(dst, TypeError, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, e.ID)
		b = binary.BigEndian.AppendUint16(b, e.Code)
		return append(b, e.Message...)
	})
}

// ParseError decodes an Error body.
func ParseError(body []byte) (*Error, error) {
	if len(body) < 10 {
		return nil, fmt.Errorf("error: header needs 10 bytes, got %d", len(body))
	}
	return &Error{ID: binary.BigEndian.Uint64(body), Code: binary.BigEndian.Uint16(body[8:]), Message: string(body[10:])}, nil
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		return nb
	}
	return b
}

// DefaultSocket is the runtime's unix socket when RUNTIME_SOCKET is unset,
// on both sides.
const DefaultSocket = "/tmp/batchgate/runtime.sock"
