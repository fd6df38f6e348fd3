package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/fairshare"
)

// How a body's upload memory is held (docs/memory.md): no client can hold
// the upload budget without sending the bytes it reserves.
//
//   - The reservation follows the bytes that arrived: a body starts with
//     factor x min(length, uploadChunk) and grows, before each read, to
//     factor x twice what arrived (the buffer grows by doubling), never
//     past factor x its length. A client trickling a 10 MiB body holds
//     factor x 64 KiB, not factor x 10 MiB.
//   - After UploadRateGrace, the body must keep arriving at an average of
//     UploadMinRate bytes a second from the start of its read, or the
//     request gets 408 and its connection closes; and it never reads past
//     the request's deadline.
//   - UploadsPerClient and UploadsPerKey bound the bodies over uploadChunk
//     being read at once from one client address and one API key; beyond
//     them, 429. UploadMemoryPerClient bounds what one client address's
//     bodies being read hold of the budget (half of it by default), so
//     that the other half is always there for everyone else.
//
// Before the handler runs, fasthttp reads the body's first 8 KiB itself
// (into its own buffer, not the budget's): HeaderReceived gives that the
// same grace and rate, and a client too slow there gets 408 from
// ErrorHandler.
//
// So a client that sends nothing holds a connection and at most 8 KiB for
// UploadRateGrace + 8 KiB/UploadMinRate, one that sends slowly past that
// holds factor x 64 KiB until it falls below the rate, and one that
// withholds its last byte holds what it sent until the request's deadline,
// in at most UploadsPerClient requests.

// uploadChunk is the first reservation of a body and the most read at once.
const uploadChunk = 64 << 10

// errTooSlow is a body that fell below the minimum rate.
var errTooSlow = errors.New("request body arrived too slowly")

// meteredBody reads a request body of n bytes: it grows the body's lease
// ahead of the bytes it reads (each growth waiting at most wait for room)
// and moves the connection's read deadline so the body keeps the minimum
// rate. It belongs to one handler call.
type meteredBody struct {
	ctx      *fasthttp.RequestCtx
	rctx     context.Context // the request's: its deadline ends the read
	r        io.Reader
	lease    *budget.Lease
	factor   int64
	max      int64 // the most the lease grows to: factor x the body, within the budget
	read     int64
	start    time.Time
	grace    time.Duration
	rate     int64 // bytes a second; 0: no minimum
	wait     time.Duration
	deadline time.Time // the read deadline set last
	// client's share of the budget (shares) holds taken of the lease.
	client string
	shares *fairshare.Shares
	taken  int64
	// fail is why the read stopped short, when the body was not at fault:
	// errNoRoom, errClientShare, errTooSlow or the request's context error.
	fail error
}

// errNoRoom is a lease that could not grow within the wait;
// errClientShare one that would pass its client's share.
var (
	errNoRoom      = errors.New("no room in the upload budget")
	errClientShare = errors.New("client's share of the upload budget taken")
)

func (m *meteredBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	// The buffer the bytes go to grows by doubling, from uploadChunk: it
	// is at most cover(read). Reserve for that, and read no more than it
	// covers.
	cover := max(uploadChunk, 2*m.read)
	p = p[:min(int64(len(p)), cover-m.read)]
	if grow := min(m.factor*cover, m.max) - m.lease.Size(); grow > 0 {
		if !m.shares.Take(m.client, grow) {
			m.fail = errClientShare
			return 0, m.fail
		}
		wctx, cancel := context.WithTimeout(m.rctx, m.wait)
		err := m.lease.Grow(wctx, grow)
		cancel()
		if err == nil {
			m.taken += grow
		} else {
			m.shares.Give(m.client, grow)
			m.fail = errNoRoom
			if m.rctx.Err() != nil {
				m.fail = m.rctx.Err()
			}
			return 0, m.fail
		}
	}
	dl, _ := m.rctx.Deadline()
	if m.rate > 0 {
		// The next byte must arrive by the time the minimum rate
		// allows for it.
		due := m.start.Add(m.grace + time.Duration(float64(m.read+1)/float64(m.rate)*float64(time.Second)))
		if dl.IsZero() || due.Before(dl) {
			dl = due
		}
	}
	if !dl.IsZero() && !dl.Equal(m.deadline) {
		m.deadline = dl
		m.ctx.SetReadDeadline(dl)
	}
	k, err := m.r.Read(p)
	m.read += int64(k)
	if err != nil && err != io.EOF && !m.deadline.IsZero() && !time.Now().Before(m.deadline) {
		m.fail = errTooSlow
		if m.rctx.Err() != nil {
			m.fail = m.rctx.Err()
		}
		return k, m.fail
	}
	return k, err
}

