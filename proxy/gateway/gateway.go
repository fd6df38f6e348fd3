// Package gateway assembles the proxy: the model versions served
// (proxy/versions: a routing file's, or the one runtime at Config.Socket as
// a table of one model and one version), the classification service
// (classify), the HTTP API (httpapi) on a fasthttp server and the gRPC API
// (oipgrpc) on a grpc.Server, with the memory budgets that bound what
// clients can make it hold. It decides nothing per request: every request
// takes the one path httpapi (or oipgrpc) -> versions -> classify -> a
// version's batcher and runtime connection.
//
// # Goroutines
//
// New starts, owned by the Proxy and awaited by Shutdown: trimMemory, the
// routing file's watcher (versions.Router.Run; it only waits without a
// file) and, with API keys, the keys file's watcher (auth's Run); each
// exits when Shutdown cancels their context. The versions' connections and
// batchers are versions.Router's, stopped by its Close, which Shutdown
// calls once the HTTP and gRPC servers have drained. fasthttp owns a
// goroutine per connection, bounded by Config.MaxConnections; grpc.Server
// one per connection and per call, GRPCMaxConcurrentStreams calls a
// connection.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/batchgate/batchgate/batching"
	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/classify"
	"github.com/batchgate/batchgate/proxy/fairshare"
	"github.com/batchgate/batchgate/proxy/httpapi"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/oipgrpc"
	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/proxy/rtconn"
	"github.com/batchgate/batchgate/proxy/stats"
	"github.com/batchgate/batchgate/proxy/versions"
	"github.com/batchgate/batchgate/runtime/wire"
	"github.com/batchgate/batchgate/tracing"
)

// Version is the proxy's version, reported by GET /v2.
const Version = "0.2.0"

