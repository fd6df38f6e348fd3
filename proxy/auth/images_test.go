package auth

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// CheckAll needs every scope: a key without versions gets 403 naming it,
// and takes no token; a key with it passes.
func TestCheckAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, set := newTest(t,
			Key{ID: "plain", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, Rate: 1, Burst: 1},
			Key{ID: "chooser", SHA256: digestHex(secretD), Scopes: []Scope{Predict, Versions}})
		plain, chooser := []byte("plain."+secretA), []byte("chooser."+secretD)
		for _, tc := range []struct {
			name   string
			key    []byte
			scopes []Scope
			status int
			scope  Scope // with 403
		}{
			{"predict only", plain, []Scope{Predict}, 0, ""},
			{"version without the scope", plain, []Scope{Predict, Versions}, 403, Versions},
			{"version with the scope", chooser, []Scope{Predict, Versions}, 0, ""},
			{"the route's scope first", chooser, []Scope{Metadata, Versions}, 403, Metadata},
		} {
			// The limited key's one token is not taken by the 403s.
			d := a.CheckAll(nil, tc.key, tc.scopes, tc.status == 403)
			if d.Status != tc.status || d.Scope != tc.scope || (tc.status == 403) != (d.Reason == ReasonScope) {
				t.Errorf("%s: %+v; want status %d missing %q", tc.name, d, tc.status, tc.scope)
			}
		}
		if d := a.Check(nil, plain, Predict, true); !d.Allowed() {
			t.Errorf("the limited key's token after its 403: %+v", d)
		}
		if got := metricValue(t, set, `auth_rejected_total{reason="scope",key="plain"}`); got != 1 {
			t.Errorf("scope rejections of plain = %v, want 1", got)
		}
	})
}

// A key's rate counts images: Check takes the first image's token and
// TakeImages the rest. A request of more images than the burst can never
// pass (Limit, no Retry-After); one that the bucket cannot cover now gets
// the time until it holds every image's token, and passes after it.
func TestTakeImages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, set := newTest(t,
			Key{ID: "one", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, Rate: 1, Burst: 1},
			Key{ID: "four", SHA256: digestHex(secretB), Scopes: []Scope{Predict}, Rate: 2, Burst: 4},
			Key{ID: "free", SHA256: digestHex(secretD), Scopes: []Scope{Predict}})
		request := func(key string, n int) Decision {
			t.Helper()
			d := a.Check(nil, []byte(key), Predict, true)
			if !d.Allowed() {
				return d
			}
			return a.TakeImages(d.KeyID, n)
		}
		// 16 images on a 1/s, burst 1 key: never.
		if d := request("one."+secretA, 16); d.Status != 429 || d.Reason != ReasonRate || d.Limit != 1 || d.RetryAfter != 0 {
			t.Errorf("16 images, burst 1: %+v; want 429 with Limit 1", d)
		}
		time.Sleep(time.Second)
		if d := request("one."+secretA, 1); !d.Allowed() {
			t.Errorf("1 image, burst 1: %+v", d)
		}
		four := "four." + secretB
		if d := request(four, 4); !d.Allowed() {
			t.Errorf("4 images on a full bucket of 4: %+v", d)
		}
		if d := request(four, 1); d.Status != 429 || d.RetryAfter != 500*time.Millisecond {
			t.Errorf("then 1 image: %+v; want 429 retry after 0.5s", d)
		}
		time.Sleep(time.Second) // 2 tokens
		// Check takes 1, 3 more are missing 2: the bucket holds 4 again
		// after (4-1)/2 s.
		if d := request(four, 4); d.Status != 429 || d.RetryAfter != 1500*time.Millisecond || d.Limit != 0 {
			t.Errorf("4 images on 2 tokens: %+v; want 429 retry after 1.5s", d)
		}
		time.Sleep(1500 * time.Millisecond)
		if d := request(four, 4); !d.Allowed() {
			t.Errorf("4 images after the Retry-After: %+v", d)
		}
		for _, n := range []int{0, 1, 64, 1 << 20} {
			if d := request("free."+secretD, n); !d.Allowed() {
				t.Errorf("%d images on an unlimited key: %+v", n, d)
			}
		}
		if d := a.TakeImages("gone", 8); !d.Allowed() {
			t.Errorf("a key removed since its Check: %+v", d)
		}
		for name, want := range map[string]float64{
			`auth_rejected_total{reason="rate",key="one"}`:  1,
			`auth_rejected_total{reason="rate",key="four"}`: 2,
			`auth_requests_total{key="four"}`:               3, // passed Check, one of them refused for its images
		} {
			if got := metricValue(t, set, name); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
	})
}

