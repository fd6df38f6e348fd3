package httpapi

import (
	"context"
	"errors"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/flight"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/oip"
	"github.com/batchgate/batchgate/proxy/rtconn"
)

// ErrorStatus maps err as the HTTP API answers it: the status, a message
// safe to show the client, and inference_rejections_total's reason. Other
// front ends (proxy/oipgrpc) answer from it, so that both say the same.
func ErrorStatus(err error) (status int, msg, reason string) {
	e := errStatus(err)
	return e.status, e.msg, e.reason
}

// errStatus maps an error to an HTTP status, a client-safe message and a
// rejection reason for the metrics. Internal errors are never echoed.
func errStatus(err error) *apiError {
	var ae *apiError
	var qf *batching.QueueFullError
	var me *classify.MemoryError
	var ie *rtconn.ItemError
	var oe *oip.Error
	var pe *flight.PanicError
	var nf *NotFoundError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &nf):
		return &apiError{404, nf.Msg, "not_found"}
	case errors.As(err, &pe):
		return &apiError{500, "internal error", "internal"}
	case errors.As(err, &oe):
		return &apiError{400, oe.Msg, "bad_request"}
	case errors.As(err, &qf):
		return &apiError{429, "server overloaded: the batch queue is full, retry later", "queue_full"}
	case errors.Is(err, classify.ErrClientBusy):
		return &apiError{429, "server busy, and this client address already has its share of the images in progress: retry later, or once its other requests are answered", "client_busy"}
	case errors.Is(err, classify.ErrDecodeBusy):
		return &apiError{429, "server overloaded: too many images wait to be decoded, retry later", "decode_queue_full"}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{504, "request deadline exceeded before the inference finished", "deadline"}
	case errors.Is(err, classify.ErrUnavailable), errors.Is(err, rtconn.ErrUnavailable),
		errors.Is(err, rtconn.ErrModelChanged), errors.Is(err, batching.ErrClosed):
		return &apiError{503, "model runtime unavailable, retry later", "unavailable"}
	case errors.As(err, &me):
		return &apiError{413, me.Error(), "decode_memory"}
	case errors.Is(err, imageprep.ErrFormat):
		msg := imageprep.ErrFormat.Error()
		if errors.Is(err, imageprep.ErrAnimatedWebP) {
			msg = imageprep.ErrAnimatedWebP.Error()
		}
		return &apiError{415, msg, "unsupported_format"}
	case errors.Is(err, imageprep.ErrPixelsPerByte):
		// imageprep's message: sizes and the cap, never the client's bytes.
		return &apiError{413, err.Error(), "too_many_pixels"}
	case errors.Is(err, imageprep.ErrTooLarge):
		return &apiError{413, "image has too many pixels", "too_many_pixels"}
	case errors.Is(err, imageprep.ErrCorrupt):
		return &apiError{400, "corrupt or truncated image", "corrupt_image"}
	case errors.As(err, &ie):
		return &apiError{400, "input rejected: holds NaN or infinite values", "bad_tensor"}
	case errors.Is(err, context.Canceled):
		return &apiError{499, "request cancelled", "cancelled"}
	}
	return &apiError{500, "inference failed", "internal"}
}
