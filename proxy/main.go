// Command proxy is batchgate's HTTP front door: the drop-in /predict
// endpoint, the Open Inference Protocol v2, a dedup cache and a dynamic
// batcher in front of the runtime sidecar's unix socket. The work is done
// by the packages under proxy/ (assembled by gateway); main reads the
// environment, sets GOMAXPROCS and GOMEMLIMIT from the container's limits,
// and handles signals.
//
// Configuration is by environment variables only (docs/operations.md); bad
// values stop start-up with a message naming the variable.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/VictoriaMetrics/metrics"
	"go.uber.org/automaxprocs/maxprocs"

	"github.com/batchgate/batchgate/proxy/auth"
	"github.com/batchgate/batchgate/proxy/gateway"
	"github.com/batchgate/batchgate/proxy/imageprep"
	"github.com/batchgate/batchgate/proxy/routing"
	"github.com/batchgate/batchgate/tracing"
)

// config is everything main reads from the environment.
type config struct {
	addr        string
	metricsAddr string
	pprofAddr   string
	logLevel    slog.Level
	gateway     gateway.Config
	tracing     tracing.Config
}

// configFromEnv reads and validates the environment through getenv. A
// variable unset leaves its gateway.Config field zero: the defaults are
// gateway.Config.WithDefaults', and written nowhere else.
func configFromEnv(getenv func(string) string) (config, error) {
	var c config
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
	// bound reads a bound whose 0 turns it off: the gateway reads a
	// negative value as off, and zero (unset) as its default.
	bound := func(name string, hi int64) int64 {
		if n := num(name, 0, 0, hi); n != 0 || getenv(name) == "" {
			return n
		}
		return -1
	}
	g := &c.gateway
	c.addr = ":" + strconv.FormatInt(num("PORT", 9999, 1, 65535), 10)
	// METRICS_PORT: /metrics on a port of its own, so an Ingress in front
	// of PORT never exposes it.
	c.metricsAddr = ":" + strconv.FormatInt(num("METRICS_PORT", 9464, 1, 65535), 10)
	if c.metricsAddr == c.addr {
		errs = append(errs, fmt.Errorf("METRICS_PORT must differ from PORT (%s)", c.addr[1:]))
	}
	c.pprofAddr = getenv("PPROF_ADDR")
	g.Socket = getenv("RUNTIME_SOCKET")
	g.Batch.MaxBatchSize = int(num("MAX_BATCH_SIZE", 0, 1, 1024))
	g.Batch.Window = dur("BATCH_WINDOW", 0, 0, 10*time.Second)
	g.Batch.QueueCapacity = int(num("QUEUE_CAPACITY", 0, 1, 1<<20))
	g.Batch.MaxInFlight = int(num("MAX_INFLIGHT_BATCHES", 0, 1, 64))
	g.RequestTimeout = dur("REQUEST_TIMEOUT", 0, time.Millisecond, time.Hour)
	g.CacheEntries = int(bound("CACHE_ENTRIES", 1<<30)) // 0: no cache
	g.CacheBytes = num("CACHE_BYTES", 0, 1, 1<<40)
	g.MaxBodyBytes = int(num("MAX_BODY_BYTES", 0, 1024, 1<<30))
	g.MaxPixels = int(num("MAX_IMAGE_PIXELS", 0, 1, 1<<31))
	g.MaxPixelsPerByte = int(bound("MAX_PIXELS_PER_BYTE", 1<<30))
	g.UploadMemory = num("UPLOAD_MEMORY_BYTES", 0, 1<<20, 1<<40)
	g.UploadWait = dur("UPLOAD_WAIT", 0, time.Millisecond, time.Minute)
	g.UploadMinRate = bound("UPLOAD_MIN_BYTES_PER_SECOND", 1<<40)
	g.UploadRateGrace = dur("UPLOAD_RATE_GRACE", 0, time.Millisecond, time.Hour)
	g.UploadsPerClient = int(bound("UPLOADS_PER_CLIENT", 1<<20))
	g.UploadsPerKey = int(bound("UPLOADS_PER_KEY", 1<<20))
	g.UploadMemoryPerClient = bound("UPLOAD_MEMORY_PER_CLIENT", 1<<40)
	switch v := str("CACHE_SHARED_ACROSS_KEYS", "false"); v {
	case "false", "0":
	case "true", "1":
		g.SharedCacheAcrossKeys = true
	default:
		errs = append(errs, fmt.Errorf("CACHE_SHARED_ACROSS_KEYS=%q: want true or false", v))
	}
	g.DecodeQueue = int(num("DECODE_QUEUE_CAPACITY", 0, 1, 1<<20))
	g.DecodeMemory = num("DECODE_MEMORY_BYTES", 0, 1<<20, 1<<40)
	g.ImagesPerClient = int(bound("IMAGES_PER_CLIENT", 1<<20))
	g.RefusedBytesPerSecond = bound("REFUSED_BYTES_PER_SECOND", 1<<40)
	g.RefusedBytesAllowance = num("REFUSED_BYTES_ALLOWANCE", 0, 1, 1<<40)
	g.RefusedWait = dur("REFUSED_WAIT", 0, time.Millisecond, time.Minute)
	switch v := str("JPEG_DCT_SCALING", "true"); v {
	case "true", "1":
	case "false", "0":
		g.FullSizeJPEG = true
	default:
		errs = append(errs, fmt.Errorf("JPEG_DCT_SCALING=%q: want true or false", v))
	}
	g.MaxConnections = int(num("MAX_CONNECTIONS", 0, 1, 1<<20))
	g.MaxConnectionsPerIP = int(bound("MAX_CONNECTIONS_PER_IP", 1<<20))
	g.HeaderTimeout = dur("HEADER_TIMEOUT", 0, 10*time.Millisecond, time.Hour)
	g.MaxElements = int(num("OIP_MAX_IMAGES", 0, 1, 1024))
	g.RuntimeStallAfter = dur("RUNTIME_STALL_TIMEOUT", 0, 100*time.Millisecond, time.Hour)
	g.RuntimeBatchTimeout = dur("RUNTIME_BATCH_TIMEOUT", 0, 100*time.Millisecond, time.Hour)
	g.RuntimeHeartbeatTimeout = dur("RUNTIME_HEARTBEAT_TIMEOUT", 0, 10*time.Millisecond, time.Hour)
	g.DrainDelay = dur("DRAIN_DELAY", 0, 0, 10*time.Minute)
	if g.DrainDelay == 0 && getenv("DRAIN_DELAY") != "" {
		g.DrainDelay = -1 // DRAIN_DELAY=0: none
	}
	g.ConnMaxAge = dur("CONN_MAX_AGE", 0, 0, 24*time.Hour)
	if g.ConnMaxAge == 0 && getenv("CONN_MAX_AGE") != "" {
		g.ConnMaxAge = -1 // CONN_MAX_AGE=0: never
	}
	// ROUTING_FILE: several model versions (docs/versions.md); a bad file
	// stops start-up here, while at a reload it is rejected and logged.
	if path := getenv("ROUTING_FILE"); path != "" {
		f, sum, err := routing.Load(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("ROUTING_FILE=%q: %w", path, err))
		}
		g.Routing, g.RoutingFile, g.RoutingSHA256 = f, path, sum
		g.RoutingPoll = dur("ROUTING_POLL_INTERVAL", 0, 100*time.Millisecond, time.Hour)
	}
	// AUTH_KEYS_FILE: API keys (docs/auth.md); off unless set. A bad file
	// stops start-up here, while at a reload it is rejected and logged.
	if path := getenv("AUTH_KEYS_FILE"); path != "" {
		k, sum, err := auth.Load(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("AUTH_KEYS_FILE=%q: %w", path, err))
		}
		g.Auth, g.AuthFile, g.AuthSHA256 = k, path, sum
		g.AuthPoll = dur("AUTH_POLL_INTERVAL", 0, 100*time.Millisecond, time.Hour)
	}
	// GRPC_PORT: the Open Inference Protocol over gRPC; 0 turns it off.
	g.GRPCPort = int(bound("GRPC_PORT", 65535))
	if p := ":" + strconv.Itoa(g.WithDefaults().GRPCPort); p == c.addr || p == c.metricsAddr {
		errs = append(errs, fmt.Errorf("GRPC_PORT must differ from PORT (%s) and METRICS_PORT (%s)", c.addr[1:], c.metricsAddr[1:]))
	}
	if d := g.WithDefaults(); d.UploadMemory < 2*int64(d.MaxBodyBytes) {
		errs = append(errs, fmt.Errorf("UPLOAD_MEMORY_BYTES=%d must hold at least two bodies of MAX_BODY_BYTES=%d (OIP JSON requests reserve up to 3x their size)", d.UploadMemory, d.MaxBodyBytes))
	}
	// OTEL_*: tracing, off unless an OTLP endpoint is set (docs/tracing.md).
	tc, err := tracing.ConfigFromEnv(getenv, "batchgate-proxy")
	if err != nil {
		errs = append(errs, err)
	}
	c.tracing, g.Tracing, g.TrustRemoteSampling = tc, tc.Enabled(), tc.TrustRemote
	if err := c.logLevel.UnmarshalText([]byte(str("LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", getenv("LOG_LEVEL")))
	}
	return c, errors.Join(errs...)
}

