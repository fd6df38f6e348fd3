package chaos

// The processes, the load and the probes of `perf -chaos` (chaos.go): a
// runtime and a proxy that the harness kills, stops and restarts one at a
// time, an open-loop load that records every request, and samplers of
// /readyz and of both processes' RSS.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// startRuntime starts a runtime serving model on the stack's socket, with
// a line in the runtimes' log that says so.
func (r *chaosRun) startRuntime(model string) error {
	fmt.Fprintf(r.rtLog, "---- chaos: %s starting runtime with %s\n", time.Now().Format(time.RFC3339Nano), filepath.Base(model))
	return r.stack.StartRuntime(model)
}

// startProxy starts a proxy on the stack's ports.
func (r *chaosRun) startProxy() error {
	fmt.Fprintf(r.pxLog, "---- chaos: %s starting proxy\n", time.Now().Format(time.RFC3339Nano))
	return r.stack.StartProxy()
}

// waitReady polls /readyz until it answers 200, at most within; it returns
// when that happened.
func (r *chaosRun) waitReady(ctx context.Context, within time.Duration) (time.Time, error) {
	if err := r.stack.WaitReady(ctx, within); err != nil {
		return time.Time{}, err
	}
	return time.Now(), nil
}

// chaosImage is one test image with the top-1 class each model gives it.
type chaosImage struct {
	up harness.Upload
	// expect[model sha256] is the set of acceptable top-1 classes: one,
	// or two where the quiet runs found a near tie.
	expect map[string][]int
}

// chaosReq is one request's outcome. Times are offsets from the start of
// the run.
type chaosReq struct {
	Sched    time.Duration `json:"sched"`          // when it was due
	Sent     time.Duration `json:"sent"`           // when it was sent (0 with Shed)
	Done     time.Duration `json:"done"`           // answer or error
	Img      int           `json:"img"`            // index in the pool
	Unique   bool          `json:"unique"`         // bytes never sent before (cannot be cached)
	Overload bool          `json:"overload"`       // from the overload generator
	Shed     bool          `json:"shed,omitempty"` // not sent: the client's in-flight bound
	Status   int           `json:"status"`         // HTTP status, 0 without one
	Err      string        `json:"err,omitempty"`  // without a status: refused, dial, reset, eof, timeout, conn
	ErrText  string        `json:"err_text,omitempty"`
	SHA      string        `json:"sha,omitempty"` // model_sha256 of a 200
	Top1     int           `json:"top1"`
	Cached   bool          `json:"cached,omitempty"`
}

// latency is from the send to the answer (or error).
func (r *chaosReq) latency() time.Duration { return r.Done - r.Sent }

// outcome is the request's class in the status mix.
func (r *chaosReq) outcome() string {
	switch {
	case r.Shed:
		return "shed"
	case r.Status == 200 && r.Cached:
		return "200 cached"
	case r.Status != 0:
		return strconv.Itoa(r.Status)
	}
	return r.Err
}

// notConnected reports whether the request never reached a listening
// proxy: the dial failed (refused, or no answer to the SYN).
func (r *chaosReq) notConnected() bool { return r.Err == "refused" || r.Err == "dial" }

// late reports whether the harness sent the request over a second after
// it was due: it was not scheduled (a starved machine), and what it knew of
// its keep-alive connections may be stale (closed by the server meanwhile).
func (r *chaosReq) late() bool { return !r.Shed && r.Sent-r.Sched > time.Second }

// lost reports whether the proxy took the request (a connection was made
// and the request written) and gave no answer but 503 or 504 on failure:
// no HTTP response at all (reset, EOF, the client's timeout), or a 5xx
// other than 503 and 504.
func (r *chaosReq) lost() bool {
	if r.Shed || r.notConnected() {
		return false
	}
	return r.Status == 0 || r.Status >= 500 && r.Status != 503 && r.Status != 504
}

// classifyErr names a transport error.
func classifyErr(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &op) && op.Op == "dial":
		return "dial"
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "conn"
}

// predictAnswer is what the harness reads of a 200.
type predictAnswer struct {
	ModelSHA256 string `json:"model_sha256"`
	Predictions []struct {
		ClassID     int     `json:"class_id"`
		Probability float64 `json:"probability"`
	} `json:"predictions"`
	Cached bool `json:"cached"`
}

// chaosClient sends /predict requests with a deadline.
type chaosClient struct {
	url      string
	deadline time.Duration
	http     *http.Client
}

func newChaosClient(url string, deadline time.Duration) *chaosClient {
	return &chaosClient{url: url, deadline: deadline, http: &http.Client{
		// The proxy should answer by the deadline; waiting 10 s more
		// measures by how much it misses it, and bounds every request.
		Timeout: deadline + 10*time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 1024,
			DisableCompression:  true,
		},
	}}
}

