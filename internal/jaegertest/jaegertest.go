// Package jaegertest runs a real trace collector for tests: Jaeger v2 (the
// all-in-one binary built on the OpenTelemetry Collector) with in-memory
// storage, receiving OTLP/HTTP on a free loopback port. Tests export spans
// to OTLPEndpoint and read them back with Trace or WaitTrace.
//
// `make test` builds the binary into .deps/tools/jaeger
// (scripts/build-jaeger.sh, pinned by the module in ./jaegertool).
package jaegertest

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
)

// Jaeger is a running Jaeger process owned by one test.
type Jaeger struct {
	otlp    string // OTLP/HTTP base URL
	query   string // query service base URL
	logPath string
	started time.Time
	client  *http.Client
}

// Span is one span as Jaeger stored it. IDs are lowercase hex; ParentSpanID
// is empty for a root span.
type Span struct {
	TraceID, SpanID, ParentSpanID string
	Name                          string
	Service                       string // the resource's service.name
	Kind                          string // "internal", "server", "client", "producer", "consumer" or "unspecified"
	Attributes                    map[string]any
	Links                         []Link
	Start, End                    time.Time
}

// Link is a span link: the span it points to.
type Link struct {
	TraceID, SpanID string
}

// startTimeout bounds how long Start waits for Jaeger to listen.
const startTimeout = 60 * time.Second

// Start runs Jaeger for the test and stops it when the test ends. Every
// port is a free one on 127.0.0.1, so tests may run in parallel.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin, err := Binary(testenv.Root(t))
	if err != nil {
		t.Fatal(err)
	}
	j, stop, err := Run(bin, t.TempDir())
	if err != nil {
		t.Fatalf("jaegertest: cannot start jaeger: %v", err)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("jaegertest: last lines of %s:\n%s", j.logPath, j.logTail(50))
		}
	})
	return j
}

// Run starts Jaeger outside a test (the perf harness uses it), with its
// configuration and log in dir, and returns it with the function that
// stops it. A free port can be taken by someone else before Jaeger binds
// it: Run tries again with new ports if Jaeger exits while starting.
func Run(bin, dir string) (*Jaeger, func(), error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var (
			j    *Jaeger
			stop func()
		)
		if j, stop, err = start(bin, dir, attempt); err == nil {
			return j, stop, nil
		}
	}
	return nil, nil, err
}

// Binary finds the jaeger binary in root's .deps/tools, else on $PATH.
func Binary(root string) (string, error) {
	p := filepath.Join(root, ".deps", "tools", "jaeger")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("jaeger"); err == nil {
		return p, nil
	}
	return "", errors.New("jaeger not found: run `make test`, which builds it (scripts/build-jaeger.sh)")
}

// config is Jaeger's configuration: an OTLP/HTTP receiver (no gRPC)
// feeding in-memory storage, the query service, and no telemetry of its
// own. Listing only these components keeps Jaeger off all other ports.
const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:%d
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// start makes one attempt to run Jaeger and wait until it is ready.
func start(bin, dir string, attempt int) (*Jaeger, func(), error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, nil, err
	}
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, ports[0], ports[1], ports[2]), 0o644); err != nil {
		return nil, nil, err
	}
	j := &Jaeger{
		query:   fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		otlp:    fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		logPath: filepath.Join(dir, fmt.Sprintf("jaeger-%d.log", attempt)),
		started: time.Now(),
		client:  &http.Client{Timeout: 10 * time.Second},
	}
	log, err := os.Create(j.logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "--config", "file:"+cfg)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		log.Close()
		close(exited)
	}()
	if err := j.waitReady(exited, ports[2]); err != nil {
		stop(cmd, exited)
		return nil, nil, fmt.Errorf("%w\n%s", err, j.logTail(30))
	}
	return j, func() { stop(cmd, exited) }, nil
}

