package httpapi

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchgate/batchgate/proxy/budget"
	"github.com/batchgate/batchgate/proxy/fairshare"
)

// trickle opens a connection from the local address from (an IP of
// 127.0.0.0/8, "" for any) and sends head and the first n bytes of its
// body, then holds the connection open without sending more. The
// connection closes at the test's end.
func trickle(t *testing.T, addr, from, head string, n int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head+strings.Repeat("x", n)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// answerOn reads the answer on conn, within 10 s.
func answerOn(t *testing.T, conn net.Conn) response {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	return readResponse(t, resp)
}

// TestTrickledBodiesDoNotHoldTheBudget: ten clients announce a 2 MB OIP
// JSON body (3x reserved) and send its first 10 KB (past fasthttp's own
// 8 KiB pre-read, so the handler runs); they hold only their first chunk's
// reservation, and honest uploads still fit. Before reservations followed
// the bytes, the first held the whole 4 MiB budget and the honest client
// got 429.
func TestTrickledBodiesDoNotHoldTheBudget(t *testing.T) {
	const announced = 2_000_000
	ts := startServer(t, func(c *Config) {
		c.MaxBodyBytes, c.Uploads, c.UploadWait = announced, budget.New(4<<20), 200*time.Millisecond
	})
	for range 10 {
		trickle(t, ts.addr, "", head("/v2/models/resnet50/infer", "application/json", announced), 10_000)
	}
	waitInUse(t, ts, 10*3*uploadChunk)
	if got, most := ts.uploads.InUse(), int64(10*3*uploadChunk); got > most {
		t.Errorf("ten trickled bodies hold %d bytes of the budget, want at most %d (what arrived, not what was announced)", got, most)
	}
	for i := range 5 {
		if r := ts.do(t, ts.post("/predict", "image/png", make([]byte, 50_000))); r.status != 200 {
			t.Errorf("honest upload %d beside ten trickled bodies: %d %s, want 200", i, r.status, r.raw)
		}
	}
	if n := ts.rejections(t, "upload_budget"); n != 0 {
		t.Errorf("upload_budget rejections %v, want 0", n)
	}
}

// waitInUse waits until the upload budget has at least n bytes reserved, or
// 5 s.
func waitInUse(t *testing.T, ts *testServer, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.uploads.InUse() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSlowBodyCutOff: a body that stalls gets 408 once it falls below the
// minimum rate (after the grace) and its connection closes, both before
// the handler runs (fasthttp's 8 KiB pre-read) and while it reads; one
// arriving faster than the rate is served.
func TestSlowBodyCutOff(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.UploadMinRate, c.UploadRateGrace = 20_000, 200*time.Millisecond })
	for _, tc := range []struct {
		sent   int
		reason string
	}{{10, "slow_request"}, {10_000, "upload_too_slow"}} {
		conn := trickle(t, ts.addr, "", head("/predict", "image/png", 40_000), tc.sent)
		r := answerOn(t, conn)
		if r.status != 408 || !r.close || !strings.Contains(r.jsonError(), "20000 bytes a second") || ts.rejections(t, tc.reason) != 1 {
			t.Errorf("body stalled after %d bytes: %d close=%v %s; want 408 about the rate (%s), connection closed", tc.sent, r.status, r.close, r.raw, tc.reason)
		}
	}
	ts.checkUploadsFree(t, "after the slow bodies")

	// 40 KB in four parts over about 0.5 s: the rate allows 2.2 s.
	conn := trickle(t, ts.addr, "", head("/predict", "image/png", 40_000), 10_000)
	for range 3 {
		time.Sleep(150 * time.Millisecond)
		io.WriteString(conn, strings.Repeat("x", 10_000))
	}
	if r := answerOn(t, conn); r.status != 200 {
		t.Errorf("body faster than the minimum rate: %d %s, want 200", r.status, r.raw)
	}
}

