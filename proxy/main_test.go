package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/proxy/gateway"
)

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string // substring of the error; "" for success
	}{
		{map[string]string{}, ""},
		{map[string]string{"PORT": "8080", "BATCH_WINDOW": "2ms", "MAX_BATCH_SIZE": "16"}, ""},
		{map[string]string{"PORT": "99999"}, "PORT"},
		// METRICS_PORT: /metrics on a port of its own, never PORT's.
		{map[string]string{"METRICS_PORT": "9100"}, ""},
		{map[string]string{"PORT": "8080", "METRICS_PORT": "9100"}, ""},
		{map[string]string{"METRICS_PORT": "0"}, "METRICS_PORT"},
		{map[string]string{"METRICS_PORT": "65536"}, "METRICS_PORT"},
		{map[string]string{"METRICS_PORT": "metrics"}, "METRICS_PORT"},
		{map[string]string{"PORT": "8080", "METRICS_PORT": "8080"}, "METRICS_PORT"},
		{map[string]string{"PORT": "9464"}, "METRICS_PORT"},             // the metrics port's default
		{map[string]string{"METRICS_PORT": "9999"}, "METRICS_PORT"},     // the API port's default
		{map[string]string{"PORT": "9464", "METRICS_PORT": "9465"}, ""}, // moved out of the way
		{map[string]string{"BATCH_WINDOW": "2"}, "BATCH_WINDOW"},
		{map[string]string{"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE"},
		{map[string]string{"QUEUE_CAPACITY": "x"}, "QUEUE_CAPACITY"},
		{map[string]string{"REQUEST_TIMEOUT": "-1s"}, "REQUEST_TIMEOUT"},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{map[string]string{"CACHE_BYTES": "-5", "DRAIN_DELAY": "forever"}, "DRAIN_DELAY"},
		{map[string]string{"UPLOAD_MEMORY_BYTES": "2000000"}, "UPLOAD_MEMORY_BYTES"},
		{map[string]string{"DECODE_MEMORY_BYTES": "5"}, "DECODE_MEMORY_BYTES"},
		{map[string]string{"JPEG_DCT_SCALING": "false"}, ""},
		{map[string]string{"JPEG_DCT_SCALING": "no"}, "JPEG_DCT_SCALING"},
		// GRPC_PORT: a port of its own too; 0 turns gRPC off.
		{map[string]string{"GRPC_PORT": "0"}, ""},
		{map[string]string{"GRPC_PORT": "8002"}, ""},
		{map[string]string{"GRPC_PORT": "9999"}, "GRPC_PORT"}, // PORT's default
		{map[string]string{"PORT": "8001"}, "GRPC_PORT"},      // gRPC's default
		{map[string]string{"GRPC_PORT": "65536"}, "GRPC_PORT"},
	} {
		c, err := configFromEnv(func(k string) string { return tc.env[k] })
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.env, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want one naming %s", tc.env, err, tc.want)
		}
		g := c.gateway
		if tc.want == "" && tc.env["BATCH_WINDOW"] == "2ms" && (g.Batch.Window != 2*time.Millisecond || c.addr != ":8080" || g.Batch.MaxBatchSize != 16) {
			t.Errorf("parsed %+v", c)
		}
	}
	// The defaults the documentation states: gateway.Config's, applied
	// by WithDefaults only; main leaves every unset field zero.
	c, _ := configFromEnv(func(string) string { return "" })
	if unset := (gateway.Config{Tracing: c.gateway.Tracing, TrustRemoteSampling: c.gateway.TrustRemoteSampling}); !reflect.DeepEqual(c.gateway, unset) {
		t.Errorf("with no environment main writes defaults of its own: %+v", c.gateway)
	}
	g := c.gateway.WithDefaults()
	if c.addr != ":9999" || c.metricsAddr != ":9464" || g.DrainDelay != 5*time.Second || g.UploadMemory != 96<<20 || g.DecodeMemory != 128<<20 ||
		g.MaxElements != 16 || g.CacheEntries != 10000 || c.pprofAddr != "" || g.FullSizeJPEG || g.Socket != "/tmp/batchgate/runtime.sock" {
		t.Errorf("defaults: %+v", c)
	}
	if c, err := configFromEnv(func(k string) string { return map[string]string{"PORT": "8080", "METRICS_PORT": "9100"}[k] }); err != nil ||
		c.addr != ":8080" || c.metricsAddr != ":9100" {
		t.Errorf("PORT=8080 METRICS_PORT=9100: addr %q, metrics %q, %v", c.addr, c.metricsAddr, err)
	}
	// Equal ports: the error names METRICS_PORT and the port they share.
	if _, err := configFromEnv(func(k string) string { return map[string]string{"PORT": "8080", "METRICS_PORT": "8080"}[k] }); err == nil ||
		!strings.Contains(err.Error(), "METRICS_PORT must differ from PORT (8080)") {
		t.Errorf("PORT=METRICS_PORT=8080: %v", err)
	}
	if c, _ := configFromEnv(func(k string) string { return map[string]string{"JPEG_DCT_SCALING": "false"}[k] }); !c.gateway.FullSizeJPEG {
		t.Error("JPEG_DCT_SCALING=false does not set FullSizeJPEG")
	}
	if c, _ := configFromEnv(func(k string) string { return map[string]string{"CACHE_ENTRIES": "0"}[k] }); c.gateway.CacheEntries >= 0 {
		t.Errorf("CACHE_ENTRIES=0 gives %d, want the cache disabled (< 0)", c.gateway.CacheEntries)
	}
	// 0 turns a bound off; DRAIN_DELAY=0 is no delay, not the default.
	zero := func(k string) string {
		return map[string]string{"DRAIN_DELAY": "0", "UPLOADS_PER_CLIENT": "0", "MAX_CONNECTIONS_PER_IP": "0"}[k]
	}
	if c, err := configFromEnv(zero); err != nil || c.gateway.DrainDelay >= 0 || c.gateway.UploadsPerClient >= 0 || c.gateway.MaxConnectionsPerIP >= 0 {
		t.Errorf("DRAIN_DELAY=0 UPLOADS_PER_CLIENT=0 MAX_CONNECTIONS_PER_IP=0: %+v, %v; want them off (< 0)", c.gateway, err)
	}
}
