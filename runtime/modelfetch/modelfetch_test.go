package modelfetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// payload is the "model" the test server serves.
var payload = bytes.Repeat([]byte("batchgate model bytes "), 50_000)

func spec(url string) Spec {
	sum := sha256.Sum256(payload)
	return Spec{URL: url, Size: int64(len(payload)), SHA256: hex.EncodeToString(sum[:])}
}

// server serves payload, or misbehaves as mode says.
func server(t *testing.T, mode string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode {
		case "truncated": // announce everything, send half, hang up
			w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
			w.Write(payload[:len(payload)/2])
			panic(http.ErrAbortHandler)
		case "404":
			http.NotFound(w, r)
		case "slow": // send some, then wait for the client to give up
			w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
			w.Write(payload[:1000])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			w.Write(payload)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func assertNoFiles(t *testing.T, dst string) {
	t.Helper()
	left, _ := filepath.Glob(dst + "*") // the file or a temporary one
	for _, p := range left {
		t.Errorf("%s exists after a failed download", p)
	}
}

func TestFetch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		mutate  func(*Spec)
		wantErr error // nil: success
	}{
		{name: "good", mode: ""},
		{name: "bad hash", mode: "", mutate: func(s *Spec) { s.SHA256 = "00" + s.SHA256[2:] }, wantErr: ErrIntegrity},
		{name: "wrong size", mode: "", mutate: func(s *Spec) { s.Size++ }, wantErr: ErrIntegrity},
		{name: "truncated", mode: "truncated", wantErr: errAny},
		{name: "http 404", mode: "404", wantErr: errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := server(t, tc.mode)
			s := spec(srv.URL)
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			dst := filepath.Join(t.TempDir(), "m.onnx")
			var progress bytes.Buffer
			err := Fetch(context.Background(), srv.Client(), s, dst, &progress)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				got, _ := os.ReadFile(dst)
				if !bytes.Equal(got, payload) {
					t.Errorf("downloaded %d bytes, want the %d served", len(got), len(payload))
				}
				if !bytes.Contains(progress.Bytes(), []byte("100%")) {
					t.Errorf("progress bar never reached 100%%: %q", progress.String())
				}
				return
			}
			if err == nil || (tc.wantErr != errAny && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("Fetch = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(err, ErrUnreachable) {
				t.Errorf("Fetch = %v: a server that answered is not unreachable", err)
			}
			assertNoFiles(t, dst)
		})
	}
}

var errAny = errors.New("any error")

func TestFetchInterrupted(t *testing.T) {
	srv := server(t, "slow")
	dst := filepath.Join(t.TempDir(), "m.onnx")
	ctx, cancel := context.WithCancel(context.Background())
	progress := &cancelAfter{cancel: cancel}
	if err := Fetch(ctx, srv.Client(), spec(srv.URL), dst, progress); err == nil {
		t.Fatal("interrupted Fetch succeeded")
	}
	assertNoFiles(t, dst)
}

// cancelAfter cancels the download as soon as the first bytes arrive.
type cancelAfter struct{ cancel func() }

func (c *cancelAfter) Write(b []byte) (int, error) { c.cancel(); return len(b), nil }

// closedURL returns a URL on 127.0.0.1 where nothing listens.
func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/model.onnx"
}

func TestEnsure(t *testing.T) {
	generated := []byte("generated model")
	gen := func() ([]byte, error) { return generated, nil }
	t.Run("download", func(t *testing.T) {
		srv := server(t, "")
		dir := t.TempDir()
		cfg := EnsureConfig{Spec: spec(srv.URL), Dir: dir, Name: "real.onnx", GeneratedName: "gen.onnx", Generate: gen, Client: srv.Client()}
		path, src, err := Ensure(context.Background(), cfg)
		if err != nil || src != SourceDownload || path != filepath.Join(dir, "real.onnx") {
			t.Fatalf("Ensure = %q, %q, %v; want the download", path, src, err)
		}
		srv.Close() // the second call must not need the network
		if path, src, err = Ensure(context.Background(), cfg); err != nil || src != SourceExisting {
			t.Fatalf("second Ensure = %q, %q, %v; want the existing file", path, src, err)
		}
	})
	t.Run("offline fallback", func(t *testing.T) {
		// A fresh clone has no model folder yet: every folder written
		// is created.
		dir := filepath.Join(t.TempDir(), "fresh", "models")
		cfg := EnsureConfig{Spec: spec(closedURL(t)), Dir: dir, Name: "real.onnx", GeneratedName: "gen.onnx", Generate: gen}
		path, src, err := Ensure(context.Background(), cfg)
		if err != nil || src != SourceGenerated {
			t.Fatalf("Ensure offline = %q, %q, %v; want the generated model", path, src, err)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, generated) {
			t.Errorf("generated model file holds %q", got)
		}
	})
	t.Run("no fallback on bad hash", func(t *testing.T) {
		srv := server(t, "")
		s := spec(srv.URL)
		s.SHA256 = "00" + s.SHA256[2:]
		dir := t.TempDir()
		cfg := EnsureConfig{Spec: s, Dir: dir, Name: "real.onnx", GeneratedName: "gen.onnx", Generate: gen, Client: srv.Client()}
		if _, _, err := Ensure(context.Background(), cfg); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("Ensure with a bad hash = %v, want ErrIntegrity", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "gen.onnx")); err == nil {
			t.Error("Ensure fell back to the generated model after an integrity error")
		}
	})
	t.Run("generation fails", func(t *testing.T) {
		dir := t.TempDir()
		boom := errors.New("no ONNX Runtime to calibrate with")
		cfg := EnsureConfig{Spec: spec(closedURL(t)), Dir: dir, Name: "real.onnx", GeneratedName: "gen.onnx",
			Generate: func() ([]byte, error) { return nil, boom }}
		if _, _, err := Ensure(context.Background(), cfg); !errors.Is(err, boom) {
			t.Fatalf("Ensure with a failing generator = %v, want its error", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "gen.onnx")); err == nil {
			t.Error("a failed generation left a model file")
		}
	})
	t.Run("corrupt existing file", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "real.onnx"), []byte("corrupt"), 0o644)
		cfg := EnsureConfig{Spec: spec(closedURL(t)), Dir: dir, Name: "real.onnx", GeneratedName: "gen.onnx", Generate: gen}
		if _, _, err := Ensure(context.Background(), cfg); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("Ensure with a corrupt file = %v, want ErrIntegrity", err)
		}
	})
}

// TestPins: each pinned model is a commit-pinned URL with a size and a
// sha256, and no two pins are the same file.
func TestPins(t *testing.T) {
	commit := regexp.MustCompile(`/raw/[0-9a-f]{40}/`)
	seen := map[string]bool{}
	for _, tc := range []struct {
		name string
		spec Spec
		size int64
	}{{"fp32", ResNet50, 102576419}, {"int8", ResNet50Int8, 25816052}} {
		t.Run(tc.name, func(t *testing.T) {
			if !commit.MatchString(tc.spec.URL) || tc.spec.Size != tc.size || len(tc.spec.SHA256) != 64 {
				t.Errorf("pin = %+v: want a URL at a commit, %d bytes and a sha256", tc.spec, tc.size)
			}
			if seen[tc.spec.SHA256] || seen[tc.spec.URL] {
				t.Errorf("pin %+v repeats another one", tc.spec)
			}
			seen[tc.spec.SHA256], seen[tc.spec.URL] = true, true
		})
	}
}