// Config configures the proxy. Every zero value means the default given,
// applied by WithDefaults and nowhere else (the runtime connection's three
// timeouts are rtconn's); proxy/main.go leaves a field zero when its
// environment variable is unset. docs/operations.md lists the variables.
type Config struct {
	// Socket is the runtime's unix socket, served without a routing file.
	// Default wire.DefaultSocket.
	Socket string
	// Batch configures the batcher. Zero MaxBatchSize means 8, zero
	// QueueCapacity 64, zero MaxInFlight 2.
	Batch batching.Config
	// RequestTimeout is the default deadline of a request. Default 30s.
	RequestTimeout time.Duration
	// CacheEntries and CacheBytes bound the result cache; negative
	// CacheEntries disables it. Defaults 10000 and 64 MiB.
	CacheEntries int
	CacheBytes   int64
	// MaxBodyBytes is the largest upload. Default 10 MiB.
	MaxBodyBytes int
	// MaxPixels is the largest width x height decoded. Default 40 million.
	MaxPixels int
	// MaxPixelsPerByte caps width x height per byte of an image over 1
	// MiP (imageprep.Limits). Default 2048; negative: no cap.
	MaxPixelsPerByte int
	// UploadMemory bounds the request bodies held at once. Default 96 MiB.
	UploadMemory int64
	// UploadWait is how long a request waits for UploadMemory before 429.
	// Default 2s.
	UploadWait time.Duration
	// UploadMinRate is the average rate, in bytes a second, a body must
	// keep once UploadRateGrace has passed since its read began, or it
	// gets 408. Defaults 16 KiB/s and 5s; negative UploadMinRate: no
	// minimum.
	UploadMinRate   int64
	UploadRateGrace time.Duration
	// UploadsPerClient and UploadsPerKey bound the bodies over 64 KiB
	// read at once from one client address and with one API key; beyond
	// them 429.
	// Default 8 each; negative: no bound.
	UploadsPerClient int
	UploadsPerKey    int
	// UploadMemoryPerClient bounds the part of UploadMemory held by one
	// client address's bodies being read; beyond it 429. Default half of
	// UploadMemory; negative: no bound.
	UploadMemoryPerClient int64
	// SharedCacheAcrossKeys lets different API keys share cached answers
	// and coalesced work. Default false: one cache partition per key.
	SharedCacheAcrossKeys bool
	// DecodeQueue is the most requests waiting for or holding a decode
	// worker; beyond it 429. Default QueueCapacity + GOMAXPROCS: as many
	// may wait for decoding as for a batch.
	DecodeQueue int
	// ImagesPerClient is the most images of one client address in
	// progress (decoding or waiting for the model) while another address
	// is present, and DecodeQueue minus it while none is; beyond it 429
	// client_busy. Default DecodeQueue/4, at least GOMAXPROCS+1 (classify);
	// negative: no bound.
	ImagesPerClient int
	// RefusedBytesPerSecond and RefusedBytesAllowance: each refused
	// request (4xx) costs its client address its body and 64 KiB; a debt
	// past the allowance holds that address's requests, bodies unread,
	// for up to RefusedWait before they are served or answered 429
	// (client_refusals); debts are forgiven at RefusedBytesPerSecond.
	// Defaults 8 MiB/s, 64 MiB, 2s; negative RefusedBytesPerSecond: off.
	RefusedBytesPerSecond int64
	RefusedBytesAllowance int64
	RefusedWait           time.Duration
	// DecodeMemory bounds the images being decoded at once (their decoded
	// size, estimated from the header). Default 128 MiB.
	DecodeMemory int64
	// FullSizeJPEG decodes every JPEG at full size: no DCT-domain
	// scaling of large photos, so tensors equal PIL + torchvision's bit
	// for bit, at several times the CPU on large photos. Default false.
	FullSizeJPEG bool
	// MaxConnections bounds open client connections; beyond it fasthttp
	// answers 503 and closes. Default 10000.
	MaxConnections int
	// MaxConnectionsPerIP bounds the open connections from one client
	// address; beyond it fasthttp answers 429 and closes. Default 1024;
	// negative: no bound.
	MaxConnectionsPerIP int
	// HeaderTimeout bounds the wait for a new connection's first request
	// and the read of every request's headers. Default 10s.
	HeaderTimeout time.Duration
	// MaxElements is the most images in one OIP request. Default
	// QueueCapacity/4, at least 1, at most 64.
	MaxElements int
	// RuntimeStallAfter: a runtime making no progress this long is treated
	// as gone (503s, readiness fails, redial). Zero: rtconn's default, 4s.
	RuntimeStallAfter time.Duration
	// RuntimeBatchTimeout caps one batch's time in the runtime. Zero:
	// rtconn's default, 15s.
	RuntimeBatchTimeout time.Duration
	// RuntimeHeartbeatTimeout bounds each progress report; no answer in
	// time is a stall. Zero: rtconn's default, 2s.
	RuntimeHeartbeatTimeout time.Duration
	// DrainDelay is how long the proxy keeps serving, with readiness
	// failing, before it stops accepting. Default 5s; negative: none.
	DrainDelay time.Duration
	// ConnMaxAge closes a keep-alive connection after its first response
	// past this age (Connection: close), so that clients reconnect and a
	// load balancer (kube-proxy) spreads them over new replicas. Default
	// 30s; negative: never.
	ConnMaxAge time.Duration
	// Tracing makes spans of requests and batches (docs/tracing.md); the
	// global tracer provider, installed by tracing.Start, exports them.
	// Default false.
	Tracing bool
	// TrustRemoteSampling says whose incoming sampled flag is honoured
	// (TRACING_TRUST_REMOTE, docs/tracing.md). Default
	// tracing.TrustAuthenticated.
	TrustRemoteSampling tracing.TrustRemote
	// Auth, if set, requires API keys (docs/auth.md): AuthFile is its
	// path, polled every AuthPoll (default 2s) and applied when its
	// content changes; AuthSHA256 is the sha256 of the content Auth came
	// from. Nil: no keys needed, as the replaced server.
	Auth       *auth.Keys
	AuthFile   string
	AuthPoll   time.Duration
	AuthSHA256 [32]byte
	// Routing, if set, serves the model versions of a routing file
	// (docs/versions.md), each from its own runtime, instead of the one
	// runtime at Socket (routing.Single). RoutingFile is its path, polled every
	// RoutingPoll (default 2s) and applied when its content changes;
	// RoutingSHA256 is the sha256 of the content Routing came from.
	Routing       *routing.File
	RoutingFile   string
	RoutingPoll   time.Duration
	RoutingSHA256 [32]byte
	// GRPCPort is the port of the Open Inference Protocol over gRPC
	// (ServeGRPC; proxy/main.go listens on it, GRPC_PORT). Default 8001,
	// Triton's; negative: no gRPC API.
	GRPCPort int
	// GRPCMaxConcurrentStreams bounds the gRPC calls in progress on one
	// connection. Default 128.
	GRPCMaxConcurrentStreams int
}

