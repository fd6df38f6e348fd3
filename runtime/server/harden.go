package server

// Who may reach the runtime. The socket is the runtime's only door, so:
//
//   - its folder must be one nobody else can swap the socket in
//     (PrepareSocketDir, CheckSocketDir; the runtime's main calls them
//     before Listen);
//   - the socket file is 0600, or 0660 when another uid is allowed
//     (SocketMode);
//   - each accepted connection's peer uid (SO_PEERCRED) must be the
//     runtime's own, root's, or one of Config.AllowedUIDs (checkPeer, from
//     Serve's accept loop);
//   - at most Config.MaxConnections are open at once, and each must send
//     its hello within Config.HandshakeTimeout (Serve and handle).
//
// Refusals are counted (ConnStats) and logged, rate-limited.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/batchgate/batchgate/runtime/wire"
)

// ErrUnsafeSocketDir is what CheckSocketDir's refusals match with
// errors.Is; other errors (the folder cannot be read or created) do not.
var ErrUnsafeSocketDir = errors.New("unsafe socket folder")

type unsafeDirError struct{ msg string }

func (e *unsafeDirError) Error() string        { return e.msg }
func (e *unsafeDirError) Is(target error) bool { return target == ErrUnsafeSocketDir }

func unsafeDir(format string, args ...any) error {
	return &unsafeDirError{fmt.Sprintf(format, args...)}
}

// PrepareSocketDir creates the socket folder dir with mode 0700 (and its
// missing parents) when it is absent, then checks it with CheckSocketDir,
// whoever created it: a folder made by someone else between the two is
// refused like any other.
func PrepareSocketDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create socket folder %q: %w", dir, err)
	}
	return CheckSocketDir(dir)
}

// creds are the ids a folder is judged against.
type creds struct {
	uid, gid uint32
	groups   []uint32 // supplementary, e.g. a pod's fsGroup
}

func processCreds() creds {
	c := creds{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}
	gs, _ := os.Getgroups()
	for _, g := range gs {
		c.groups = append(c.groups, uint32(g))
	}
	return c
}

// CheckSocketDir refuses a socket folder in which anyone but this process
// (and root) could remove or replace the socket, and so put their own in
// front of the proxy. The rules, on the folder (a symlink is followed, if
// it is itself owned by this process's uid or root):
//
//   - its owner is this process's effective uid or root;
//   - writable by others (o+w) only with the sticky bit (like /tmp: only a
//     file's owner may then remove or rename it);
//   - writable by its group (g+w) only with the sticky bit or when that
//     group is this process's (effective or supplementary: the fsGroup of
//     a Kubernetes pod is one), whose members may connect to a 0660 socket
//     anyway.
//
// The chart's folder passes: an emptyDir with medium Memory is a tmpfs,
// mode 1777, to which the kubelet adds the setgid bit and the fsGroup
// (3777, root:65532). An emptyDir on disk (0777, or 2777 with an fsGroup)
// does not: it is world-writable without the sticky bit.
//
// Its refusals match ErrUnsafeSocketDir and say how to fix the folder.
func CheckSocketDir(dir string) error { return checkSocketDir(dir, processCreds()) }

func checkSocketDir(dir string, me creds) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("cannot check socket folder %q: %w", dir, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		// Whoever owns the link can point it elsewhere later.
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != me.uid && uid != 0 {
			return unsafeDir("socket folder %q is a symlink owned by uid %d, not by this runtime (uid %d) or root: "+
				"its owner could point it at a folder of theirs. Remove it, or set RUNTIME_SOCKET to a path in a folder of your own",
				dir, uid, me.uid)
		}
		if fi, err = os.Stat(dir); err != nil {
			return fmt.Errorf("cannot check socket folder %q: %w", dir, err)
		}
	}
	if !fi.IsDir() {
		return unsafeDir("socket folder %q is not a folder: set RUNTIME_SOCKET to a path in a folder", dir)
	}
	st := fi.Sys().(*syscall.Stat_t)
	mode := uint32(st.Mode) & 0o7777
	if st.Uid != me.uid && st.Uid != 0 {
		return unsafeDir("socket folder %q is owned by uid %d, not by this runtime (uid %d) or root: its owner could replace the socket. "+
			"Remove the folder (the runtime then creates it, mode 0700), or set RUNTIME_SOCKET to a path in a folder of your own",
			dir, st.Uid, me.uid)
	}
	if mode&syscall.S_ISVTX != 0 {
		return nil // sticky: only the socket's owner (this process) or the folder's may remove it
	}
	if mode&0o002 != 0 {
		return unsafeDir("socket folder %q (mode %04o) is writable by every user and lacks the sticky bit: anyone could replace the socket. "+
			"Run `chmod o-w %s` (or `chmod +t %s`). In Kubernetes, use an emptyDir with medium: Memory (a tmpfs, sticky); "+
			"where only trusted containers can see the folder, RUNTIME_SOCKET_DIR_CHECK=false turns this check into a warning",
			dir, mode, dir, dir)
	}
	if mode&0o020 != 0 && st.Gid != me.gid && !slices.Contains(me.groups, st.Gid) {
		return unsafeDir("socket folder %q (mode %04o) is writable by group %d, which this runtime (gid %d, groups %v) is not in: "+
			"its members could replace the socket. Run `chmod g-w %s`, or give it the runtime's group (in Kubernetes: the pod's fsGroup)",
			dir, mode, st.Gid, me.gid, me.groups, dir)
	}
	return nil
}