// do sends body and fills r's outcome; query is added to the URL.
func (c *chaosClient) do(ctx context.Context, body []byte, contentType, query string, noCache bool, r *chaosReq, since time.Time) (*predictAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", c.url+query, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("X-Request-Timeout-Ms", strconv.FormatInt(c.deadline.Milliseconds(), 10))
	if noCache {
		req.Header.Set("Cache-Control", "no-cache")
	}
	r.Sent = time.Since(since)
	resp, err := c.http.Do(req)
	if err != nil {
		r.Done, r.Err = time.Since(since), classifyErr(err)
		if r.Err == "conn" || r.Err == "eof" || r.Err == "reset" {
			r.ErrText = err.Error()
		}
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	r.Done, r.Status = time.Since(since), resp.StatusCode
	if err != nil && resp.StatusCode == 200 {
		r.Status, r.Err = 0, classifyErr(err) // the answer broke off
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	var a predictAnswer
	if err := json.Unmarshal(b, &a); err != nil || len(a.Predictions) == 0 {
		return nil, fmt.Errorf("cannot parse the answer %.200q: %v", b, err)
	}
	r.SHA, r.Top1, r.Cached = a.ModelSHA256, a.Predictions[0].ClassID, a.Cached
	return &a, nil
}

// chaosRecorder collects the requests of every generator.
type chaosRecorder struct {
	mu   sync.Mutex
	reqs []chaosReq
}

func (rec *chaosRecorder) add(r chaosReq) {
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, r)
	rec.mu.Unlock()
}

func (rec *chaosRecorder) snapshot() []chaosReq {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]chaosReq(nil), rec.reqs...)
}

// chaosLoad sends requests at a fixed rate (open loop: one every 1/rate,
// whatever the server does) until stopped, at most maxN of them and for at
// most maxDur; at most maxInFlight are outstanding, arrivals beyond that
// are recorded as shed and not sent. A fifth of the requests repeat a pool
// image byte for byte (the cache may answer them); the rest make their
// bytes unique (a fresh inference each).
type chaosLoad struct {
	c           *chaosClient
	pool        []chaosImage
	rate        float64
	maxN        int
	maxDur      time.Duration
	maxInFlight int
	overload    bool
	seed        uint64
	rec         *chaosRecorder
	since       time.Time // the run's time origin
}

// run sends until stop is closed or a bound is reached, then waits for
// the requests in flight (each bounded by the client's timeout).
func (l *chaosLoad) run(ctx context.Context, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(l.seed, 11))
	sem := make(chan struct{}, l.maxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	every := time.Duration(float64(time.Second) / l.rate)
	for i := 0; i < l.maxN; i++ {
		at := start.Add(time.Duration(i) * every)
		if at.Sub(start) >= l.maxDur {
			break
		}
		select {
		case <-time.After(time.Until(at)):
		case <-stop:
			wg.Wait()
			return
		case <-ctx.Done():
			wg.Wait()
			return
		}
		r := chaosReq{Sched: at.Sub(l.since), Img: rng.IntN(len(l.pool)), Unique: rng.IntN(5) != 0, Overload: l.overload}
		select {
		case sem <- struct{}{}:
		default:
			r.Shed, r.Done = true, r.Sched
			l.rec.add(r)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			body, ct := l.pool[r.Img].up.Body(r.Unique)
			l.c.do(ctx, body, ct, "", false, &r, l.since)
			l.rec.add(r)
		})
	}
	wg.Wait()
}

// readyzSample is one /readyz poll: its status, 0 without an answer.
type readyzSample struct {
	At     time.Duration `json:"at"`
	Status int           `json:"status"`
}

// rssSample is both processes' resident memory, MiB (-1: not running).
type rssSample struct {
	At      time.Duration `json:"at"`
	Proxy   float64       `json:"proxy_mib"`
	Runtime float64       `json:"runtime_mib"`
}

// lagSample is a time the harness itself was not scheduled for a while:
// on a shared machine, other work can starve every process, the harness,
// the proxy and the runtime alike, and timings then say nothing of them.
type lagSample struct {
	At  time.Duration `json:"at"`
	Lag time.Duration `json:"lag"`
}

// chaosProbes polls /readyz every 100 ms, samples RSS every 200 ms and
// records the harness's scheduling lags over 100 ms until stop is closed.
type chaosProbes struct {
	mu     sync.Mutex
	readyz []readyzSample
	rss    []rssSample
	lags   []lagSample
}

func (p *chaosProbes) run(s *harness.Stack, since time.Time, stop <-chan struct{}) {
	var wg sync.WaitGroup
	wg.Go(func() {
		c := &http.Client{Timeout: 500 * time.Millisecond}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			at := time.Since(since)
			status := 0
			if resp, err := c.Get(s.URL + "/readyz"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			p.mu.Lock()
			p.readyz = append(p.readyz, readyzSample{at, status})
			p.mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	wg.Go(func() {
		const tick = 20 * time.Millisecond
		for {
			t := time.Now()
			select {
			case <-stop:
				return
			case <-time.After(tick):
			}
			if lag := time.Since(t) - tick; lag > 100*time.Millisecond {
				p.mu.Lock()
				p.lags = append(p.lags, lagSample{At: t.Sub(since), Lag: lag})
				p.mu.Unlock()
			}
		}
	})
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			smp := rssSample{At: time.Since(since), Proxy: -1, Runtime: -1}
			if px := s.Proxy(); px != nil && !px.Exited() {
				smp.Proxy = harness.RSSMiB(px.Pid())
			}
			if rt := s.Runtime(); rt != nil && !rt.Exited() {
				smp.Runtime = harness.RSSMiB(rt.Pid())
			}
			p.mu.Lock()
			p.rss = append(p.rss, smp)
			p.mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	wg.Wait()
}