// waitReady polls until the query API answers and the OTLP port accepts
// connections (the collector starts its receivers last).
func (j *Jaeger) waitReady(exited <-chan struct{}, otlpPort int) error {
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errors.New("jaeger exited while starting")
		default:
		}
		if resp, err := j.client.Get(j.query + "/api/v3/services"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", otlpPort))
				if err == nil {
					c.Close()
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not ready after %v", startTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM, then kills Jaeger if it has not exited in 10 s.
func stop(cmd *exec.Cmd, exited <-chan struct{}) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // held until all are chosen, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// logTail returns the last n lines of Jaeger's log.
func (j *Jaeger) logTail(n int) string {
	f, err := os.Open(j.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// OTLPEndpoint returns the OTLP/HTTP base URL, e.g. http://127.0.0.1:4318,
// as OTEL_EXPORTER_OTLP_ENDPOINT wants it (the SDK appends /v1/traces).
func (j *Jaeger) OTLPEndpoint() string { return j.otlp }

// QueryURL returns the base URL of Jaeger's query service (HTTP API).
func (j *Jaeger) QueryURL() string { return j.query }

// Trace returns the spans of a trace (traceID in hex) from the query API
// (/api/v3/traces/{id}, OTLP JSON). A trace Jaeger has not seen yet gives
// no spans and no error.
func (j *Jaeger) Trace(ctx context.Context, traceID string) ([]Span, error) {
	return j.get(ctx, "/api/v3/traces/"+url.PathEscape(traceID))
}

// WaitTrace polls Trace every 200 ms until done accepts its spans or ctx
// ends. On failure it returns the last spans seen with the error, for the
// test to print.
func (j *Jaeger) WaitTrace(ctx context.Context, traceID string, done func([]Span) bool) ([]Span, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last []Span
	for {
		spans, err := j.Trace(ctx, traceID)
		if err == nil {
			last = spans
			if done(spans) {
				return spans, nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return last, fmt.Errorf("waiting for trace %s (%d spans seen): %w", traceID, len(last), err)
		case <-tick.C:
		}
	}
}

// Traces returns the IDs of the traces that have spans of service,
// from Jaeger's start until now.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]string, error) {
	q := url.Values{
		"query.service_name":   {service},
		"query.start_time_min": {j.started.Add(-time.Minute).UTC().Format(time.RFC3339Nano)},
		"query.start_time_max": {time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)},
		"query.num_traces":     {"1000"},
	}
	spans, err := j.get(ctx, "/api/v3/traces?"+q.Encode())
	var ids []string
	seen := map[string]bool{}
	for _, s := range spans {
		if !seen[s.TraceID] {
			seen[s.TraceID] = true
			ids = append(ids, s.TraceID)
		}
	}
	return ids, err
}

// get fetches path from the v3 query API and decodes its spans; 404 means
// none.
func (j *Jaeger) get(ctx context.Context, path string) ([]Span, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.query+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	var r struct {
		Result tracesData `json:"result"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return r.Result.spans(), nil
}

// tracesData is the part of OTLP JSON (TracesData) that Span holds.
type tracesData struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []keyValue `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []struct {
				TraceID      string     `json:"traceId"`
				SpanID       string     `json:"spanId"`
				ParentSpanID string     `json:"parentSpanId"`
				Name         string     `json:"name"`
				Kind         int        `json:"kind"`
				Start        nanos      `json:"startTimeUnixNano"`
				End          nanos      `json:"endTimeUnixNano"`
				Attributes   []keyValue `json:"attributes"`
				Links        []struct {
					TraceID string `json:"traceId"`
					SpanID  string `json:"spanId"`
				} `json:"links"`
			} `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

// spanKinds names OTLP's span kinds (the JSON holds their numbers).
var spanKinds = []string{"unspecified", "internal", "server", "client", "producer", "consumer"}

func (td tracesData) spans() []Span {
	var out []Span
	for _, rs := range td.ResourceSpans {
		service, _ := attributes(rs.Resource.Attributes)["service.name"].(string)
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				span := Span{
					TraceID:      strings.ToLower(s.TraceID),
					SpanID:       strings.ToLower(s.SpanID),
					ParentSpanID: strings.ToLower(s.ParentSpanID),
					Name:         s.Name,
					Service:      service,
					Kind:         "unspecified",
					Attributes:   attributes(s.Attributes),
					Start:        time.Time(s.Start),
					End:          time.Time(s.End),
				}
				if s.Kind >= 0 && s.Kind < len(spanKinds) {
					span.Kind = spanKinds[s.Kind]
				}
				for _, l := range s.Links {
					span.Links = append(span.Links, Link{strings.ToLower(l.TraceID), strings.ToLower(l.SpanID)})
				}
				out = append(out, span)
			}
		}
	}
	return out
}

// keyValue and anyValue are OTLP JSON's attribute and its value.
type keyValue struct {
	Key   string   `json:"key"`
	Value anyValue `json:"value"`
}

type anyValue struct {
	String *string      `json:"stringValue"`
	Bool   *bool        `json:"boolValue"`
	Int    *json.Number `json:"intValue"` // int64, as a JSON string
	Double *float64     `json:"doubleValue"`
	Bytes  *string      `json:"bytesValue"` // base64
	Array  *struct {
		Values []anyValue `json:"values"`
	} `json:"arrayValue"`
	KVList *struct {
		Values []keyValue `json:"values"`
	} `json:"kvlistValue"`
}

func attributes(kvs []keyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.value()
	}
	return m
}

// value converts v to string, bool, int64, float64, []byte, []any or
// map[string]any (nil when empty).
func (v anyValue) value() any {
	switch {
	case v.String != nil:
		return *v.String
	case v.Bool != nil:
		return *v.Bool
	case v.Int != nil:
		n, _ := v.Int.Int64()
		return n
	case v.Double != nil:
		return *v.Double
	case v.Bytes != nil:
		b, _ := base64.StdEncoding.DecodeString(*v.Bytes)
		return b
	case v.Array != nil:
		a := make([]any, len(v.Array.Values))
		for i, e := range v.Array.Values {
			a[i] = e.value()
		}
		return a
	case v.KVList != nil:
		return attributes(v.KVList.Values)
	}
	return nil
}

// nanos is a time given in OTLP JSON as nanoseconds since 1970 in a
// string.
type nanos time.Time

func (n *nanos) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		return nil
	}
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return err
	}
	*n = nanos(time.Unix(0, ns))
	return nil
}
