package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"slices"
	"strconv"
	"time"
)

// apiError is a request refused before any work: a status, a message safe
// to show the client, and a rejection reason for the metrics.
type apiError struct {
	status int
	msg    string
	reason string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: 400, msg: fmt.Sprintf(format, args...), reason: "bad_request"}
}

// parseTopK reads ?top_k= for a model of classes classes: default 5 (or
// classes, if fewer), at most classes.
func parseTopK(raw []byte, present bool, classes int) (int, *apiError) {
	if !present {
		return min(5, classes), nil
	}
	k, err := strconv.Atoi(string(raw))
	if err != nil || k < 1 || k > classes {
		return 0, badRequest("top_k must be an integer in [1, %d]", classes)
	}
	return k, nil
}

// parseTimeout reads X-Request-Timeout-Ms: it can only lower def.
func parseTimeout(raw []byte, def time.Duration) (time.Duration, *apiError) {
	if len(raw) == 0 {
		return def, nil
	}
	ms, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || ms <= 0 {
		return 0, badRequest("X-Request-Timeout-Ms must be a positive integer")
	}
	if ms >= def.Milliseconds() {
		return def, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// maxRequestID bounds an X-Request-Id kept from the client.
const maxRequestID = 128

// validRequestID reports whether a client's X-Request-Id may be echoed and
// logged: 1 to 128 characters of letters, digits and -_.:/+=@
func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > maxRequestID {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case bytes.IndexByte([]byte("-_.:/+=@"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// readImage reads the image of a /predict body of contentLength bytes from
// r, as the content type says: a multipart form's "file" field, or the
// image itself. The bytes go to buf (len 0), grown as they arrive.
func readImage(contentType []byte, r io.Reader, contentLength, maxImage int, buf []byte) ([]byte, *apiError) {
	ct := string(contentType)
	mediaType, params, err := mime.ParseMediaType(ct)
	switch {
	case err == nil && mediaType == "multipart/form-data":
		if params["boundary"] == "" {
			return nil, badRequest("multipart/form-data needs a boundary parameter")
		}
		fr := &framingReader{r: io.LimitReader(r, int64(contentLength)), left: multipartSlack}
		return readFormFile(multipart.NewReader(fr, params["boundary"]), fr, maxImage, buf)
	case err == nil && (len(mediaType) > 6 && mediaType[:6] == "image/" || mediaType == "application/octet-stream"):
		b, err := readFull(r, contentLength, buf)
		if err != nil {
			return nil, badRequest("cannot read the request body: %v", err)
		}
		return b, nil
	}
	return nil, &apiError{status: 415, reason: "unsupported_format",
		msg: `send multipart/form-data with a "file" field, or the image itself with an image/* content type`}
}

// maxFormParts bounds the form's fields before "file": each costs the
// multipart reader a part and its header map.
const maxFormParts = 16

// errFraming is a form with more than multipartSlack bytes before the file.
var errFraming = errors.New("framing too large")

// framingReader lets through at most left bytes until file is set (the
// "file" part's content begins), so the parts before the image, their
// headers and the boundaries, which the multipart reader turns into
// objects several times their size, are bounded by multipartSlack whatever
// the body's length.
type framingReader struct {
	r    io.Reader
	left int
	file bool
}

func (f *framingReader) Read(p []byte) (int, error) {
	if f.file {
		return f.r.Read(p)
	}
	if f.left == 0 {
		return 0, errFraming
	}
	n, err := f.r.Read(p[:min(len(p), f.left)])
	f.left -= n
	return n, err
}

// readFormFile returns the content of the form's "file" part, reading the
// (at most maxFormParts) parts before it to their end, within fr's framing
// bound. The file is read straight into buf: the body is never held twice.
func readFormFile(mr *multipart.Reader, fr *framingReader, maxImage int, buf []byte) ([]byte, *apiError) {
	malformed := func(err error) *apiError {
		if errors.Is(err, errFraming) {
			return badRequest(`multipart form: more than %d bytes before the "file" field's content`, multipartSlack)
		}
		return badRequest("malformed multipart body: %v", err)
	}
	for parts := 0; ; parts++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, badRequest(`multipart form needs a "file" field holding the image`)
		}
		if err != nil {
			return nil, malformed(err)
		}
		if p.FormName() != "file" {
			if parts == maxFormParts {
				return nil, badRequest(`multipart form: more than %d fields before the "file" field`, maxFormParts)
			}
			if _, err := io.Copy(io.Discard, p); err != nil {
				return nil, malformed(err)
			}
			continue
		}
		fr.file = true
		b, err := readAll(io.LimitReader(p, int64(maxImage)+1), buf)
		if err != nil {
			return nil, malformed(err)
		}
		if len(b) > maxImage {
			return nil, &apiError{status: 413, reason: "body_too_large", msg: fmt.Sprintf("image larger than %d bytes", maxImage)}
		}
		return b, nil
	}
}

// readFull reads exactly n bytes into buf, growing it as the bytes arrive
// (doubling, from 64 KiB, never past n), so that a body's buffer is never
// much larger than what its client sent.
func readFull(r io.Reader, n int, buf []byte) ([]byte, error) {
	b := buf[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(max(len(b), uploadChunk), n-len(b)))
		}
		k, err := r.Read(b[len(b):min(cap(b), n)])
		b = b[:len(b)+k]
		switch {
		case err == nil:
		case len(b) == n && err == io.EOF:
		case errors.Is(err, io.EOF):
			return nil, fmt.Errorf("body ended after fewer than the %d bytes announced", n)
		default:
			return nil, err
		}
	}
	return b, nil
}

// readAll reads r to its end into buf's spare capacity, growing it as the
// bytes arrive (doubling, from 64 KiB).
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	b := buf[:0]
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, max(len(b), uploadChunk))
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}