// WithDefaults returns c with every zero value replaced by its default:
// the one place the proxy's defaults are written (Config's comments state
// them).
func (c Config) WithDefaults() Config {
	set := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set64 := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Socket == "" {
		c.Socket = wire.DefaultSocket
	}
	set(&c.Batch.MaxBatchSize, 8)
	set(&c.Batch.QueueCapacity, 64)
	set(&c.Batch.MaxInFlight, 2)
	setDur(&c.RequestTimeout, 30*time.Second)
	set(&c.CacheEntries, 10000)
	set64(&c.CacheBytes, 64<<20)
	set(&c.MaxBodyBytes, 10<<20)
	set(&c.MaxPixels, imageprep.DefaultMaxPixels)
	set(&c.MaxPixelsPerByte, imageprep.DefaultMaxPixelsPerByte)
	set64(&c.UploadMemory, 96<<20)
	set64(&c.UploadMemoryPerClient, c.UploadMemory/2)
	setDur(&c.UploadWait, 2*time.Second)
	set(&c.DecodeQueue, c.Batch.QueueCapacity+runtime.GOMAXPROCS(0))
	set(&c.ImagesPerClient, max(c.DecodeQueue/4, runtime.GOMAXPROCS(0)+1))
	set64(&c.DecodeMemory, 128<<20)
	set(&c.MaxConnections, 10000)
	set(&c.MaxConnectionsPerIP, 1024)
	setDur(&c.HeaderTimeout, 10*time.Second)
	set64(&c.UploadMinRate, 16<<10)
	setDur(&c.UploadRateGrace, 5*time.Second)
	set(&c.UploadsPerClient, 8)
	set(&c.UploadsPerKey, 8)
	set(&c.MaxElements, min(max(c.Batch.QueueCapacity/4, 1), 64))
	set64(&c.RefusedBytesPerSecond, 8<<20)
	set64(&c.RefusedBytesAllowance, 64<<20)
	setDur(&c.RefusedWait, 2*time.Second)
	setDur(&c.DrainDelay, 5*time.Second)
	setDur(&c.ConnMaxAge, 30*time.Second)
	setDur(&c.AuthPoll, 2*time.Second)
	setDur(&c.RoutingPoll, 2*time.Second)
	set(&c.GRPCPort, 8001)
	set(&c.GRPCMaxConcurrentStreams, 128)
	return c
}

// Proxy is the assembled server.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	api      *httpapi.Server
	server   *fasthttp.Server
	metrics  *fasthttp.Server // /metrics on its own port (ServeMetrics)
	grpc     *oipgrpc.Server  // the gRPC API (ServeGRPC)
	versions *versions.Router
	stop     context.CancelFunc // ends the goroutines wg counts
	wg       sync.WaitGroup     // every goroutine New starts; Shutdown waits
}

