package testenv

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// FreePort returns a TCP port free on 127.0.0.1 now. Another process may
// take it before the caller binds it; call it once per port needed.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitHTTP polls url until it answers 200, for at most a minute.
func WaitHTTP(t testing.TB, url string) {
	t.Helper()
	for range 600 {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200 in a minute", url)
}
