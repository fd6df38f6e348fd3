package harness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProxyPorts: every proxy perf starts gets two distinct free ports,
// PORT and METRICS_PORT (whose default, 9464, another proxy may hold).
func TestProxyPorts(t *testing.T) {
	for range 20 {
		api, metrics, err := ProxyPorts()
		if err != nil {
			t.Fatal(err)
		}
		if api <= 0 || metrics <= 0 || api == metrics || metrics == 9464 {
			t.Fatalf("proxyPorts() = %d, %d", api, metrics)
		}
		env := strings.Join(ProxyPortEnv(api, metrics), " ")
		if want := fmt.Sprintf("PORT=%d METRICS_PORT=%d GRPC_PORT=0", api, metrics); env != want {
			t.Fatalf("proxyPortEnv = %q, want %q", env, want)
		}
	}
}

// TestScrape: samples are read from the metrics port; the API port's 404
// (or any other non-200) is an error, never an empty set of metrics.
func TestScrape(t *testing.T) {
	metricsPort := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("# HELP x\ninference_batch_size_sum 12\ninference_requests_total{route=\"/predict\",code=\"200\"} 3\n\n"))
	}))
	defer metricsPort.Close()
	apiPort := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"metrics are served on their own port (METRICS_PORT, default 9464), not on the API's"}`))
	}))
	defer apiPort.Close()
	m, err := Scrape(metricsPort.URL)
	if err != nil || m["inference_batch_size_sum"] != 12 || m[`inference_requests_total{route="/predict",code="200"}`] != 3 || len(m) != 2 {
		t.Errorf("scrape of the metrics port = %v, %v", m, err)
	}
	if m, err := Scrape(apiPort.URL); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("scrape of the API port = %v, %v; want an error naming the 404", m, err)
	}
	metricsPort.Close()
	if _, err := Scrape(metricsPort.URL); err == nil {
		t.Error("scrape of a closed port: no error")
	}
}

func TestPercentile(t *testing.T) {
	var data []time.Duration
	for i := 1; i <= 100; i++ {
		data = append(data, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {90, 90 * time.Millisecond}, {99, 99 * time.Millisecond},
		{100, 100 * time.Millisecond}, {0, time.Millisecond}, {99.5, 100 * time.Millisecond}} {
		if got := Percentile(data, tc.p); got != tc.want {
			t.Errorf("percentile(1..100 ms, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := Summarize([]time.Duration{3, 1, 2}); got.P50 != 2 || got.Max != 3 {
		t.Errorf("summarize(3,1,2) = %+v, want p50 2, max 3", got)
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("percentile of nothing = %v", got)
	}
}

// TestPoissonSchedule checks the achieved rate and that inter-arrival times
// are exponential: mean 1/rate, coefficient of variation 1, and a share
// exp(-1) of gaps longer than the mean.
func TestPoissonSchedule(t *testing.T) {
	const rate = 200.0
	d := 100 * time.Second
	s := PoissonSchedule(rand.New(rand.NewPCG(1, 2)), rate, d)
	if got := float64(len(s)) / d.Seconds(); math.Abs(got-rate)/rate > 0.02 {
		t.Errorf("achieved rate %.1f/s, want %.0f within 2%%", got, rate)
	}
	var gaps []float64
	prev := time.Duration(0)
	for _, at := range s {
		if at < prev || at >= d {
			t.Fatalf("schedule not increasing within [0, %v): %v after %v", d, at, prev)
		}
		gaps = append(gaps, (at - prev).Seconds())
		prev = at
	}
	var mean, sq float64
	for _, g := range gaps {
		mean += g
	}
	mean /= float64(len(gaps))
	long := 0
	for _, g := range gaps {
		sq += (g - mean) * (g - mean)
		if g > mean {
			long++
		}
	}
	cv := math.Sqrt(sq/float64(len(gaps))) / mean
	share := float64(long) / float64(len(gaps))
	if math.Abs(mean-1/rate)*rate > 0.03 || math.Abs(cv-1) > 0.03 || math.Abs(share-math.Exp(-1)) > 0.01 {
		t.Errorf("gaps: mean %.5f (want %.5f), CV %.3f (want 1), share above mean %.3f (want %.3f)", mean, 1/rate, cv, share, math.Exp(-1))
	}
}

func TestZipf(t *testing.T) {
	z := NewZipf(rand.New(rand.NewPCG(3, 4)), 1.1, 100)
	counts := make([]int, 100)
	for range 100_000 {
		counts[z()]++
	}
	if counts[0] <= counts[1] || counts[1] <= counts[10] || counts[10] <= counts[99] {
		t.Errorf("counts not decreasing with rank: %d %d %d %d", counts[0], counts[1], counts[10], counts[99])
	}
}

// TestStartNoticesExit: a proxy that exits at start (as when another
// process took its port) ends the wait at once with errProxyExited, which
// StartStack retries on other ports, and the runtime it started is
// stopped; a runtime that exits is named.
func TestStartNoticesExit(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sleeper, failer := script("sleeper", "exec sleep 60"), script("failer", "exit 3")
	for _, tc := range []struct {
		name string
		bins Binaries
		want string
	}{
		{"proxy exits", Binaries{Runtime: sleeper, Proxy: failer}, "the proxy exited"},
		{"runtime exits", Binaries{Runtime: failer, Proxy: sleeper}, "the runtime exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewStack(tc.bins, StackConfig{ProxyDefaults: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Stop()
			err = s.Start(context.Background(), time.Minute)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error saying %q", err, tc.want)
			}
			if got := errors.Is(err, errProxyExited); got != (tc.name == "proxy exits") {
				t.Errorf("errors.Is(err, errProxyExited) = %v for %q", got, err)
			}
			s.Stop()
			for _, p := range []*Proc{s.Runtime(), s.Proxy()} {
				if p != nil && !p.Exited() {
					t.Errorf("pid %d still runs after Stop", p.Pid())
				}
			}
		})
	}
}