// TestUploadsPerClient: a client address reading UploadsPerClient bodies
// over 64 KiB at once gets 429 for the next, while another address, and a
// small body from the same one, are served.
func TestUploadsPerClient(t *testing.T) {
	const size = 90_000
	ts := startServer(t, func(c *Config) { c.UploadsPerClient = 2 })
	for range 2 {
		trickle(t, ts.addr, "127.0.0.1", head("/predict", "image/png", size), 10_000)
	}
	waitInUse(t, ts, 2*uploadChunk)
	third := trickle(t, ts.addr, "127.0.0.1", head("/predict", "image/png", size), size)
	r := answerOn(t, third)
	if r.status != 429 || r.header.Get("Retry-After") == "" || ts.rejections(t, "upload_client_limit") != 1 {
		t.Errorf("third upload from one address: %d %s, Retry-After %q; want 429 upload_client_limit", r.status, r.raw, r.header.Get("Retry-After"))
	}
	small := trickle(t, ts.addr, "127.0.0.1", head("/predict", "image/png", 5000), 5000)
	if r := answerOn(t, small); r.status != 200 {
		t.Errorf("small upload from the same address: %d %s, want 200", r.status, r.raw)
	}
	other := trickle(t, ts.addr, "127.0.0.2", head("/predict", "image/png", size), size)
	if r := answerOn(t, other); r.status != 200 {
		t.Errorf("upload from another address: %d %s, want 200", r.status, r.raw)
	}
}

// TestRefusedClientIsHeld: a refused request is charged to its client
// address; an address owing more than its allowance is held before its
// next request is read, then answered 429 with Retry-After on a closed
// connection; other addresses, and the probes, are served at once.
func TestRefusedClientIsHeld(t *testing.T) {
	const hold = 300 * time.Millisecond
	debt := fairshare.NewDebt(fairshare.DebtConfig{Rate: 1 << 20, Allowance: 256 << 10, MaxWait: hold})
	ts := startServer(t, func(c *Config) { c.Refusals = debt })
	bad := trickle(t, ts.addr, "127.0.0.2", head("/v2/models/resnet50/infer", "application/json", 10_000), 10_000)
	if r := answerOn(t, bad); r.status != 400 {
		t.Fatalf("garbage JSON: %d %s, want 400", r.status, r.raw)
	}
	if got, want := debt.Owed("127.0.0.2"), int64(10_000+refusalCost-100<<10); got < want { // 100 ms of forgiving
		t.Errorf("after a refused 10 KB body: owes %d, want at least %d", got, want)
	}
	good := trickle(t, ts.addr, "127.0.0.3", head("/predict", "image/png", 5000), 5000)
	if r := answerOn(t, good); r.status != 200 || debt.Owed("127.0.0.3") != 0 {
		t.Errorf("a served request: %d, owes %d; want 200 and nothing owed", r.status, debt.Owed("127.0.0.3"))
	}

	debt.Charge("127.0.0.2", 10<<20) // 10 s to forgive
	start := time.Now()
	next := trickle(t, ts.addr, "127.0.0.2", head("/predict", "image/png", 5000), 5000)
	r := answerOn(t, next)
	if took := time.Since(start); r.status != 429 || r.header.Get("Retry-After") == "" || !r.close || took < hold ||
		ts.rejections(t, "client_refusals") != 1 {
		t.Errorf("owing 10 MiB: %d %s after %v, Retry-After %q, close %v; want 429 client_refusals after at least %v, Retry-After, connection closed",
			r.status, r.raw, took, r.header.Get("Retry-After"), r.close, hold)
	}
	probe := trickle(t, ts.addr, "127.0.0.2", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0)
	if r := answerOn(t, probe); r.status != 200 {
		t.Errorf("probe from the held address: %d, want 200", r.status)
	}
	other := trickle(t, ts.addr, "127.0.0.3", head("/predict", "image/png", 5000), 5000)
	if r := answerOn(t, other); r.status != 200 {
		t.Errorf("upload from another address: %d %s, want 200", r.status, r.raw)
	}
}

// TestUploadMemoryPerClient: one client address's bodies being read hold
// at most half the upload budget (1 MiB here): two 400 KB uploads, 120 KB
// sent, hold 240 KB each; a third from the same address is refused at
// once, and another address's upload is served.
func TestUploadMemoryPerClient(t *testing.T) {
	const size = 400_000
	ts := startServer(t, func(c *Config) { c.MaxBodyBytes = size })
	for range 2 {
		trickle(t, ts.addr, "127.0.0.1", head("/predict", "image/png", size), 120_000)
	}
	waitInUse(t, ts, 480_000)
	third := trickle(t, ts.addr, "127.0.0.1", head("/predict", "image/png", size), size)
	if r := answerOn(t, third); r.status != 429 || ts.rejections(t, "upload_client_limit") != 1 {
		t.Errorf("a third upload while two hold half the budget: %d %s; want 429 upload_client_limit", r.status, r.raw)
	}
	other := trickle(t, ts.addr, "127.0.0.2", head("/predict", "image/png", 90_000), 90_000)
	if r := answerOn(t, other); r.status != 200 {
		t.Errorf("upload from another address: %d %s, want 200", r.status, r.raw)
	}
}
