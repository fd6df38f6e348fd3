package gateway

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/proxy/auth"
)

// heldLog holds the goroutine that logs a record whose message has prefix
// until release is closed, after telling entered (once).
type heldLog struct {
	slog.Handler
	prefix  string
	entered chan struct{}
	release chan struct{}
}

func (h *heldLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		select {
		case h.entered <- struct{}{}:
		default:
		}
		<-h.release
	}
	return h.Handler.Handle(ctx, r)
}

func (h *heldLog) Enabled(context.Context, slog.Level) bool { return true }

func (h *heldLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &heldLog{h.Handler.WithAttrs(as), h.prefix, h.entered, h.release}
}

// TestShutdownAwaitsGoroutines: Shutdown returns only once every goroutine
// New started has exited. The keys watcher is held in its logger (it
// rejects a bad keys file) when Shutdown begins: Shutdown must wait for
// it. Once Shutdown has returned, no goroutine of the proxy's is left.
func TestShutdownAwaitsGoroutines(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	_, sum, err := auth.GenerateKey("team")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("keys:\n"+auth.Key{ID: "team", SHA256: sum, Scopes: []auth.Scope{auth.Predict}}.Entry()), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, fileSum, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	h := &heldLog{Handler: slog.DiscardHandler, prefix: "keys file rejected", entered: make(chan struct{}, 1), release: make(chan struct{})}
	p := New(Config{Socket: filepath.Join(dir, "none.sock"), Auth: keys, AuthFile: path, AuthPoll: 10 * time.Millisecond,
		AuthSHA256: fileSum, DrainDelay: -1}, slog.New(h), metrics.NewSet())
	if err := os.WriteFile(path, []byte("keys: [not, a, key]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the keys watcher never rejected the bad file")
	}
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	select {
	case <-done:
		close(h.release)
		t.Fatal("Shutdown returned while the keys watcher was still running")
	case <-time.After(300 * time.Millisecond):
	}
	close(h.release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return once the keys watcher could exit")
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, fn := range []string{"gateway.trimMemory", "auth.(*Authenticator).Run", "versions.(*Router).Run", "rtconn.(*Conn).Run"} {
		if strings.Contains(stacks, fn) {
			t.Errorf("%s still runs after Shutdown returned", fn)
		}
	}
}
