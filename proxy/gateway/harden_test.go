package gateway

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/auth"
)

// dialRaw opens a TCP connection to the proxy at url, from the local
// address 127.0.0.5 (the test's client alone); it closes at the test's end.
func dialRaw(t *testing.T, url string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 5)}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestHeaderTimeout: a connection that sends half a request's headers and
// stalls is closed after HeaderTimeout, not after the request timeout (40 s
// before); so is one that never sends a request.
func TestHeaderTimeout(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 4, "")
	tp := startProxy(t, Config{Socket: rt.socket, HeaderTimeout: 300 * time.Millisecond})
	for _, sent := range []string{"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty", ""} {
		conn := dialRaw(t, tp.url)
		io.WriteString(conn, sent)
		start := time.Now()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(conn) // the server's answer, if any, then EOF
		if err != nil {
			t.Errorf("after %q: %v after %v; want the server to close the connection", sent, err, time.Since(start))
		}
	}
	// A request that takes its time with the body is not cut by it.
	img := testenv.Image(t, "small.png")
	conn := dialRaw(t, tp.url)
	io.WriteString(conn, "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: "+
		strconv.Itoa(len(img))+"\r\n\r\n")
	time.Sleep(600 * time.Millisecond)
	conn.Write(img)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("a body sent after the header timeout: %v %v, want 200", resp, err)
	}
}

// TestMaxConnectionsPerIP: the connection past MaxConnectionsPerIP from one
// address gets 429 and is closed.
func TestMaxConnectionsPerIP(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 4, "")
	tp := startProxy(t, Config{Socket: rt.socket, MaxConnectionsPerIP: 3})
	for range 3 {
		conn := dialRaw(t, tp.url)
		io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection within the limit: %v %v", resp, err)
		}
	}
	conn := dialRaw(t, tp.url)
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 429 {
		t.Errorf("fourth connection from one address: %v %v, want 429", resp, err)
	}
}

// TestErrorLogsCarryNoRequestBytes: a malformed request's bytes (here an
// API key) never reach the log, at any level.
func TestErrorLogsCarryNoRequestBytes(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 4, "")
	tp := startProxy(t, Config{Socket: rt.socket})
	const secret = "bg_team-a_s3cr3tKEYs3cr3tKEY"
	for _, req := range []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nno colon here\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\nContent-Length: zz\r\n\r\n",
		"G\x00T /" + secret + " HTTP/1.1\r\n\r\n",
	} {
		conn := dialRaw(t, tp.url)
		io.WriteString(conn, req)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(conn)
	}
	time.Sleep(100 * time.Millisecond) // the server logs after it answered
	if log := tp.log.String(); strings.Contains(log, "s3cr3t") {
		t.Errorf("the log holds bytes of malformed requests:\n%s", log)
	} else if !strings.Contains(log, "fasthttp") {
		t.Errorf("fasthttp logged nothing about the malformed requests (is the test's log at debug level?):\n%s", log)
	}
}

// TestCachePerKey: with API keys, one key's answer never tells it that
// another key sent the same image (cached, coalesced); the same key still
// gets its own cache hit, and CacheSharedAcrossKeys shares them again.
func TestCachePerKey(t *testing.T) {
	rt := startRuntime(t, testenv.TinyModel(t), 4, "")
	keys := map[string]string{}
	file := "keys:\n"
	for _, id := range []string{"team-a", "team-b"} {
		key, sum, err := auth.GenerateKey(id)
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = key
		file += auth.Key{ID: id, SHA256: sum, Scopes: []auth.Scope{auth.Predict}}.Entry()
	}
	parsed, err := auth.Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	predictAs := func(tp *testProxy, id string, img []byte) bool {
		req := rawReq(tp.url+"/predict", "image/png", img)
		req.Header.Set("X-API-Key", keys[id])
		r := do(t, req)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", id, r.status, r.raw)
		}
		return r.body["cached"] == true
	}
	for _, tc := range []struct {
		shared bool
		want   []bool // cached for team-a, team-b, team-b
	}{
		{false, []bool{false, false, true}},
		{true, []bool{false, true, true}},
	} {
		tp := startProxy(t, Config{Socket: rt.socket, Auth: parsed, SharedCacheAcrossKeys: tc.shared})
		img := testenv.UniquePNG(map[bool]int{false: 1, true: 2}[tc.shared])
		var got []bool
		for _, id := range []string{"team-a", "team-b", "team-b"} {
			got = append(got, predictAs(tp, id, img))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("shared across keys %v: cached %v, want %v", tc.shared, got, tc.want)
		}
	}
}