// SocketMode is the socket file's mode: 0600 when no uid but this
// process's (and root) is allowed, 0660 when allowed names another, which
// then reaches the socket through its group (it must share the folder's
// group: in Kubernetes the fsGroup, which the folder's setgid bit gives
// the socket).
func SocketMode(allowed []uint32) os.FileMode {
	self := uint32(os.Geteuid())
	for _, u := range allowed {
		if u != self && u != 0 {
			return 0o660
		}
	}
	return 0o600
}

// ParseUIDs parses a comma-separated uid list (RUNTIME_ALLOWED_UIDS);
// blanks around items are ignored and "" is none.
func ParseUIDs(s string) ([]uint32, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var uids []uint32
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		u, err := strconv.ParseUint(item, 10, 32)
		if err != nil || u == 1<<32-1 { // (uid_t)-1 is "no uid"
			return nil, fmt.Errorf("%q is not a uid: want comma-separated numbers such as 65532,1000", item)
		}
		uids = append(uids, uint32(u))
	}
	return uids, nil
}

// ConnStats counts the connections refused since New.
type ConnStats struct {
	// RefusedPeers: the peer's uid is not allowed, or its credentials
	// could not be read.
	RefusedPeers uint64
	// RefusedBusy: MaxConnections were already open.
	RefusedBusy uint64
	// HandshakeTimeouts: no hello within HandshakeTimeout.
	HandshakeTimeouts uint64
}

// ConnStats returns the refusal counters.
func (s *Server) ConnStats() ConnStats {
	return ConnStats{RefusedPeers: s.refusedPeers.Load(), RefusedBusy: s.refusedBusy.Load(),
		HandshakeTimeouts: s.handshakeTimeouts.Load()}
}

// logRefusal logs a refusal with the running totals: the first ten, then
// one per 10 s.
func (s *Server) logRefusal(msg string, args ...any) {
	s.refusalLog.Do(func() {
		st := s.ConnStats()
		s.log.Warn(msg, append(args, "refused_peers", st.RefusedPeers, "refused_busy", st.RefusedBusy,
			"handshake_timeouts", st.HandshakeTimeouts)...)
	})
}

// checkPeer returns why nc's peer is refused (and counts it), or "" to
// serve it. Without peer credentials (an OS other than Linux) every peer
// is served, with a warning once.
func (s *Server) checkPeer(nc net.Conn) string {
	uid, pid, err := peerCred(nc)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		s.noPeerCred.Do(func() {
			s.log.Warn("this OS gives no peer credentials on unix sockets: RUNTIME_ALLOWED_UIDS is not enforced")
		})
		return ""
	case err != nil:
		s.refusedPeers.Add(1)
		s.logRefusal("refused a runtime connection: cannot read its peer credentials", "error", err)
		return "the runtime cannot read this connection's peer credentials"
	case uid == 0 || uid == s.selfUID || slices.Contains(s.cfg.AllowedUIDs, uid):
		return ""
	}
	s.refusedPeers.Add(1)
	s.logRefusal("refused a runtime connection from a uid that is not allowed: add it to RUNTIME_ALLOWED_UIDS if it is the proxy",
		"peer_uid", uid, "peer_pid", pid, "runtime_uid", s.selfUID, "allowed_uids", s.cfg.AllowedUIDs)
	return fmt.Sprintf("peer uid %d is not allowed: this runtime serves uid %d, root and RUNTIME_ALLOWED_UIDS %v",
		uid, s.selfUID, s.cfg.AllowedUIDs)
}

// refuseLinger bounds how long a refused connection is kept to deliver
// its Error frame.
const refuseLinger = time.Second

// refuse answers nc with an Error frame saying msg and closes it. It waits
// up to refuseLinger for the peer's hello first: closing before the
// client has written it would fail that write and lose the message. At
// most MaxConnections refusals wait at once; beyond that nc is closed
// outright, so a flood cannot pile up descriptors.
func (s *Server) refuse(nc net.Conn, msg string) {
	select {
	case s.refusing <- struct{}{}:
	default:
		nc.Close()
		return
	}
	go func() {
		defer func() { <-s.refusing }()
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(refuseLinger))
		nc.Write(wire.AppendError(nil, &wire.Error{Code: wire.CodeBadRequest, Message: msg}))
		var b [64]byte
		nc.Read(b[:]) // the hello, or the deadline
	}()
}
