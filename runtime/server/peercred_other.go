//go:build !linux

package server

import (
	"errors"
	"net"
)

// peerCred is Linux-only (SO_PEERCRED); elsewhere every peer is served and
// Serve warns once.
func peerCred(net.Conn) (uid uint32, pid int32, err error) {
	return 0, 0, errors.ErrUnsupported
}
