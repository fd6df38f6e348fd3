package server

// Tests of harden.go: the socket folder's check, the socket's mode, the
// peer uid check, the connection cap and the handshake deadline. None
// needs ONNX Runtime: the model is zeros.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/runtime/wire"
)

// zeros is a model that answers every batch at once with zero scores.
type zeros struct{ classes int }

func (z zeros) Run(_ []float32, n int) ([]float32, error) { return make([]float32, n*z.classes), nil }

var zerosInfo = wire.Info{Channels: 1, Height: 2, Width: 2, Classes: 10, MaxBatchSize: 4}

// serveZeros serves zeros with cfg on a socket in dir (a fresh one when
// ""); before, if not nil, runs before Serve. It returns the server, the
// socket's path and the server's log.
func serveZeros(t *testing.T, cfg Config, dir string, before func(*Server)) (*Server, string, *testenv.SyncBuffer) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "rt.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	cfg.Info, cfg.Logger = zerosInfo, slog.New(slog.NewJSONHandler(logs, nil))
	s := New(zeros{classes: 10}, cfg)
	s.SetReady(true)
	if before != nil {
		before(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, path, logs
}

// TestSocketDir: the folder checks, on real folders. Owners and groups
// other than the test's own are played by handing checkSocketDir other
// credentials, or as root by chown.
func TestSocketDir(t *testing.T) {
	me := processCreds()
	root := me.uid == 0
	// stranger makes dir (or, for a symlink, the link) belong to a uid
	// that is neither the checker's nor root, and returns the checker's
	// credentials.
	stranger := func(t *testing.T, path string) creds {
		if root {
			if err := os.Lchown(path, 65534, -1); err != nil {
				t.Fatal(err)
			}
			return me
		}
		return creds{uid: me.uid + 1, gid: me.gid, groups: me.groups}
	}
	chmod := func(mode uint32) func(*testing.T, string) string {
		return func(t *testing.T, dir string) string {
			if err := syscall.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			return dir
		}
	}
	for _, tc := range []struct {
		name string
		// setup prepares the fresh folder dir and returns the path to
		// check.
		setup func(t *testing.T, dir string) string
		// as returns the checker's credentials; nil: the test's own.
		as   func(t *testing.T, path string, st *syscall.Stat_t) creds
		want string // in the error; "": accepted
	}{
		{"private 0700", chmod(0o700), nil, ""},
		{"0755: others may read, not write", chmod(0o755), nil, ""},
		{"world-writable 0777", chmod(0o777), nil, "writable by every user and lacks the sticky bit"},
		{"world-writable with the sticky bit 1777, like /tmp", chmod(0o1777), nil, ""},
		// The chart's emptyDir (medium: Memory): a tmpfs (1777) with the
		// kubelet's setgid bit and fsGroup.
		{"Kubernetes tmpfs emptyDir with fsGroup 3777", chmod(0o3777), func(_ *testing.T, _ string, st *syscall.Stat_t) creds {
			return creds{uid: me.uid, gid: st.Gid + 1, groups: []uint32{st.Gid}}
		}, ""},
		// An emptyDir on disk: 0777, plus setgid with an fsGroup.
		{"Kubernetes disk emptyDir with fsGroup 2777", chmod(0o2777), nil, "RUNTIME_SOCKET_DIR_CHECK=false"},
		{"group-writable 0770, the runtime's group", chmod(0o770), func(_ *testing.T, _ string, st *syscall.Stat_t) creds {
			return creds{uid: me.uid, gid: st.Gid}
		}, ""},
		{"group-writable 2770, a supplementary group (fsGroup)", chmod(0o2770), func(_ *testing.T, _ string, st *syscall.Stat_t) creds {
			return creds{uid: me.uid, gid: st.Gid + 1, groups: []uint32{st.Gid + 2, st.Gid}}
		}, ""},
		{"group-writable 0770, a group the runtime is not in", chmod(0o770), func(_ *testing.T, _ string, st *syscall.Stat_t) creds {
			return creds{uid: me.uid, gid: st.Gid + 1, groups: []uint32{st.Gid + 2}}
		}, "which this runtime"},
		{"group-writable with the sticky bit 1770, any group", chmod(0o1770), func(_ *testing.T, _ string, st *syscall.Stat_t) creds {
			return creds{uid: me.uid, gid: st.Gid + 1}
		}, ""},
		{"owned by another uid", chmod(0o700), func(t *testing.T, path string, _ *syscall.Stat_t) creds { return stranger(t, path) },
			"is owned by uid"},
		{"a symlink of the runtime's own to a good folder", func(t *testing.T, dir string) string {
			link := dir + ".link"
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, nil, ""},
		{"a symlink owned by another uid", func(t *testing.T, dir string) string {
			link := dir + ".link"
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, func(t *testing.T, path string, _ *syscall.Stat_t) creds { return stranger(t, path) }, "is a symlink owned by uid"},
		{"a symlink to a world-writable folder", func(t *testing.T, dir string) string {
			chmod(0o777)(t, dir)
			link := dir + ".link"
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, nil, "writable by every user"},
		{"a file", func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "file")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return f
		}, nil, "is not a folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "sock")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := tc.setup(t, dir)
			who := me
			if tc.as != nil {
				var st syscall.Stat_t
				if err := syscall.Stat(dir, &st); err != nil {
					t.Fatal(err)
				}
				who = tc.as(t, path, &st)
			}
			err := checkSocketDir(path, who)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want a refusal saying %q", err, tc.want)
			case tc.want != "" && !errors.Is(err, ErrUnsafeSocketDir):
				t.Errorf("%v does not match ErrUnsafeSocketDir", err)
			}
		})
	}
	// An absent folder is created private, parents included.
	dir := filepath.Join(t.TempDir(), "a", "batchgate")
	if err := PrepareSocketDir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created folder: %v, %v; want mode 0700", fi.Mode(), err)
	}
	// PrepareSocketDir checks a folder that is there.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := PrepareSocketDir(dir); !errors.Is(err, ErrUnsafeSocketDir) {
		t.Errorf("PrepareSocketDir on a world-writable folder: %v, want a refusal", err)
	}
}

