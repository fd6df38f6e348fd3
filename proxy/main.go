// Command proxy is batchgate's HTTP front door: the drop-in /predict
// endpoint, the Open Inference Protocol v2, a dedup cache and a dynamic
// batcher in front of the runtime sidecar's unix socket.
//
// Configuration is by environment variables only (see the README); bad
// values stop start-up with a message naming the variable.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"go.uber.org/automaxprocs/maxprocs"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/imageprep"
)

const version = "0.1.0"

// Config is the proxy's configuration. Zero values are not defaults: use
// configFromEnv, which applies them and validates.
type Config struct {
	Addr           string          // PORT: listen address
	Socket         string          // RUNTIME_SOCKET
	Batch          batching.Config // MAX_BATCH_SIZE, BATCH_WINDOW, QUEUE_CAPACITY, MAX_INFLIGHT_BATCHES
	RequestTimeout time.Duration   // REQUEST_TIMEOUT
	CacheEntries   int             // CACHE_ENTRIES; 0 disables the cache
	CacheBytes     int64           // CACHE_BYTES
	MaxBodyBytes   int             // MAX_BODY_BYTES
	MaxPixels      int             // MAX_IMAGE_PIXELS
	DrainDelay     time.Duration   // DRAIN_DELAY
	LogLevel       slog.Level      // LOG_LEVEL
}

// configFromEnv reads and validates the environment through getenv.
func configFromEnv(getenv func(string) string) (Config, error) {
	c := Config{}
	var errs []error
	str := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	num := func(name string, def, lo, hi int64) int64 {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < lo || n > hi {
			errs = append(errs, fmt.Errorf("%s=%q: want an integer in [%d, %d]", name, v, lo, hi))
		}
		return n
	}
	dur := func(name string, def, lo, hi time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < lo || d > hi {
			errs = append(errs, fmt.Errorf("%s=%q: want a duration such as 2ms in [%v, %v]", name, v, lo, hi))
		}
		return d
	}
	port := num("PORT", 9999, 1, 65535)
	c.Addr = ":" + strconv.FormatInt(port, 10)
	c.Socket = str("RUNTIME_SOCKET", "/tmp/batchgate/runtime.sock")
	c.Batch.MaxBatchSize = int(num("MAX_BATCH_SIZE", 8, 1, 1024))
	c.Batch.Window = dur("BATCH_WINDOW", 0, 0, 10*time.Second)
	c.Batch.QueueCapacity = int(num("QUEUE_CAPACITY", 64, 1, 1<<20))
	c.Batch.MaxInFlight = int(num("MAX_INFLIGHT_BATCHES", 2, 1, 64))
	c.RequestTimeout = dur("REQUEST_TIMEOUT", 30*time.Second, time.Millisecond, time.Hour)
	c.CacheEntries = int(num("CACHE_ENTRIES", 10000, 0, 1<<30))
	c.CacheBytes = num("CACHE_BYTES", 64<<20, 0, 1<<40)
	c.MaxBodyBytes = int(num("MAX_BODY_BYTES", 10<<20, 1024, 1<<30))
	c.MaxPixels = int(num("MAX_IMAGE_PIXELS", 40_000_000, 1, 1<<31))
	c.DrainDelay = dur("DRAIN_DELAY", 5*time.Second, 0, 10*time.Minute)
	if err := c.LogLevel.UnmarshalText([]byte(str("LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", getenv("LOG_LEVEL")))
	}
	return c, errors.Join(errs...)
}

// proxy is the assembled server.
type proxy struct {
	cfg     Config
	api     *api
	svc     *service
	server  *fasthttp.Server
	stopRT  context.CancelFunc
	rtDone  chan struct{}
	metrics *metrics.Set
}

