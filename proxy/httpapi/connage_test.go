package httpapi

import (
	"testing"
	"time"
)

// TestConnMaxAge: a keep-alive connection older than ConnMaxAge gets
// Connection: close on its next response, so that the client reconnects
// (and kube-proxy can send it to a new replica); a younger one, or any
// with ConnMaxAge 0, stays open.
func TestConnMaxAge(t *testing.T) {
	const age = 300 * time.Millisecond
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		want   []bool // close on: a new connection, the same at once, the same past age, the next (new) one
	}{
		{"recycled past the age", age, []bool{false, false, true, false}},
		{"never with 0", 0, []bool{false, false, false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.ConnMaxAge = tc.maxAge })
			var got []bool
			for i := range tc.want {
				if i == 2 {
					time.Sleep(age + 100*time.Millisecond) // the connection's age, not a wait for a condition
				}
				r := ts.do(t, ts.get("/v2"))
				if r.status != 200 {
					t.Fatalf("GET /v2: %d", r.status)
				}
				got = append(got, r.close)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("Connection: close on responses %v, want %v", got, tc.want)
					break
				}
			}
		})
	}
}