// TestSocketModeFor: the socket is 0600 unless another uid is allowed.
func TestSocketModeFor(t *testing.T) {
	self := uint32(os.Geteuid())
	other := self + 1
	for _, tc := range []struct {
		allowed []uint32
		want    os.FileMode
	}{
		{nil, 0o600},
		{[]uint32{self}, 0o600},
		{[]uint32{0}, 0o600},
		{[]uint32{self, other}, 0o660},
	} {
		if got := SocketMode(tc.allowed); got != tc.want {
			t.Errorf("SocketMode(%v) = %04o, want %04o", tc.allowed, got, tc.want)
		}
	}
	path := filepath.Join(t.TempDir(), "rt.sock")
	ln, err := ListenMode(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ListenMode(0600) made %v, %v", fi.Mode(), err)
	}
}

func TestParseUIDs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []uint32
		wantErr bool
	}{
		{"", nil, false},
		{" ", nil, false},
		{"65532", []uint32{65532}, false},
		{"65532, 1000 ,0", []uint32{65532, 1000, 0}, false},
		{"65532,", nil, true},
		{"-1", nil, true},
		{"4294967295", nil, true}, // (uid_t)-1
		{"4294967296", nil, true},
		{"proxy", nil, true},
	} {
		got, err := ParseUIDs(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("ParseUIDs(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// Environment of TestPeerHelper: the socket to dial and the uid to dial it
// as.
const (
	helperSocket = "BATCHGATE_TEST_PEER_SOCKET"
	helperUID    = "BATCHGATE_TEST_PEER_UID"
)

// TestPeerHelper is not a test: TestPeerUID runs the test binary as a
// child that becomes another uid here and dials the runtime, printing
// "served" or "refused: <error>".
func TestPeerHelper(t *testing.T) {
	socket := os.Getenv(helperSocket)
	if socket == "" {
		t.Skip("a helper process of TestPeerUID")
	}
	uid, _ := strconv.Atoi(os.Getenv(helperUID))
	// Group first: once the uid is dropped, the gid cannot be.
	if err := syscall.Setgroups(nil); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, socket)
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	c.Close()
	fmt.Println("served")
}

// TestPeerUID: a peer whose uid is not the runtime's, root's or allowed
// gets an Error frame naming its uid and is closed; the refusal is counted
// and logged. As root, the peer is a child process that becomes uid 65534;
// otherwise the server is made to believe it runs as another uid than the
// test's.
func TestPeerUID(t *testing.T) {
	const nobody = 65534
	me := uint32(os.Geteuid())
	peer := me // the uid that dials
	if me == 0 {
		peer = nobody
	}
	for _, tc := range []struct {
		name    string
		allowed []uint32
		served  bool
	}{
		{"not allowed", nil, false},
		{"not allowed, others are", []uint32{peer + 1, peer + 2}, false},
		{"in RUNTIME_ALLOWED_UIDS", []uint32{peer + 1, peer}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dial func(path string) string
			var before func(*Server)
			dir := ""
			if me == 0 {
				// A folder and a socket uid 65534 can reach: only the
				// peer check stands between it and the runtime.
				d, err := os.MkdirTemp("", "bg-peer-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(d) })
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
				dir = d
				dial = func(path string) string {
					if err := os.Chmod(path, 0o666); err != nil {
						t.Fatal(err)
					}
					cmd := exec.Command(os.Args[0], "-test.run=^TestPeerHelper$")
					cmd.Env = append(os.Environ(), helperSocket+"="+path, helperUID+"="+strconv.Itoa(nobody))
					out, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("helper process: %v\n%s", err, out)
					}
					return string(out)
				}
			} else {
				before = func(s *Server) { s.selfUID = me + 1000 }
				dial = func(path string) string {
					c, err := wire.Dial(context.Background(), path)
					if err != nil {
						return "refused: " + err.Error()
					}
					c.Close()
					return "served"
				}
			}
			s, path, logs := serveZeros(t, Config{AllowedUIDs: tc.allowed}, dir, before)
			out := dial(path)
			wantRefused := 1
			if tc.served {
				wantRefused = 0
				if !strings.Contains(out, "served") {
					t.Errorf("uid %d allowed, but: %s", peer, out)
				}
			} else {
				want := fmt.Sprintf("peer uid %d is not allowed", peer)
				if !strings.Contains(out, want) {
					t.Errorf("uid %d: want the handshake refused with %q, got: %s", peer, want, out)
				}
				if l := logs.String(); !strings.Contains(l, fmt.Sprintf(`"peer_uid":%d`, peer)) || !strings.Contains(l, `"refused_peers":1`) {
					t.Errorf("no log line of the refusal with its count:\n%s", l)
				}
			}
			if got := s.ConnStats().RefusedPeers; got != uint64(wantRefused) {
				t.Errorf("RefusedPeers = %d, want %d", got, wantRefused)
			}
			// The runtime's own uid is always served (as root: root).
			if me == 0 {
				c := dial2(t, path)
				c.Close()
			}
		})
	}
}

// dial2 dials path as this process, and fails the test on an error.
func dial2(t *testing.T, path string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMaxConnections: with MaxConnections open, one more is refused with
// an Error frame, counted and logged, while the open ones are still
// served; once one closes, a new one is served.
func TestMaxConnections(t *testing.T) {
	s, path, logs := serveZeros(t, Config{MaxConnections: 2}, "", nil)
	a, b := dial2(t, path), dial2(t, path)
	defer a.Close()
	defer b.Close()
	_, err := wire.Dial(context.Background(), path)
	var we *wire.Error
	if !errors.As(err, &we) || !strings.Contains(we.Message, "too many connections: the limit is 2 (RUNTIME_MAX_CONNECTIONS)") {
		t.Fatalf("third connection: %v, want it refused for too many connections", err)
	}
	if got := s.ConnStats().RefusedBusy; got != 1 {
		t.Errorf("RefusedBusy = %d, want 1", got)
	}
	if !strings.Contains(logs.String(), `"refused_busy":1`) {
		t.Errorf("no log line of the refusal:\n%s", logs)
	}
	for _, c := range []*wire.Client{a, b} {
		if _, err := c.Run(context.Background(), 1, make([]float32, 4)); err != nil {
			t.Errorf("an open connection is no longer served: %v", err)
		}
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n < 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the closed connection still counts after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
	c := dial2(t, path)
	defer c.Close()
	if _, err := c.Run(context.Background(), 1, make([]float32, 4)); err != nil {
		t.Errorf("a connection in the freed slot: %v", err)
	}
}

// TestHandshakeTimeout: a connection that sends no hello, or only part of
// one, within HandshakeTimeout is closed and counted; a slow hello within
// it is served, and once the hello is in an idle connection stays open.
func TestHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	hello := wire.AppendHello(nil, wire.Version)
	for _, tc := range []struct {
		name   string
		send   []byte        // before waiting for the server
		after  time.Duration // when to send it
		closed bool
	}{
		{"silent", nil, 0, true},
		{"part of a hello", hello[:3], 0, true},
		{"a slow hello in time", hello, timeout / 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, logs := serveZeros(t, Config{HandshakeTimeout: timeout}, "", nil)
			c := rawDial(t, path, false)
			start := time.Now()
			c.SetDeadline(start.Add(3 * time.Second)) // well before the test would hang
			if tc.send != nil {
				time.Sleep(tc.after)
				c.Write(tc.send)
			}
			typ, _, err := wire.ReadFrame(c.r, wire.MaxControlFrame, nil)
			took := time.Since(start)
			if !tc.closed {
				if err != nil || typ != wire.TypeInfo {
					t.Fatalf("a hello after %v: %v, type %d; want the handshake", tc.after, err, typ)
				}
				// Idle after the hello, for longer than the timeout.
				time.Sleep(2 * timeout)
				c.Write(wire.AppendStatsRequest(nil, 5))
				if typ, _, err := wire.ReadFrame(c.r, wire.MaxControlFrame, nil); err != nil || typ != wire.TypeStats {
					t.Errorf("after the handshake and %v idle: %v, type %d; want the connection served", 2*timeout, err, typ)
				}
				if got := s.ConnStats().HandshakeTimeouts; got != 0 {
					t.Errorf("HandshakeTimeouts = %d, want 0", got)
				}
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("read after %v: %v, want the runtime to close the connection", took, err)
			}
			if took < timeout/2 {
				t.Errorf("closed after %v, before the %v timeout", took, timeout)
			}
			deadline := time.Now().Add(2 * time.Second)
			for s.ConnStats().HandshakeTimeouts != 1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := s.ConnStats().HandshakeTimeouts; got != 1 {
				t.Errorf("HandshakeTimeouts = %d, want 1", got)
			}
			if !strings.Contains(logs.String(), "sent no hello in time") {
				t.Errorf("no log line of the timeout:\n%s", logs)
			}
		})
	}
}

// TestDefaults: a zero Config gets the documented limits.
func TestDefaults(t *testing.T) {
	s := New(zeros{classes: 10}, Config{Info: zerosInfo})
	defer s.Shutdown(context.Background())
	if s.cfg.MaxConnections != DefaultMaxConnections || s.cfg.HandshakeTimeout != DefaultHandshakeTimeout || s.selfUID != uint32(os.Geteuid()) {
		t.Errorf("defaults: %d connections, %v handshake, self uid %d", s.cfg.MaxConnections, s.cfg.HandshakeTimeout, s.selfUID)
	}
}
