package server

import (
	"fmt"
	"net"
	"syscall"
)

// peerCred returns the uid and pid of the process that connected nc, as
// the kernel recorded them at connect (SO_PEERCRED): the peer cannot
// choose them.
func peerCred(nc net.Conn) (uid uint32, pid int32, err error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, 0, fmt.Errorf("%T is not a socket", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if serr != nil {
		return 0, 0, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return cred.Uid, cred.Pid, nil
}