// New wires the proxy and starts its runtime connections; set receives
// every metric.
func New(cfg Config, log *slog.Logger, set *metrics.Set) *Proxy {
	cfg = cfg.WithDefaults()
	p := &Proxy{cfg: cfg, log: log}
	uploads := budget.New(cfg.UploadMemory)
	var svc *classify.Service // the gauges read it once New has returned
	m := stats.New(set, stats.Gauges{
		QueueDepth:    func() float64 { return p.versions.QueueDepth() },
		RuntimeDemand: func() float64 { return p.versions.Load().Demand.Seconds() },
		RuntimeBusy:   func() float64 { return p.versions.Load().Busy.Seconds() },
		ExpectedWait:  func() float64 { return p.versions.Load().Wait.Seconds() },
		RuntimeConnected: func() float64 {
			if p.versions.Ready() {
				return 1
			}
			return 0
		},
		UploadBytes: func() float64 { return float64(uploads.InUse()) },
		DecodeBytes: func() float64 { return float64(svc.DecodeBytes()) },
	})
	// No default backend: every request classifies on the Target of the
	// version it was routed to (versions.Router.Route).
	svc = classify.New(classify.Config{
		CacheEntries: max(cfg.CacheEntries, 0), CacheBytes: cfg.CacheBytes,
		DecodeQueue: cfg.DecodeQueue, ImagesPerClient: cfg.ImagesPerClient,
		DecodeMemory: cfg.DecodeMemory,
		Limits:       imageprep.Limits{MaxPixels: cfg.MaxPixels, MaxPixelsPerByte: cfg.MaxPixelsPerByte, FullSizeJPEG: cfg.FullSizeJPEG},
	}, nil, m)
	table := cfg.Routing
	if table == nil {
		table = routing.Single(cfg.Socket)
	}
	p.versions = versions.New(versions.Config{
		Batch: cfg.Batch, RequestTimeout: cfg.RequestTimeout,
		Runtime: rtconn.Config{StallAfter: cfg.RuntimeStallAfter, HeartbeatTimeout: cfg.RuntimeHeartbeatTimeout,
			BatchTimeout: cfg.RuntimeBatchTimeout},
		Routing: table, RoutingFile: cfg.RoutingFile, RoutingPoll: cfg.RoutingPoll, RoutingSHA256: cfg.RoutingSHA256,
	}, svc, log, m)
	var refusals *fairshare.Debt // nil: off
	if cfg.RefusedBytesPerSecond > 0 {
		refusals = fairshare.NewDebt(fairshare.DebtConfig{Rate: cfg.RefusedBytesPerSecond, Allowance: cfg.RefusedBytesAllowance, MaxWait: cfg.RefusedWait})
	}
	var authn *auth.Authenticator
	if cfg.Auth != nil {
		authn = auth.New(cfg.Auth, cfg.AuthSHA256, auth.Config{File: cfg.AuthFile, Poll: cfg.AuthPoll, Log: log, Metrics: set})
	}
	p.api = httpapi.New(httpapi.Config{
		Router: p.versions, Metrics: m, Log: log, Version: Version, Ready: p.versions.Ready,
		RequestTimeout: cfg.RequestTimeout, MaxBodyBytes: cfg.MaxBodyBytes,
		Uploads: uploads, UploadWait: cfg.UploadWait, MaxElements: cfg.MaxElements,
		UploadMinRate: max(cfg.UploadMinRate, 0), UploadRateGrace: cfg.UploadRateGrace,
		UploadsPerClient: max(cfg.UploadsPerClient, 0), UploadsPerKey: max(cfg.UploadsPerKey, 0),
		UploadMemoryPerClient: cfg.UploadMemoryPerClient,
		SharedCacheAcrossKeys: cfg.SharedCacheAcrossKeys,
		Tracing:               cfg.Tracing, TrustRemoteSampling: cfg.TrustRemoteSampling, Auth: authn,
		Refusals: refusals, ConnMaxAge: max(cfg.ConnMaxAge, 0),
	})
	p.server = &fasthttp.Server{
		Handler:       p.api.Handler,
		ErrorHandler:  p.api.ErrorHandler,
		ExpectHandler: p.api.ExpectHandler,
		ConnState:     p.api.ConnState, // each connection's age, for ConnMaxAge
		Name:          "batchgate",
		Logger:        fasthttpLogger{log},
		// Bodies reach the handlers as streams, which read them within
		// the upload budget; fasthttp itself buffers at most 8 KiB.
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		MaxRequestBodySize:           p.api.MaxRequestBody(),
		ReduceMemoryUsage:            true, // idle connections keep no buffers
		Concurrency:                  cfg.MaxConnections,
		MaxConnsPerIP:                max(cfg.MaxConnectionsPerIP, 0),
		// ReadTimeout bounds a new connection's wait for its first
		// request and every request's headers; once they are in, the
		// body has until the request's deadline (and its minimum rate,
		// httpapi's meteredBody).
		ReadTimeout:    cfg.HeaderTimeout,
		HeaderReceived: p.api.HeaderReceived,
		// fasthttp's own error messages never carry request bytes
		// (headers hold API keys).
		SecureErrorLogMessage: true,
		WriteTimeout:          cfg.RequestTimeout + 10*time.Second,
		IdleTimeout:           2 * time.Minute,
		NoDefaultDate:         true,
		CloseOnShutdown:       true,
	}
	p.grpc = oipgrpc.New(oipgrpc.Config{
		Router: p.versions, Metrics: m, Set: set, Log: log, Version: Version, Ready: p.api.Ready,
		RequestTimeout: cfg.RequestTimeout, MaxMessageBytes: cfg.MaxBodyBytes, MaxElements: cfg.MaxElements,
		MaxConcurrentStreams: uint32(cfg.GRPCMaxConcurrentStreams), ConnMaxAge: max(cfg.ConnMaxAge, 0),
		Uploads: uploads, UploadWait: cfg.UploadWait, Auth: authn, SharedCacheAcrossKeys: cfg.SharedCacheAcrossKeys,
		Tracing: cfg.Tracing, TrustRemoteSampling: cfg.TrustRemoteSampling,
	})
	p.metrics = &fasthttp.Server{
		Handler: p.api.MetricsHandler, Name: "batchgate", Logger: fasthttpLogger{log},
		Concurrency: 64, MaxConnsPerIP: 8, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxRequestBodySize: 4 << 10, NoDefaultDate: true, CloseOnShutdown: true,
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	idle := func() bool {
		return uploads.InUse() == 0 && svc.DecodeBytes() == 0 && p.versions.QueueDepth() == 0
	}
	// Owned by p.wg; each exits when Shutdown cancels ctx, and Shutdown
	// waits for them.
	p.wg.Go(func() { trimMemory(ctx, idle) })
	p.wg.Go(func() { p.versions.Run(ctx) }) // polls the routing file, if any
	if authn != nil {
		p.wg.Go(func() { authn.Run(ctx) }) // polls the keys file
	}
	return p
}

// trimMemory returns freed heap to the operating system once the proxy is
// idle. After a burst (uploads held open, large decodes) the Go runtime
// keeps the pages for reuse and gives them back only slowly, and without
// memory pressure it may not even collect the garbage, so RSS would stay
// near the burst's peak. Every 2 s, if the proxy is idle and has allocated
// 32 MiB or more since the last trim, it collects and returns what is free.
// It exits when ctx ends.
func trimMemory(ctx context.Context, idle func() bool) {
	const every, threshold = 2 * time.Second, 32 << 20
	t := time.NewTicker(every)
	defer t.Stop()
	allocs := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rtmetrics.Read(allocs)
		if allocs[0].Value.Kind() != rtmetrics.KindUint64 || allocs[0].Value.Uint64()-last < threshold || !idle() {
			continue
		}
		last = allocs[0].Value.Uint64()
		runtime.GC() // pools keep objects through one collection
		debug.FreeOSMemory()
	}
}