// newProxy wires the components; set receives every metric.
func newProxy(cfg Config, log *slog.Logger, set *metrics.Set) *proxy {
	p := &proxy{cfg: cfg, metrics: set, rtDone: make(chan struct{})}
	var connected atomic.Bool
	rt := &runtimeConn{socket: cfg.Socket, log: log}
	var b *batching.Batcher[*item, *inference]
	m := newProxyMetrics(set,
		func() float64 { s := b.Snapshot(); return float64(s.Waiting + s.InFlight) },
		func() float64 {
			if connected.Load() {
				return 1
			}
			return 0
		})
	rt.onChange = connected.Store
	bc := cfg.Batch
	bc.Observer = m
	b = batching.New[*item, *inference](&runner{rt: rt, metrics: m}, bc)
	p.svc = &service{
		rt: rt, batcher: b, metrics: m,
		cache:  newResultCache(cfg.CacheEntries, cfg.CacheBytes),
		decode: make(chan struct{}, runtime.GOMAXPROCS(0)),
		// As many may wait for decoding as for a batch.
		maxDecodeWaiting: int64(cfg.Batch.QueueCapacity + runtime.GOMAXPROCS(0)),
		limits:           imageprep.Limits{MaxPixels: cfg.MaxPixels},
		timeout:          cfg.RequestTimeout,
	}
	p.api = &api{svc: p.svc, log: log, metrics: m, requestTimeout: cfg.RequestTimeout, maxBodyBytes: cfg.MaxBodyBytes, version: version}
	p.server = &fasthttp.Server{
		Handler:      p.api.handler,
		ErrorHandler: p.api.errorHandler,
		Name:         "batchgate",
		Logger:       fasthttpLogger{log},
		// Room for multipart framing around a MaxBodyBytes image.
		MaxRequestBodySize: cfg.MaxBodyBytes + 64<<10,
		ReadTimeout:        cfg.RequestTimeout + 10*time.Second,
		WriteTimeout:       cfg.RequestTimeout + 10*time.Second,
		IdleTimeout:        2 * time.Minute,
		NoDefaultDate:      true,
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stopRT = cancel
	go func() { defer close(p.rtDone); rt.run(ctx) }()
	return p
}

// serve serves ln until shutdown.
func (p *proxy) serve(ln net.Listener) error { return p.server.Serve(ln) }

// shutdown drains: readiness fails at once, requests are still served for
// DRAIN_DELAY (so load balancers notice), then the listener closes, open
// requests and queued batches finish, and the runtime connection closes.
func (p *proxy) shutdown(ctx context.Context, log *slog.Logger) error {
	p.api.draining.Store(true)
	log.Info("draining", "drain_delay", p.cfg.DrainDelay.String())
	select {
	case <-time.After(p.cfg.DrainDelay):
	case <-ctx.Done():
	}
	err := p.server.ShutdownWithContext(ctx)
	if berr := p.svc.batcher.Close(ctx); berr != nil {
		err = errors.Join(err, berr)
	}
	p.stopRT()
	<-p.rtDone
	return err
}

func main() {
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxy: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// GOMAXPROCS from the container's CPU limit; it sizes the decode pool.
	if _, err := maxprocs.Set(maxprocs.Logger(func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) })); err != nil {
		log.Warn("cannot read the CPU quota", "error", err)
	}
	set := metrics.NewSet()
	metrics.RegisterSet(set)
	p := newProxy(cfg, log, set)
	if addr := os.Getenv("PPROF_ADDR"); addr != "" { // profiling, for benchmarks only
		go http.ListenAndServe(addr, nil)
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		log.Error("cannot listen", "addr", cfg.Addr, "error", err)
		os.Exit(1)
	}
	log.Info("proxy listening", "addr", cfg.Addr, "runtime_socket", cfg.Socket, "max_batch_size", cfg.Batch.MaxBatchSize,
		"batch_window", cfg.Batch.Window.String(), "queue_capacity", cfg.Batch.QueueCapacity, "gomaxprocs", runtime.GOMAXPROCS(0))
	served := make(chan error, 1)
	go func() { served <- p.serve(ln) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		log.Error("server failed", "error", err)
		os.Exit(1)
	case sig := <-stop:
		log.Info("shutting down", "signal", sig.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainDelay+cfg.RequestTimeout+10*time.Second)
	defer cancel()
	if err := p.shutdown(ctx, log); err != nil {
		log.Error("shutdown incomplete", "error", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