// uploadError turns a body read that m stopped into the client's answer:
// 429 when the budget had no room, 408 for a body slower than the minimum
// rate, 504 at the request's deadline; nil when m did not stop it (a
// malformed body).
func (s *Server) uploadError(m *meteredBody) *apiError {
	switch err := m.fail; {
	case err == nil:
		return nil
	case err == errNoRoom:
		return &apiError{429, "server busy receiving other uploads, retry later", "upload_budget"}
	case err == errClientShare:
		return &apiError{429, fmt.Sprintf("this client address's uploads being received hold their share of the upload memory (%d MiB): retry once they are sent", s.clientBytes.Limit()>>20), "upload_client_limit"}
	case err == errTooSlow:
		return &apiError{408, fmt.Sprintf("request body arrived slower than %d bytes a second after the first %v; send it faster or in a smaller image",
			s.cfg.UploadMinRate, s.cfg.UploadRateGrace), "upload_too_slow"}
	}
	return errStatus(m.fail)
}

// uploadSlots takes one of the client address's and one of the API key's
// upload slots; ok false answers 429. release returns them.
func (s *Server) uploadSlots(ctx *fasthttp.RequestCtx) (release func(), ae *apiError) {
	addr := ctx.RemoteIP().String()
	if !s.clientUploads.Take(addr, 1) {
		return nil, &apiError{429, fmt.Sprintf("more than %d uploads at once from one client address; retry later", s.cfg.UploadsPerClient), "upload_client_limit"}
	}
	key, _ := ctx.UserValue(keyIDKey{}).(string)
	if key != "" && !s.keyUploads.Take(key, 1) {
		s.clientUploads.Give(addr, 1)
		return nil, &apiError{429, fmt.Sprintf("more than %d uploads at once with API key %q; retry later", s.cfg.UploadsPerKey, key), "upload_key_limit"}
	}
	return func() {
		s.clientUploads.Give(addr, 1)
		if key != "" {
			s.keyUploads.Give(key, 1)
		}
	}, nil
}

// keyIDKey is the RequestCtx user value holding the request's verified API
// key id, set by Handler once authorize passed.
type keyIDKey struct{}

// preRead is what fasthttp reads of a streamed body before the handler runs.
const preRead = 8 << 10

// HeaderReceived is the fasthttp.Server's hook once a request's headers are
// in: the body's first preRead bytes (which fasthttp reads before calling
// Handler) must arrive at the minimum rate after the grace, and the whole
// request within RequestTimeout and 10 s.
func (s *Server) HeaderReceived(*fasthttp.RequestHeader) fasthttp.RequestConfig {
	d := s.cfg.RequestTimeout + 10*time.Second
	if s.cfg.UploadMinRate > 0 {
		d = min(d, s.cfg.UploadRateGrace+time.Duration(float64(preRead)/float64(s.cfg.UploadMinRate)*float64(time.Second)))
	}
	return fasthttp.RequestConfig{ReadTimeout: d}
}

// refusalCost is what every refused request costs its client on top of its
// body: the work of reading and answering it.
const refusalCost = 64 << 10

// exempt are the routes never held or charged: the probes, which come from
// the kubelet and must be answered at once.
func exempt(route string) bool { return route == "/healthz" || route == "/readyz" }

// owes holds a request while its client address owes more than its
// allowance for refused requests (Config.Refusals), its body unread. False:
// it was held as long as allowed and answered 429, its connection closed,
// so that nothing more of the body is read.
func (s *Server) owes(ctx *fasthttp.RequestCtx, route string) bool {
	if s.cfg.Refusals == nil || exempt(route) {
		return true
	}
	c, cancel := context.WithTimeout(baseContext(ctx), s.cfg.RequestTimeout)
	defer cancel()
	retry, err := s.cfg.Refusals.Wait(c, ctx.RemoteIP().String())
	if err == nil {
		return true
	}
	secs := retryAfterSeconds(retry)
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
	ctx.SetConnectionClose()
	s.fail(ctx, &apiError{429, fmt.Sprintf("too many refused requests from this client address: retry after %d s, and fix the requests that were refused", secs), "client_refusals"})
	return false
}

// chargeRefusal charges a refused request (any 4xx but 499, the client's
// own cancel) to its client address: the body bytes the server read (at
// least what fasthttp read before the handler), and refusalCost. A body
// refused from its headers costs little, however large it claimed to be.
func (s *Server) chargeRefusal(ctx *fasthttp.RequestCtx, route string, status int) {
	if s.cfg.Refusals == nil || status < 400 || status >= 500 || status == 499 || exempt(route) {
		return
	}
	read, _ := ctx.UserValue(bodyReadKey{}).(int64)
	read = max(read, int64(min(max(ctx.Request.Header.ContentLength(), 0), preRead)))
	s.cfg.Refusals.Charge(ctx.RemoteIP().String(), read+refusalCost)
}

// bodyReadKey is the RequestCtx user value counting the body bytes the
// handler read or skipped (an int64), for chargeRefusal.
type bodyReadKey struct{}

// countRead adds n to the request's body bytes read.
func countRead(ctx *fasthttp.RequestCtx, n int64) {
	read, _ := ctx.UserValue(bodyReadKey{}).(int64)
	ctx.SetUserValue(bodyReadKey{}, read+n)
}
