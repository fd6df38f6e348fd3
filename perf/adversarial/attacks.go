package adversarial

// The attacks of issue 22 as soak scenarios, and the honest client that
// measures what they leave to everyone else. Each attacker dials from an
// address of its own in 127.0.0.0/8 and the honest client from another, as
// separate machines would, so that per-address limits bind the attacker
// only. Every loop is bounded by the scenario's duration.

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Client addresses: attackers and the honest client never share one.
// runSoak gives each scenario's attacker an address of its own, between
// scenarios.
var attackerIP = "127.0.0.2"

const honestIP = "127.0.0.3"

// dialFrom dials addr from the local IP from.
func dialFrom(addr, from string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return d.Dial("tcp", addr)
}

// honestResult is what the honest client got in one period.
type honestResult struct {
	OK     int           `json:"ok"`
	Failed int           `json:"failed"`
	P50    time.Duration `json:"p50"`
	P99    time.Duration `json:"p99"`
	// Why requests failed: a status, "error" (no answer) or "late" (paced:
	// every connection busy at its time).
	Why     map[string]int `json:"why,omitempty"`
	PerSec  float64        `json:"per_s"`
	Elapsed time.Duration  `json:"elapsed"`
}

// honestSeq numbers the honest clients' images across every period, so that
// none is ever answered from the cache.
var honestSeq atomic.Int64

// honestConn is one honest keep-alive connection from honestIP; extra
// is header lines its requests carry ("Authorization: ...\r\n").
type honestConn struct {
	addr, extra string
	conn        net.Conn
	br          *bufio.Reader
}

// post sends a distinct copy of jpeg to /predict and returns the answer's
// status ("200") or "error"; it reconnects as needed. Each request has 30 s.
func (h *honestConn) post(jpeg []byte) (status string) {
	if h.conn == nil {
		c, err := dialFrom(h.addr, honestIP)
		if err != nil {
			return "error"
		}
		h.conn, h.br = c, bufio.NewReader(c)
	}
	body := fmt.Appendf(slices.Clip(jpeg), "honest-%d", honestSeq.Add(1))
	h.conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(h.conn, "POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\n%sContent-Length: %d\r\n\r\n", h.extra, len(body))
	h.conn.Write(body)
	resp, err := http.ReadResponse(h.br, nil)
	var msg []byte
	if err == nil {
		msg, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
	}
	if err != nil || resp.Close {
		h.close()
	}
	if err != nil {
		return "error"
	}
	if resp.StatusCode == 200 {
		return "200"
	}
	// The error's first words say which limit refused it.
	var e struct{ Error string }
	json.Unmarshal(msg, &e)
	words := strings.Fields(e.Error)
	return strconv.Itoa(resp.StatusCode) + " " + strings.Join(words[:min(len(words), 4)], " ")
}

func (h *honestConn) close() {
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
}

// honestTally collects the honest requests' outcomes.
type honestTally struct {
	mu    sync.Mutex
	lat   []time.Duration
	why   map[string]int
	start time.Time
}

func (t *honestTally) add(status string, took time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if status == "200" {
		t.lat = append(t.lat, took)
		return
	}
	if t.why == nil {
		t.why = map[string]int{}
	}
	t.why[status]++
}

func (t *honestTally) result() honestResult {
	r := honestResult{OK: len(t.lat), Elapsed: time.Since(t.start), Why: t.why}
	for _, n := range t.why {
		r.Failed += n
	}
	if len(t.lat) > 0 {
		slices.Sort(t.lat)
		r.P50 = t.lat[len(t.lat)/2]
		r.P99 = t.lat[len(t.lat)*99/100]
	}
	r.PerSec = float64(r.OK) / r.Elapsed.Seconds()
	return r
}

// honestClient sends distinct copies of jpeg to /predict from honestIP on
// workers keep-alive connections, one request at a time each, as fast as
// they are answered, until stop is closed: the most one client gets.
func honestClient(addr string, workers int, jpeg []byte, stop <-chan struct{}) honestResult {
	t := &honestTally{start: time.Now()}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			h := &honestConn{addr: addr}
			defer h.close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				status := h.post(jpeg)
				t.add(status, time.Since(t0))
				if status != "200" {
					time.Sleep(50 * time.Millisecond) // as a client honouring Retry-After would, briefly
				}
			}
		})
	}
	wg.Wait()
	return t.result()
}

// honestPaced sends perSec distinct copies of jpeg a second to /predict
// from honestIP, with the header lines extra, on schedule whatever the
// answers (an open loop, as many independent users), over up to 64
// connections, until stop is closed. A request's latency counts from its
// scheduled time; one that finds all 64 connections busy is a failure.
func honestPaced(addr, extra string, perSec float64, jpeg []byte, stop <-chan struct{}) honestResult {
	const conns = 64
	t := &honestTally{start: time.Now()}
	due := make(chan time.Time, conns)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			h := &honestConn{addr: addr, extra: extra}
			defer h.close()
			for at := range due {
				t.add(h.post(jpeg), time.Since(at))
			}
		})
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / perSec))
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		case at := <-tick.C:
			select {
			case due <- at:
			default:
				t.add("late", 0)
			}
		}
	}
	close(due)
	wg.Wait()
	return t.result()
}

