package httpapi

import (
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// connTimes holds when each open connection was accepted, for
// Config.ConnMaxAge: written by ConnState (fasthttp's accept loop and
// connection goroutines), read by the handler; an entry lives from
// StateNew to StateClosed or StateHijacked, so at most one per open
// connection. (fasthttp's RequestCtx.ConnTime is zero after an idle wait
// with ReduceMemoryUsage, which the proxy sets.)
type connTimes struct{ m sync.Map } // net.Conn -> time.Time

// ConnState is the fasthttp server's ConnState hook: it records when each
// connection opened and forgets it when it ends.
func (s *Server) ConnState(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		s.conns.m.Store(c, time.Now())
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		s.conns.m.Delete(c)
	}
}

// connAge is how long the request's connection has been open at now; 0
// when ConnState did not see it open.
func (s *Server) connAge(ctx *fasthttp.RequestCtx, now time.Time) time.Duration {
	if at, ok := s.conns.m.Load(ctx.Conn()); ok {
		return now.Sub(at.(time.Time))
	}
	return 0
}
