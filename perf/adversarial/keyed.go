package adversarial

// Issue 22's attacks that need API keys, model versions and tracing (its
// items 4 to 6), against a second proxy of the soak: the same runtime,
// with AUTH_KEYS_FILE (an honest key and an attacker's key limited to 1
// image a second), a ROUTING_FILE of two versions (v2 at weight 0, for
// explicit requests only) and tracing to a local OTLP sink that counts
// what it receives. The honest client sends its key.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/batchgate/batchgate/perf/harness"
)

// The keys' secrets: fixed, they guard nothing outside this run.
const (
	honestSecret   = "honest-soak-secret-0000000000000000000000000"
	attackerSecret = "attack-soak-secret-0000000000000000000000000"
)

// keyedStack is the second proxy, the runtime of its version v2 (its
// harness.Stack), and its OTLP sink.
type keyedStack struct {
	*harness.Stack
	addr     string // host:port of the keyed proxy
	dir      string // its keys and routing files
	sink     *http.Server
	otlp     atomic.Int64 // bytes of spans received
	honestHd string       // the honest client's header line
}

// startKeyedProxy starts the keyed proxy with socket's runtime as v1 and
// one of its own, of model, as v2.
func startKeyedProxy(bins harness.Binaries, socket, model, ortLibrary string) (*keyedStack, error) {
	dir, err := os.MkdirTemp("", "batchgate-soak-keyed-")
	if err != nil {
		return nil, err
	}
	k := &keyedStack{dir: dir, honestHd: "Authorization: Bearer honest." + honestSecret + "\r\n"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		k.stop()
		return nil, err
	}
	k.sink = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		k.otlp.Add(n)
		w.WriteHeader(200)
	}), ReadHeaderTimeout: 10 * time.Second}
	go k.sink.Serve(ln)
	k.Stack, err = harness.NewStack(bins, harness.StackConfig{Model: model, ORTLibrary: ortLibrary, ORTCache: "off", ProxyDefaults: true,
		ProxyEnv: []string{"AUTH_KEYS_FILE=" + filepath.Join(dir, "keys.yaml"), "ROUTING_FILE=" + filepath.Join(dir, "routing.yaml"),
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://" + ln.Addr().String() + "/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
			fmt.Sprintf("GOMEMLIMIT=%dMiB", limitMiB*9/10), "DRAIN_DELAY=0s"}})
	if err != nil {
		k.stop()
		return nil, err
	}
	k.addr = strings.TrimPrefix(k.URL, "http://")
	digest := func(s string) string { d := sha256.Sum256([]byte(s)); return hex.EncodeToString(d[:]) }
	keys := fmt.Sprintf("keys:\n  - {id: honest, sha256: %s, scopes: [predict, metadata]}\n"+
		"  - {id: attacker, sha256: %s, scopes: [predict], rate: 1}\n", digest(honestSecret), digest(attackerSecret))
	routing := fmt.Sprintf("models:\n  - name: resnet50\n    versions:\n      - {name: v1, socket: %q, weight: 100}\n      - {name: v2, socket: %q, weight: 0}\n", socket, k.Socket)
	for name, body := range map[string]string{"keys.yaml": keys, "routing.yaml": routing} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			k.stop()
			return nil, err
		}
	}
	if err := k.Start(context.Background(), time.Minute); err != nil {
		k.stop()
		return nil, fmt.Errorf("keyed proxy: %w", err)
	}
	return k, nil
}

// stop stops the proxy and the runtime (by their PIDs) and the sink, and
// removes the files.
func (k *keyedStack) stop() {
	if k.Stack != nil {
		k.Stop()
	}
	if k.sink != nil {
		k.sink.Close()
	}
	os.RemoveAll(k.dir)
}

// alive reports whether the keyed proxy still runs.
func (k *keyedStack) alive() bool { return !k.Proxy().Exited() }

// oipImages is an OIP infer body of n BYTES images, each a distinct copy
// of jpeg (tagged with i), base64 in JSON.
func oipImages(jpeg []byte, n, i int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"inputs":[{"name":"image","shape":[%d],"datatype":"BYTES","data":[`, n)
	for j := range n {
		if j > 0 {
			b.WriteByte(',')
		}
		img := fmt.Appendf(bytes.Clone(jpeg), "keyed-%d-%d", i, j)
		fmt.Fprintf(&b, "%q", base64.StdEncoding.EncodeToString(img))
	}
	b.WriteString("]}]}")
	return b.Bytes()
}

// keyedScenarios are issue 22's items 4 to 6 against k, each for d. The
// OTLP bytes the sink received are added to the outcomes, so a sampling
// flood shows.
func keyedScenarios(k *keyedStack, d time.Duration, jpeg []byte) []scenario {
	attackerKey := "Authorization: Bearer attacker." + attackerSecret + "\r\n"
	withOTLP := func(run func() *outcomes) func() *outcomes {
		return func() *outcomes {
			before := k.otlp.Load()
			out := run()
			out.m["OTLP KiB received"] = int((k.otlp.Load() - before) >> 10)
			return out
		}
	}
	sampled := func(i int) string {
		return fmt.Sprintf("traceparent: 00-%032x-%016x-01\r\n", i+1, i+1)
	}
	return []scenario{
		{fmt.Sprintf("keyed proxy: 4 clients with a key limited to 1 image/s sending OIP requests of 16 images, for %v", d), 4,
			withOTLP(func() *outcomes {
				return repeat(4, d, func(i int) string {
					return postFrom(k.addr, "/v2/models/resnet50/infer", "application/json", attackerKey, oipImages(jpeg, 16, i))
				})
			})},
		{fmt.Sprintf("keyed proxy: 4 clients with a predict-only key asking for the weight-0 version, for %v", d), 4,
			withOTLP(func() *outcomes {
				return repeat(4, d, func(i int) string {
					return postFrom(k.addr, "/v2/models/resnet50/versions/v2/infer", "application/json", attackerKey, oipImages(jpeg, 1, i))
				})
			})},
		{fmt.Sprintf("keyed proxy: 8 clients without a key sending sampled traceparents, for %v", d), 8,
			withOTLP(func() *outcomes {
				return repeat(8, d, func(i int) string {
					return postFrom(k.addr, "/v2/models/resnet50/infer", "application/json", sampled(i), oipImages(jpeg, 1, i))
				})
			})},
	}
}

// keyedHonest is the honest client of the keyed proxy: honestPaced with
// its key.
func (k *keyedStack) honest(perSec float64, jpeg []byte) func(stop <-chan struct{}) honestResult {
	return func(stop <-chan struct{}) honestResult {
		return honestPaced(k.addr, k.honestHd, perSec, jpeg, stop)
	}
}