func main() {
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxy: bad configuration:\n%v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: cfg.logLevel}))
	// GOMAXPROCS from the container's CPU limit: it sizes the decode pool.
	if _, err := maxprocs.Set(maxprocs.Logger(func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) })); err != nil {
		log.Warn("cannot read the CPU quota", "error", err)
	}
	// GOMEMLIMIT at 90% of the container's memory limit (unless GOMEMLIMIT
	// is set): the GC works harder before the kernel kills the process.
	if _, err := memlimit.Set(memlimit.WithRatio(0.9)); err != nil {
		log.Warn("cannot read the memory limit", "error", err)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		log.Info("memory limit", "gomemlimit_mib", l>>20)
	}
	stopTracing, err := tracing.Start(context.Background(), cfg.tracing, log)
	if err != nil {
		log.Error("cannot start tracing", "error", err)
		os.Exit(1)
	}
	p := gateway.New(cfg.gateway, log, metrics.NewSet())
	if cfg.pprofAddr != "" {
		go servePprof(cfg.pprofAddr, log)
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		log.Error("cannot listen", "addr", cfg.addr, "error", err)
		os.Exit(1)
	}
	mln, err := net.Listen("tcp", cfg.metricsAddr)
	if err != nil {
		log.Error("cannot listen for /metrics (METRICS_PORT)", "addr", cfg.metricsAddr, "error", err)
		os.Exit(1)
	}
	g := cfg.gateway.WithDefaults() // what New serves with
	var gln net.Listener
	if g.GRPCPort > 0 {
		if gln, err = net.Listen("tcp", ":"+strconv.Itoa(g.GRPCPort)); err != nil {
			log.Error("cannot listen for gRPC (GRPC_PORT)", "port", g.GRPCPort, "error", err)
			os.Exit(1)
		}
	}
	if g.Auth != nil {
		log.Info("API keys required", "keys_file", g.AuthFile, "keys", g.Auth.Len(), "poll_interval", g.AuthPoll.String())
	}
	if g.Routing != nil {
		log.Info("serving model versions from a routing file", "routing_file", g.RoutingFile,
			"poll_interval", g.RoutingPoll.String(), "models", len(g.Routing.Models))
	}
	log.Info("proxy listening", "addr", cfg.addr, "metrics_addr", cfg.metricsAddr, "grpc_port", g.GRPCPort, "runtime_socket", g.Socket, "max_batch_size", g.Batch.MaxBatchSize,
		"batch_window", g.Batch.Window.String(), "queue_capacity", g.Batch.QueueCapacity, "gomaxprocs", runtime.GOMAXPROCS(0),
		"upload_memory_mib", g.UploadMemory>>20, "decode_memory_mib", g.DecodeMemory>>20, "jpeg_decoder", imageprep.JPEGDecoder(),
		"png_inflater", imageprep.PNGInflater(), "webp_decoder", imageprep.WebPDecoder())
	served := make(chan error, 3)
	go func() { served <- p.Serve(ln) }()
	go func() {
		if err := p.ServeMetrics(mln); err != nil {
			served <- fmt.Errorf("metrics server: %w", err)
		}
	}()
	if gln != nil {
		go func() {
			if err := p.ServeGRPC(gln); err != nil {
				served <- fmt.Errorf("grpc server: %w", err)
			}
		}()
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		log.Error("server failed", "error", err)
		os.Exit(1)
	case sig := <-stop:
		log.Info("shutting down", "signal", sig.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(g.DrainDelay, 0)+g.RequestTimeout+10*time.Second)
	defer cancel()
	err = p.Shutdown(ctx)
	// The last spans, within the drain's deadline.
	if terr := stopTracing(ctx); terr != nil {
		log.Warn("tracing: cannot flush the last spans", "error", terr)
	}
	if err != nil {
		log.Error("shutdown incomplete", "error", err)
		os.Exit(1)
	}
	log.Info("stopped")
}

// servePprof serves the profiling endpoints on addr only (PPROF_ADDR; off
// unless set), never on the API's port.
func servePprof(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Warn("pprof enabled", "addr", addr)
	if err := srv.ListenAndServe(); err != nil {
		log.Error("pprof server failed", "addr", addr, "error", err)
	}
}