// Serve serves ln until Shutdown.
func (p *Proxy) Serve(ln net.Listener) error { return p.server.Serve(ln) }

// ServeGRPC serves the Open Inference Protocol over gRPC
// (proxy/oipgrpc) on ln, the gRPC port, until Shutdown.
func (p *Proxy) ServeGRPC(ln net.Listener) error { return p.grpc.Serve(ln) }

// ServeMetrics serves GET /metrics on ln, the metrics port, until Shutdown.
// Scrapes go on while the API drains.
func (p *Proxy) ServeMetrics(ln net.Listener) error { return p.metrics.Serve(ln) }

// Ready reports whether the proxy would answer /readyz with 200.
func (p *Proxy) Ready() bool { return p.api.Ready() }

// Shutdown drains: readiness fails at once and responses close their
// connections; requests are still served for DrainDelay (so load balancers
// notice), then the listener closes, open requests and queued batches
// finish, the runtime connections close, and every goroutine New started
// has exited before it returns.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.api.SetDraining()
	p.log.Info("draining", "drain_delay", p.cfg.DrainDelay.String())
	select {
	case <-time.After(max(p.cfg.DrainDelay, 0)):
	case <-ctx.Done():
	}
	// HTTP and gRPC drain together; the runtimes close once both have.
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- p.grpc.Shutdown(ctx) }()
	err := errors.Join(p.server.ShutdownWithContext(ctx), <-grpcDone)
	if verr := p.versions.Close(ctx); verr != nil {
		err = errors.Join(err, verr)
	}
	p.stop()
	p.wg.Wait()
	if merr := p.metrics.ShutdownWithContext(ctx); merr != nil {
		err = errors.Join(err, merr)
	}
	return err
}

// fasthttpLogger sends fasthttp's own messages to slog.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("fasthttp", "message", fmt.Sprintf(format, args...))
}
