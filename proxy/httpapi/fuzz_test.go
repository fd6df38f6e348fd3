package httpapi

import (
	"bytes"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/stats"
)

// Seeds: the requests real clients send, and TestBadInput's bad ones
// (proxy/gateway/gateway_test.go).

const (
	// curl -F file=@grace_hopper.jpg
	curlBoundary = "------------------------d74496d66958873e"
	// Python requests.post(url, files={"file": open("grace_hopper.jpg", "rb")})
	pythonBoundary = "f2d5d1ef0c9e4b8fb8a6ab2e95cd6d08"
)

func curlForm(name string, data []byte) []byte {
	return []byte("--" + curlBoundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + "\"\r\n" +
		"Content-Type: image/jpeg\r\n\r\n" + string(data) + "\r\n--" + curlBoundary + "--\r\n")
}

func pythonForm(name string, data []byte) []byte {
	return []byte("--" + pythonBoundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + "\"\r\n\r\n" +
		string(data) + "\r\n--" + pythonBoundary + "--\r\n")
}

// seedFile reads a test image; a fuzz seed that cannot be read is fatal.
func seedFile(f *testing.F, name string) []byte {
	b, err := os.ReadFile("../testdata/" + name)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// badInputBodies are the bodies and content types of TestBadInput.
func badInputBodies(f *testing.F) [][2][]byte {
	jpeg := seedFile(f, "grace_hopper.jpg")
	var bigPNG bytes.Buffer
	png.Encode(&bigPNG, image.NewGray(image.Rect(0, 0, 1100, 1000)))
	noFile, noFileType := multipartBody("image", jpeg)
	nanHeader := `{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","parameters":{"binary_data_size":602112}}]}`
	kv := func(ct string, body []byte) [2][]byte { return [2][]byte{[]byte(ct), body} }
	return [][2][]byte{
		kv("image/jpeg", []byte("hello")),
		kv("image/jpeg", jpeg[:len(jpeg)/3]),
		kv("text/plain", jpeg),
		kv(noFileType, noFile),
		kv("image/jpeg", make([]byte, 750)), // "body too large", scaled down
		kv("image/png", bigPNG.Bytes()),
		kv("", nil), // GET /predict
		kv("application/json", []byte("{")),
		kv("application/json", []byte(`{"inputs":[]}`)),
		kv("application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}`)),
		kv("application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["***"]}]}`)),
		kv("application/json", []byte(`{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","data":["aGk="]}]}`)),
		kv("application/json", []byte(`{"inputs":[{"name":"data","shape":[1,3,2,2],"datatype":"FP32","data":[1,2,3]}]}`)),
		kv("application/octet-stream", append([]byte(nanHeader), make([]byte, 64)...)),
		kv("application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"classification","parameters":{"classification":0}}]}`)),
		kv("application/json", []byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"what"}]}`)),
	}
}

// stdFormFile reads body as mime/multipart's Reader does: the first part
// named "file", read to its end; err is the first error reading the parts
// up to it.
func stdFormFile(body []byte, boundary string) (data []byte, found bool, err error) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if p.FormName() != "file" {
			if _, err := io.Copy(io.Discard, p); err != nil {
				return nil, false, err
			}
			continue
		}
		data, err := io.ReadAll(p)
		return data, true, err
	}
}

// fuzzMaxImage is the image size limit of the fuzzed readImage.
const fuzzMaxImage = 64 << 10

// FuzzReadImage: no content type or body makes readImage panic, read past
// the body, or return more than the image limit; its errors are 400, 413 or
// 415 with a reason stats knows; a raw image is the body, and a form's file
// is what mime/multipart's own Reader finds in it.
func FuzzReadImage(f *testing.F) {
	small := seedFile(f, "small_gray.jpg")
	jpeg := seedFile(f, "grace_hopper.jpg")
	goForm, goType := multipartBody("file", small)
	for _, s := range []struct {
		ct   string
		body []byte
	}{
		{"multipart/form-data; boundary=" + curlBoundary, curlForm("grace_hopper.jpg", jpeg)},
		{"multipart/form-data; boundary=" + curlBoundary, curlForm("small_gray.jpg", small)},
		{"multipart/form-data; boundary=" + pythonBoundary, pythonForm("small_gray.jpg", small)},
		{goType, goForm},
		{`Multipart/Form-Data; boundary="` + curlBoundary + `"`, curlForm("q.jpg", small)},
		{"multipart/form-data; boundary=" + curlBoundary, curlForm("big.jpg", make([]byte, fuzzMaxImage+1))},
		{"multipart/form-data", goForm},
		{"image/jpeg", small},
		{"image/png; charset=x", small},
		{"application/octet-stream", small},
	} {
		f.Add(s.ct, s.body)
	}
	for _, kv := range badInputBodies(f) {
		f.Add(string(kv[0]), kv[1])
	}
	const next = "POST /predict HTTP/1.1\r\n" // a pipelined request after the body
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		// The server refuses a body over its limit before reading it.
		limit := fuzzMaxImage
		if strings.HasPrefix(contentType, "multipart/") {
			limit += multipartSlack
		}
		if checkLength(len(body), limit) != nil {
			return
		}
		r := bytes.NewReader(append(bytes.Clone(body), next...))
		buf := make([]byte, 0, len(body))
		var got []byte
		var ae *apiError
		if n := testenv.AllocatedBy(func() { got, ae = readImage([]byte(contentType), r, len(body), fuzzMaxImage, buf) }); n > formBound {
			t.Fatalf("reading a %d-byte body allocated %d bytes besides its buffer, over %d", len(body), n, formBound)
		}
		if r.Len() < len(next) {
			t.Fatalf("readImage read %d bytes past the body", len(next)-r.Len())
		}
		if ae != nil {
			if (ae.status != 400 && ae.status != 413 && ae.status != 415) || ae.msg == "" || !knownReason(ae.reason) {
				t.Fatalf("error %d %q %q", ae.status, ae.reason, ae.msg)
			}
		} else if len(got) > fuzzMaxImage {
			t.Fatalf("an image of %d bytes, limit %d", len(got), fuzzMaxImage)
		}

		mediaType, params, err := mime.ParseMediaType(contentType)
		switch {
		case err == nil && mediaType == "multipart/form-data" && params["boundary"] != "":
			data, found, err := stdFormFile(body, params["boundary"])
			switch {
			case found && len(data) > fuzzMaxImage:
				if ae == nil || ae.status != 413 {
					t.Fatalf("a file of %d bytes over the limit: got %v, want 413", len(data), ae)
				}
			case err != nil || !found:
				if ae == nil || ae.status != 400 {
					t.Fatalf("mime/multipart finds no file (%v): got %d bytes, %v; want 400", err, len(got), ae)
				}
			case ae != nil && strings.Contains(ae.msg, `before the "file" field`):
				// Refused for its framing (framingReader, maxFormParts),
				// which mime/multipart reads whatever its size.
			case ae != nil:
				t.Fatalf("mime/multipart finds a file of %d bytes; readImage: %v", len(data), ae)
			case !bytes.Equal(got, data):
				t.Fatalf("readImage's file (%d bytes) differs from mime/multipart's (%d bytes)", len(got), len(data))
			}
		case err == nil && mediaType == "multipart/form-data":
			if ae == nil || ae.status != 400 {
				t.Fatalf("multipart without a boundary: %v, want 400", ae)
			}
		case err == nil && (strings.HasPrefix(mediaType, "image/") && mediaType != "image/" || mediaType == "application/octet-stream"):
			if ae != nil || !bytes.Equal(got, body) {
				t.Fatalf("a raw image body: got %d bytes, %v; want the %d bytes of the body", len(got), ae, len(body))
			}
		default:
			if ae == nil || ae.status != 415 {
				t.Fatalf("content type %q (%q, %v): got %d bytes, %v; want 415", contentType, mediaType, err, len(got), ae)
			}
		}
	})
}

func knownReason(reason string) bool {
	for _, r := range stats.Reasons {
		if r == reason {
			return true
		}
	}
	return false
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9._:/+=@-]{1,128}$`)

// FuzzRequestParams: top_k, X-Request-Timeout-Ms and X-Request-Id never
// panic their parsers, and what they accept is in range: 1 <= top_k <=
// classes, 1 ms <= timeout <= the default, and request ids of 1 to 128
// safe characters; each agrees with strconv or a regexp.
func FuzzRequestParams(f *testing.F) {
	for _, s := range [][3]string{
		{"3", "", "abc-123"},
		{"1", "1", "Trace_1.2:3/4+5=6@x"},
		{"1000", "30000", strings.Repeat("a", 128)},
		{"0", "soon", strings.Repeat("a", 129)},       // TestBadInput: top_k zero, bad timeout
		{"abc", "0", "has space"},                     // top_k text
		{"1001", "-5", "<script>"},                    // top_k above classes
		{"+7", "99999999999999999999", "ünïcode"},     // signs and overflow
		{"", "1.5", ""},                               // empty
		{"07", "0x10", "a\x00b"},                      // leading zero, hex, NUL
		{"9223372036854775807", "29999", "new\nline"}, // int64 max
		{"-0", "+1", "<"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	const def = 30 * time.Second
	f.Fuzz(func(t *testing.T, topK, timeout, requestID string) {
		for _, classes := range []int{1, 10, 1000} {
			k, ae := parseTopK([]byte(topK), true, classes)
			n, err := strconv.Atoi(topK)
			switch {
			case err == nil && n >= 1 && n <= classes:
				if ae != nil || k != n {
					t.Fatalf("top_k %q of %d classes: %d, %v; want %d", topK, classes, k, ae, n)
				}
			case ae == nil || ae.status != 400 || ae.reason != "bad_request":
				t.Fatalf("top_k %q of %d classes accepted as %d (or refused as %v); want 400", topK, classes, k, ae)
			}
			if k, ae := parseTopK([]byte(topK), false, classes); ae != nil || k != min(5, classes) {
				t.Fatalf("no top_k, %d classes: %d, %v", classes, k, ae)
			}
		}

		d, ae := parseTimeout([]byte(timeout), def)
		ms, err := strconv.ParseInt(timeout, 10, 64)
		switch {
		case timeout == "":
			if ae != nil || d != def {
				t.Fatalf("no timeout: %v, %v; want the default", d, ae)
			}
		case err == nil && ms > 0:
			if ae != nil || d < time.Millisecond || d > def || d != min(time.Duration(min(ms, def.Milliseconds()))*time.Millisecond, def) {
				t.Fatalf("timeout %q: %v, %v; want %d ms at most %v", timeout, d, ae, ms, def)
			}
		case ae == nil || ae.status != 400:
			t.Fatalf("timeout %q accepted as %v; want 400", timeout, d)
		}

		ok := validRequestID([]byte(requestID))
		if ok != safeID.MatchString(requestID) {
			t.Fatalf("request id %q: valid %v, the safe pattern says %v", requestID, ok, !ok)
		}
		if ok && (len(requestID) > 128 || strings.ContainsAny(requestID, " \t\r\n\"'<>\\;,")) {
			t.Fatalf("request id %q accepted", requestID)
		}
	})
}

// nopConn is the connection of a RequestCtx served in memory: deadlines
// are accepted and ignored.
type nopConn struct{ net.Conn }

func (nopConn) SetReadDeadline(time.Time) error  { return nil }
func (nopConn) SetWriteDeadline(time.Time) error { return nil }
func (nopConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (nopConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }

// FuzzHandler sends any method, URI, headers and body to Handler, in
// memory: nothing panics inside it (its recover would hide that: the panic
// counter must stay 0), every error is a JSON error with a status, the
// answer's request id is safe, and every upload reservation is given back.
func FuzzHandler(f *testing.F) {
	small := seedFile(f, "small_gray.jpg")
	goForm, goType := multipartBody("file", small)
	f.Add("POST", "/predict?top_k=3", goType, "abc-123", "", goForm)
	f.Add("POST", "/predict", "multipart/form-data; boundary="+curlBoundary, "", "1000", curlForm("g.jpg", small))
	f.Add("POST", "/predict?top_k=0", "image/jpeg", "has space", "soon", small)
	f.Add("POST", "/v2/models/resnet50/infer", "application/json", "", "",
		[]byte(`{"id":"1","inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"classification","parameters":{"classification":2}}]}`))
	f.Add("POST", "/v2/models/resnet50/versions/1/infer", "application/json", "", "", []byte(`{"inputs":[{"name":"data","shape":[1,3,224,224],"datatype":"FP32","data":[1]}]}`))
	f.Add("GET", "/v2/models/resnet50/versions/2/ready", "", "", "", []byte(nil))
	f.Add("GET", "/v2/models/resnet50/versions/1", "", "", "", []byte(nil))
	f.Add("GET", "/v2/models/resnet50/versions", "", "", "", []byte(nil))
	f.Add("GET", "/v2/models//x/y/z", "", "", "", []byte(nil))
	f.Add("GET", "/docs/swagger-ui/index.html", "", "", "", []byte(nil))
	f.Add("GET", "/readyz", "", "", "", []byte(nil))
	for _, kv := range badInputBodies(f) {
		f.Add("POST", "/predict", string(kv[0]), "", "", kv[1])
		f.Add("POST", "/v2/models/resnet50/infer", string(kv[0]), "", "", kv[1])
	}
	fc := newFake()
	m := stats.New(metrics.NewSet(), stats.Gauges{})
	uploads := budget.New(16 << 20)
	api := New(Config{Router: oneRuntime{fc}, Metrics: m, Log: slog.New(slog.DiscardHandler), Ready: func() bool { return true },
		Version: "fuzz", RequestTimeout: 5 * time.Second, MaxBodyBytes: 1 << 20, Uploads: uploads,
		UploadWait: time.Second, MaxElements: 4})
	f.Fuzz(func(t *testing.T, method, uri, contentType, requestID, timeout string, body []byte) {
		var ctx fasthttp.RequestCtx
		ctx.Init2(nopConn{}, nil, false)
		ctx.Request.Header.SetMethod(method)
		ctx.Request.SetRequestURI(uri)
		ctx.Request.Header.SetContentType(contentType)
		if requestID != "" {
			ctx.Request.Header.Set("X-Request-Id", requestID)
		}
		if timeout != "" {
			ctx.Request.Header.Set("X-Request-Timeout-Ms", timeout)
		}
		ctx.Request.SetBodyStream(bytes.NewReader(body), len(body))
		panics := m.Panics.Get()
		if ctx.Request.MayContinue() {
			api.ExpectHandler(&ctx)
		}
		api.Handler(&ctx)
		if m.Panics.Get() != panics {
			t.Fatalf("the handler panicked on %s %q", method, uri)
		}
		status := ctx.Response.StatusCode()
		if status < 200 || status > 599 {
			t.Fatalf("status %d", status)
		}
		if status >= 400 {
			var e struct{ Error string }
			if err := json.Unmarshal(ctx.Response.Body(), &e); err != nil || e.Error == "" {
				t.Fatalf("%d with body %q: not a JSON error", status, ctx.Response.Body())
			}
		}
		id := ctx.Response.Header.Peek("X-Request-Id")
		if !validRequestID(id) || (validRequestID([]byte(requestID)) && string(id) != requestID) {
			t.Fatalf("request id %q answered as %q", requestID, id)
		}
		if got := uploads.InUse(); got != 0 {
			t.Fatalf("%d bytes of the upload budget still reserved", got)
		}
		fc.set(func(f *fakeClassifier) { f.data, f.noCache, f.remaining = nil, nil, nil })
	})
}
