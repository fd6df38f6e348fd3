package harness

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Result is one request's outcome.
type Result struct {
	Latency time.Duration // from the scheduled send time (open loop) or the send (closed loop)
	Status  int           // 0: transport error
	Cached  bool
	InferMs float64 // the answer's timings.inference_ms; 0 when absent
}

// Client sends images to a classifier: multipart "file", as the FastAPI
// server and batchgate's /predict take.
type Client struct {
	url  string
	http *http.Client
}

// NewClient is a Client of the classifier at url.
func NewClient(url string) *Client {
	return &Client{url: url, http: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxConnsPerHost: 0},
	}}
}

// send uploads up (a unique body when unique is set) and returns the
// status, whether the answer came from the cache, and the inference time it
// reports (batchgate's timings.inference_ms; 0 from other servers).
func (c *Client) send(ctx context.Context, up Upload, unique bool) (int, bool, float64) {
	body, contentType := up.Body(unique)
	req, err := http.NewRequestWithContext(ctx, "POST", c.url, bytes.NewReader(body))
	if err != nil {
		return 0, false, 0
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, false, 0
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var inferMs float64
	if _, v, ok := bytes.Cut(b, []byte(`"inference_ms":`)); ok {
		if end := bytes.IndexAny(v, ",}"); end > 0 {
			inferMs, _ = strconv.ParseFloat(string(bytes.TrimSpace(v[:end])), 64)
		}
	}
	return resp.StatusCode, bytes.Contains(b, []byte(`"cached":true`)), inferMs
}

// OpenLoop sends one request at each scheduled time, whatever the server
// does, and measures latency from the scheduled time: a slow server cannot
// slow the arrivals down and hide its queueing (no coordinated omission).
// At most maxInFlight requests are outstanding; arrivals beyond that count
// as transport errors rather than being delayed.
func OpenLoop(ctx context.Context, c *Client, schedule []time.Duration, pick func(i int) Upload, unique bool, maxInFlight int, progress func()) []Result {
	results := make([]Result, len(schedule))
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	for i, at := range schedule {
		if d := time.Until(start.Add(at)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				wg.Wait()
				return results[:i]
			}
		}
		select {
		case sem <- struct{}{}:
		default:
			results[i] = Result{Latency: 0, Status: 0}
			progress()
			continue
		}
		scheduled := start.Add(at)
		up := pick(i)
		wg.Go(func() {
			defer func() { <-sem }()
			status, cached, inferMs := c.send(ctx, up, unique)
			results[i] = Result{Latency: time.Since(scheduled), Status: status, Cached: cached, InferMs: inferMs}
			progress()
		})
	}
	wg.Wait()
	return results
}

// ClosedLoop runs n clients that each send a request as soon as their
// previous one is answered. The first warmup fills the pipeline and is not
// counted; then it measures for d and returns the results and the time
// they were measured over, and how many requests were answered in all.
func ClosedLoop(ctx context.Context, c *Client, n int, warmup, d time.Duration, pick func(rng *rand.Rand) Upload, unique bool, progress func()) ([]Result, int, time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, warmup+d)
	defer cancel()
	var mu sync.Mutex
	var all []Result
	var total int
	var wg sync.WaitGroup
	from := time.Now().Add(warmup)
	to := from.Add(d)
	for k := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(k), 7))
			var mine []Result
			answered := 0
			for ctx.Err() == nil {
				up := pick(rng)
				t := time.Now()
				status, cached, inferMs := c.send(context.Background(), up, unique)
				done := time.Now()
				if done.After(from) && !done.After(to) { // answered inside the window
					mine = append(mine, Result{Latency: done.Sub(t), Status: status, Cached: cached, InferMs: inferMs})
				}
				progress()
				answered++
			}
			mu.Lock()
			all = append(all, mine...)
			total += answered
			mu.Unlock()
		})
	}
	wg.Wait()
	return all, total, d
}