// max_concurrent_images bounds a key's images in flight: a request that
// would pass it gets 429 (retry after 1 s), one larger than the limit gets
// Limit, release gives the images back once however often it is called,
// and a reload's new limit applies to the next request.
func TestAcquireImages(t *testing.T) {
	a, set := newTest(t, Key{ID: "k", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, MaxConcurrentImages: 4},
		Key{ID: "free", SHA256: digestHex(secretB), Scopes: []Scope{Predict}})
	r1, d := a.AcquireImages("k", 3)
	if !d.Allowed() || a.inFlight("k") != 3 {
		t.Fatalf("3 of 4: %+v, %d in flight", d, a.inFlight("k"))
	}
	if _, d := a.AcquireImages("k", 2); d.Status != 429 || d.Reason != ReasonConcurrency || d.RetryAfter != time.Second || d.Limit != 0 {
		t.Errorf("2 more: %+v; want 429 retry after 1s", d)
	}
	r2, d := a.AcquireImages("k", 1)
	if !d.Allowed() {
		t.Errorf("1 more, to 4: %+v", d)
	}
	if _, d := a.AcquireImages("k", 5); d.Status != 429 || d.Limit != 4 || d.RetryAfter != 0 {
		t.Errorf("5 at once: %+v; want 429 with Limit 4", d)
	}
	r1()
	r1() // once only
	if got := a.inFlight("k"); got != 1 {
		t.Errorf("after one release twice: %d in flight, want 1", got)
	}
	r3, d := a.AcquireImages("k", 3)
	if !d.Allowed() {
		t.Errorf("3 after the release: %+v", d)
	}
	a.apply(mustParse(t, keysFile(Key{ID: "k", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, MaxConcurrentImages: 2})))
	if _, d := a.AcquireImages("k", 1); d.Status != 429 {
		t.Errorf("after the limit fell to 2 with 4 in flight: %+v", d)
	}
	r2()
	r3()
	if got := a.inFlight("k"); got != 0 {
		t.Errorf("%d in flight after every release", got)
	}
	r4, d := a.AcquireImages("k", 2)
	if !d.Allowed() {
		t.Errorf("2 of the new 2: %+v", d)
	}
	r4()
	if got := metricValue(t, set, `auth_rejected_total{reason="concurrency",key="k"}`); got != 3 {
		t.Errorf("concurrency rejections = %v, want 3", got)
	}
	// Unlimited, or unknown: nothing held.
	for _, id := range []string{"free", "gone"} {
		r, d := a.AcquireImages(id, 1000)
		if !d.Allowed() || a.inFlight(id) != 0 {
			t.Errorf("%s: %+v, %d in flight", id, d, a.inFlight(id))
		}
		r()
	}
}

// Concurrent acquirers never hold more than the limit, and every image is
// given back.
func TestAcquireImagesConcurrent(t *testing.T) {
	a, _ := newTest(t, Key{ID: "k", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, MaxConcurrentImages: 5})
	var wg sync.WaitGroup
	var most atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			for range 500 {
				release, d := a.AcquireImages("k", 1+i%3)
				if d.Allowed() {
					if n := int64(a.inFlight("k")); n > most.Load() {
						most.Store(n) // racy max: enough to see a breach
					}
				}
				release()
			}
		})
	}
	wg.Wait()
	if most.Load() > 5 || most.Load() == 0 || a.inFlight("k") != 0 {
		t.Errorf("at most %d images held (limit 5), %d left in flight", most.Load(), a.inFlight("k"))
	}
}
