package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// clientFrom returns an HTTP client whose connections come from the local
// address ip, as a separate machine's would.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64}}
}

// TestFloodFromOneAddressLeavesRoom: one address keeps 32 photos in flight
// (the decode queue holds 8); another address's requests, one at a time,
// are all answered 200. Before images were counted per client, the flood
// filled the decode queue and the other client got 429s.
func TestFloodFromOneAddressLeavesRoom(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 8, "")
	cfg := testConfig(rt.socket)
	cfg.DecodeQueue = 8
	cfg.RefusedBytesPerSecond = -1 // the flood's 429s must not slow it: this is about the queues
	tp := startProxy(t, cfg)
	photo := testenv.Image(t, "grace_hopper.jpg")
	post := func(c *http.Client, tag string) int {
		body := append(bytes.Clone(photo), tag...) // distinct: no cache, no coalescing
		resp, err := c.Post(tp.url+"/predict", "image/jpeg", bytes.NewReader(body))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	flooder := clientFrom("127.0.0.2")
	var refused atomic.Int64
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := 0; i < 500 && ctx.Err() == nil; i++ {
				if post(flooder, fmt.Sprintf("flood %d", seq.Add(1))) == 429 {
					refused.Add(1)
				}
			}
		})
	}
	defer wg.Wait()
	defer stop()
	for refused.Load() == 0 && ctx.Err() == nil { // the flood has filled its part
		time.Sleep(10 * time.Millisecond)
	}
	honest := clientFrom("127.0.0.3")
	got := map[int]int{}
	for i := range 20 {
		got[post(honest, fmt.Sprintf("honest %d", i))]++
	}
	if got[200] != 20 {
		t.Errorf("the other client's 20 requests during the flood: %v, want all 200 (the flood got %d 429s)", got, refused.Load())
	}
}