// repeat runs workers loops of attack, each sending one request at a time
// until d has passed, and counts what they got.
func repeat(workers int, d time.Duration, attack func(i int) string) *outcomes {
	out := &outcomes{}
	end := time.Now().Add(d)
	var seq atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(end) {
				out.add(attack(int(seq.Add(1))))
			}
		})
	}
	wg.Wait()
	return out
}

// postFrom sends one request of body to path from attackerIP, with the
// header lines extra ("" or "Name: value\r\n..."), and returns the answer's
// status, "closed" without one. It has 30 s.
func postFrom(addr, path, contentType, extra string, body []byte) string {
	conn, err := dialFrom(addr, attackerIP)
	if err != nil {
		time.Sleep(10 * time.Millisecond)
		return "dial error"
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: soak\r\nContent-Type: %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n", path, contentType, extra, len(body))
	go conn.Write(body) // the server may answer before it has read it all
	return readStatus(bufio.NewReader(conn))
}

// emptyInputsJSON is an OIP infer body of size bytes: {"inputs":[{},{},…]}.
func emptyInputsJSON(size int) []byte {
	b := bytes.NewBufferString(`{"inputs":[{}`)
	for b.Len() < size-3 {
		b.WriteString(",{}")
	}
	b.WriteString("]}")
	return b.Bytes()
}

// zerosJSON is an OIP infer body of size bytes whose FP32 data is
// [0,0,…]: millions of elements for a one-image shape.
func zerosJSON(size int) []byte {
	b := bytes.NewBufferString(`{"inputs":[{"name":"input","shape":[1,3,224,224],"datatype":"FP32","data":[0`)
	for b.Len() < size-3 {
		b.WriteString(",0")
	}
	b.WriteString("]}]}")
	return b.Bytes()
}

// webpBomb is issue 22's 46-byte WebP: a VP8X chunk around a 6000x6000
// lossless (VP8L) image of one colour, 137 MiB and seconds of CPU to decode.
// i changes a reserved byte of the VP8X chunk, so that every copy is
// distinct (the cache never answers) and decodes the same.
func webpBomb(i int) []byte {
	b, _ := hex.DecodeString("524946462600000057454250565038580a000000000000006f17006f17005650384c080000002f6fd7db05888808")
	b[21], b[22] = byte(i), byte(i>>8)
	return b
}

// dribble keeps n connections from attackerIP, each sending head and then
// one byte of drip a second (cycling through it), for d; a connection the
// server closes is counted by its answer ("closed" without one) and opened
// again after a pause, one held to the end as "held to the end".
func dribble(addr string, n int, d time.Duration, head, drip []byte) *outcomes {
	out := &outcomes{}
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for time.Now().Before(end) {
				conn, err := dialFrom(addr, attackerIP)
				if err != nil {
					out.add("dial error")
					time.Sleep(time.Second)
					continue
				}
				status := make(chan string, 1)
				go func() { status <- readStatus(bufio.NewReader(conn)) }()
				conn.Write(head)
				got := ""
				for i := 0; got == "" && time.Now().Before(end); i++ {
					select {
					case got = <-status:
					case <-time.After(time.Second):
						conn.Write(drip[i%len(drip) : i%len(drip)+1])
					}
				}
				conn.Close()
				if got == "" {
					got = "held to the end"
				}
				out.add(got)
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	return out
}

// attackScenarios are issue 22's attacks, each for d with honest clients
// beside it.
func attackScenarios(addr string, d time.Duration, scale float64) []scenario {
	n := func(v int) int { return max(1, int(float64(v)*scale)) }
	empty, zeros := emptyInputsJSON(10<<20-1024), zerosJSON(10<<20-1024)
	return []scenario{
		{fmt.Sprintf("4 clients sending 10 MiB OIP JSON of empty inputs (%d), for %v", bytes.Count(empty, []byte("{}")), d), 4,
			func() *outcomes {
				return repeat(4, d, func(int) string {
					return postFrom(addr, "/v2/models/resnet50/infer", "application/json", "", empty)
				})
			}},
		{fmt.Sprintf("4 clients sending 10 MiB OIP JSON of FP32 zeros (%d), for %v", bytes.Count(zeros, []byte(",0"))+1, d), 4,
			func() *outcomes {
				return repeat(4, d, func(int) string {
					return postFrom(addr, "/v2/models/resnet50/infer", "application/json", "", zeros)
				})
			}},
		{fmt.Sprintf("8 clients sending distinct %d-byte 36 MP WebPs (VP8X around lossless), for %v", len(webpBomb(0)), d), 8,
			func() *outcomes {
				return repeat(8, d, func(i int) string {
					return postFrom(addr, "/predict", "image/webp", "", webpBomb(i))
				})
			}},
		{fmt.Sprintf("%d clients trickling 10 MiB OIP JSON bodies at 1 byte/s, for %v", n(10), d), n(10),
			func() *outcomes {
				head := fmt.Appendf(nil, "POST /v2/models/resnet50/infer HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 10<<20-1024)
				return dribble(addr, n(10), d, head, []byte(" "))
			}},
		{fmt.Sprintf("%d connections sending headers at 1 byte/s, for %v", n(1000), d), n(1000),
			func() *outcomes {
				return dribble(addr, n(1000), d, nil, []byte("POST /predict HTTP/1.1\r\nHost: soak\r\nX-Padding: "+strings.Repeat("a", 4000)))
			}},
	}
}

// scenario is one soak scenario: conns connections, run until done.
type scenario struct {
	name string
	conn int
	run  func() *outcomes
}
