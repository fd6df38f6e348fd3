// Package auth checks API keys: their scopes and per-key limits, against a
// keys file that is polled and reloaded when it changes. It knows nothing of
// HTTP routes: package httpapi maps routes to scopes and answers the
// decisions (docs/auth.md).
//
// Limits count images, the unit that costs: a key's rate is images per
// second and its concurrency images in flight. Check takes one token from
// the headers, before a request's body is read; once the body says how
// many images the request carries, TakeImages takes the rest and
// AcquireImages holds them in flight until the request ends.
//
// A key, as a client presents it, is "<id>.<secret>": the id names the key
// in logs and metrics, and the secret is 32 random bytes in base64url. The
// keys file holds only the sha256 of each secret; this package never keeps
// a presented secret, and compares digests in constant time.
//
// An Authenticator owns the current keys (swapped atomically on reload),
// one rate limiter per limited key (created on first use, dropped when idle
// or when its key goes), the images in flight per key with a concurrency
// limit, and its metrics. It starts no goroutine: Run polls
// the file on its caller's goroutine.
package auth

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/time/rate"
)

// Decision is Check's answer.
type Decision struct {
	// KeyID is the key's id once its secret is verified (allowed, 403 or
	// 429); "" otherwise, so a guessed id is never logged as a key.
	KeyID string
	// Status is 0 when allowed, or the HTTP status: 401 (no key or a bad
	// one), 403 (the key lacks a scope) or 429 (over its rate or its
	// concurrency).
	Status int
	// Reason is why it was refused: one of the Reason constants.
	Reason string
	// Scope is, with 403, the scope the key lacks.
	Scope Scope
	// RetryAfter is, with 429, when the key may send again; 0 when
	// waiting cannot help (Limit).
	RetryAfter time.Duration
	// Limit is, with a 429 that no wait can cure, the most images the key
	// may send in one request: its burst (rate) or its
	// max_concurrent_images (concurrency). 0 otherwise.
	Limit int
}

// Allowed reports whether the request may go on.
func (d Decision) Allowed() bool { return d.Status == 0 }

// Why a request was refused: Decision.Reason, and the reason label of
// auth_rejected_total.
const (
	ReasonMissing   = "missing"     // no Authorization or X-API-Key (401)
	ReasonMalformed = "malformed"   // not "Bearer <id>.<secret>" or "<id>.<secret>" (401)
	ReasonUnknown   = "unknown_key" // no key with that id (401)
	ReasonSecret    = "bad_secret"  // the id's secret is not that (401)
	ReasonScope     = "scope"       // the key lacks a scope the request needs (403)
	ReasonRate      = "rate"        // the key is over its rate in images (429)
	// ReasonConcurrency: the key has its max_concurrent_images in flight
	// (429).
	ReasonConcurrency = "concurrency"
)

// Config configures an Authenticator. Its zero value is usable: no file to
// watch, nothing logged, metrics in a private set.
type Config struct {
	// File is the keys file Run polls; "": Run returns at once.
	File string
	// Poll is how often Run reads the file. Default 2s.
	Poll time.Duration
	// Log receives reloads and rejected files; never a secret. Default:
	// discarded.
	Log *slog.Logger
	// Metrics receives the auth_* metrics. One Authenticator per Set.
	// Default: a private Set.
	Metrics *metrics.Set
}

// Idle limiters are dropped lazily: a limiter unused for limiterIdle (and
// full again) is dropped by the sweep that Check runs at most once per
// sweepEvery.
const (
	limiterIdle = 10 * time.Minute
	sweepEvery  = time.Minute
)

// Authenticator checks API keys against the current keys file. It is safe
// for concurrent use.
type Authenticator struct {
	cfg     Config
	state   atomic.Pointer[state]
	last    [32]byte   // sha256 of the content keys came from: where Run starts
	applyMu sync.Mutex // serializes apply

	mu        sync.Mutex // guards buckets and lastSweep
	buckets   map[string]*bucket
	lastSweep time.Time

	inflightMu sync.Mutex     // guards inflight
	inflight   map[string]int // images in flight per key id with a concurrency limit; no zeros

	rejected map[string]*metrics.Counter // by reason, for the reasons without a key
	reloads  struct{ applied, rejected *metrics.Counter }
}

// state is one keys file, ready to check against.
type state struct {
	keys *Keys
	byID map[string]*live
}

// live is a key and its metrics.
type live struct {
	id                                  string
	digest                              [32]byte
	scopes                              scopeSet
	limited                             bool
	limit                               rate.Limit
	burst                               int
	concurrency                         int // images in flight; 0: unlimited
	allowed, rejScope, rejRate, rejConc *metrics.Counter
}

// bucket is a limited key's limiter and the limit it was set to.
type bucket struct {
	lim   *rate.Limiter
	limit rate.Limit
	burst int
	last  time.Time // last used
}

// dummyDigest is compared with when the id is unknown, so an unknown id
// costs the same work as a wrong secret. No key is ever accepted against it.
var dummyDigest = sha256.Sum256([]byte("batchgate: no key has this digest"))

// New returns an Authenticator checking keys (nil: no key is accepted), the
// file content whose sha256 is sum; Run reloads the file when its content
// differs from sum.
func New(keys *Keys, sum [32]byte, cfg Config) *Authenticator {
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if keys == nil {
		keys = &Keys{}
	}
	a := &Authenticator{cfg: cfg, last: sum, buckets: map[string]*bucket{}, inflight: map[string]int{},
		rejected: map[string]*metrics.Counter{}}
	for _, r := range []string{ReasonMissing, ReasonMalformed, ReasonUnknown, ReasonSecret} {
		a.rejected[r] = cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`auth_rejected_total{reason=%q}`, r))
	}
	a.reloads.applied = cfg.Metrics.GetOrCreateCounter(`auth_reloads_total{result="applied"}`)
	a.reloads.rejected = cfg.Metrics.GetOrCreateCounter(`auth_reloads_total{result="rejected"}`)
	cfg.Metrics.NewGauge("auth_keys", func() float64 { return float64(a.state.Load().keys.Len()) })
	a.state.Store(a.build(keys))
	return a
}

// Keys returns the keys in use now.
func (a *Authenticator) Keys() *Keys { return a.state.Load().keys }

// build indexes keys and creates their metrics.
func (a *Authenticator) build(keys *Keys) *state {
	st := &state{keys: keys, byID: make(map[string]*live, keys.Len())}
	set := a.cfg.Metrics
	for _, k := range keys.list {
		l := &live{id: k.ID, digest: k.digest, scopes: k.scopes, limited: k.Rate > 0, limit: rate.Limit(k.Rate), burst: k.Burst,
			concurrency: k.MaxConcurrentImages}
		l.allowed, l.rejScope, l.rejRate, l.rejConc = set.GetOrCreateCounter(keyMetric(requestsMetric, k.ID, "")),
			set.GetOrCreateCounter(keyMetric(rejectedMetric, k.ID, ReasonScope)),
			set.GetOrCreateCounter(keyMetric(rejectedMetric, k.ID, ReasonRate)),
			set.GetOrCreateCounter(keyMetric(rejectedMetric, k.ID, ReasonConcurrency))
		st.byID[k.ID] = l
	}
	return st
}

const (
	requestsMetric = "auth_requests_total"
	rejectedMetric = "auth_rejected_total"
)

func keyMetric(name, id, reason string) string {
	if reason == "" {
		return fmt.Sprintf(`%s{key=%q}`, name, id)
	}
	return fmt.Sprintf(`%s{reason=%q,key=%q}`, name, reason, id)
}

// Check checks a request's key for scope: CheckAll with one scope.
func (a *Authenticator) Check(authorization, apiKey []byte, scope Scope, take bool) Decision {
	return a.CheckAll(authorization, apiKey, []Scope{scope}, take)
}

// CheckAll checks a request's key for every scope in scopes (a 403 names
// the first the key lacks in Decision.Scope). authorization is the raw
// Authorization header ("Bearer <key>", the scheme in any case, one space),
// apiKey the raw X-API-Key header (the key itself); Authorization wins when
// both are sent, and an empty header counts as absent. With take, an
// allowed request also takes a token from its key's limiter and is counted
// as allowed; without (before a request's body is sent) the key and the
// scopes are checked, and a key whose limiter has no token now gets 429,
// but no token is taken. Refusals are counted either way. The token stands
// for the request's first image (TakeImages).
//
// An unknown scope is held by no key: 403.
func (a *Authenticator) CheckAll(authorization, apiKey []byte, scopes []Scope, take bool) Decision {
	raw := apiKey
	if len(authorization) > 0 {
		var ok bool
		if raw, ok = bearer(authorization); !ok {
			return a.refuse(ReasonMalformed)
		}
	}
	if len(raw) == 0 {
		return a.refuse(ReasonMissing)
	}
	id, secret, ok := splitKey(raw)
	if !ok {
		return a.refuse(ReasonMalformed)
	}
	st := a.state.Load()
	k := st.byID[string(id)] // no allocation
	want := &dummyDigest
	if k != nil {
		want = &k.digest
	}
	got := sha256.Sum256(secret)
	match := digestsEqual(&got, want)
	switch {
	case k == nil:
		return a.refuse(ReasonUnknown)
	case !match:
		return a.refuse(ReasonSecret)
	}
	for _, scope := range scopes {
		if k.scopes&scope.bit() == 0 {
			k.rejScope.Inc()
			return Decision{KeyID: k.id, Status: 403, Reason: ReasonScope, Scope: scope}
		}
	}
	if !take {
		// Before the body: refuse a key with no token now, so it never
		// sends the body; the token itself is taken when the body comes.
		if k.limited {
			if d := a.wait(k, time.Now(), 1); d > 0 {
				k.rejRate.Inc()
				return Decision{KeyID: k.id, Status: 429, Reason: ReasonRate, RetryAfter: d}
			}
		}
		return Decision{KeyID: k.id}
	}
	if k.limited {
		if d := a.take(k, time.Now(), 1, 1); d > 0 {
			k.rejRate.Inc()
			return Decision{KeyID: k.id, Status: 429, Reason: ReasonRate, RetryAfter: d}
		}
	}
	k.allowed.Inc()
	return Decision{KeyID: k.id}
}

// TakeImages charges a request of n images to the key keyID, whose Check
// (with take) took the token of its first image: it takes n-1 more from the
// key's limiter. Refused, the request gets 429: RetryAfter is how long
// until the bucket holds all n tokens, so a retry after it passes (the
// token Check took is spent); a request of more images than the key's
// burst can never pass, and gets Limit, the burst, instead. A key without
// a rate, or gone since Check (a reload), is not limited.
func (a *Authenticator) TakeImages(keyID string, n int) Decision {
	if n <= 1 {
		return Decision{KeyID: keyID}
	}
	k := a.state.Load().byID[keyID]
	if k == nil || !k.limited {
		return Decision{KeyID: keyID}
	}
	if n > k.burst {
		k.rejRate.Inc()
		return Decision{KeyID: k.id, Status: 429, Reason: ReasonRate, Limit: k.burst}
	}
	if d := a.take(k, time.Now(), n-1, n); d > 0 {
		k.rejRate.Inc()
		return Decision{KeyID: k.id, Status: 429, Reason: ReasonRate, RetryAfter: d}
	}
	return Decision{KeyID: k.id}
}

// concurrencyRetry is the Retry-After of a key at its concurrency limit:
// when its requests in flight end is not known.
const concurrencyRetry = time.Second

// AcquireImages holds n images in flight for the key keyID until release
// is called (exactly once; later calls do nothing). Over the key's
// max_concurrent_images it refuses with 429 and a no-op release:
// RetryAfter 1 s, or Limit when n alone is over the limit. A key without a
// concurrency limit, or gone since Check, is not limited and takes no lock.
func (a *Authenticator) AcquireImages(keyID string, n int) (release func(), d Decision) {
	k := a.state.Load().byID[keyID]
	if k == nil || k.concurrency == 0 || n <= 0 {
		return func() {}, Decision{KeyID: keyID}
	}
	if n > k.concurrency {
		k.rejConc.Inc()
		return func() {}, Decision{KeyID: k.id, Status: 429, Reason: ReasonConcurrency, Limit: k.concurrency}
	}
	a.inflightMu.Lock()
	if a.inflight[k.id]+n > k.concurrency {
		a.inflightMu.Unlock()
		k.rejConc.Inc()
		return func() {}, Decision{KeyID: k.id, Status: 429, Reason: ReasonConcurrency, RetryAfter: concurrencyRetry}
	}
	a.inflight[k.id] += n
	a.inflightMu.Unlock()
	var once sync.Once
	id := k.id
	return func() {
		once.Do(func() {
			a.inflightMu.Lock()
			if a.inflight[id] -= n; a.inflight[id] <= 0 {
				delete(a.inflight, id)
			}
			a.inflightMu.Unlock()
		})
	}, Decision{KeyID: k.id}
}

// inFlight is the images held in flight for id (for tests).
func (a *Authenticator) inFlight(id string) int {
	a.inflightMu.Lock()
	defer a.inflightMu.Unlock()
	return a.inflight[id]
}

func (a *Authenticator) refuse(reason string) Decision {
	a.rejected[reason].Inc()
	return Decision{Status: 401, Reason: reason}
}

// digestsEqual compares two sha256 digests in constant time: both are 32
// bytes, whatever the length of the secret presented.
func digestsEqual(a, b *[32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// bearer returns the key of an Authorization value "Bearer <key>".
func bearer(v []byte) ([]byte, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !bytes.EqualFold(v[:len(scheme)], []byte(scheme)) {
		return nil, false
	}
	return v[len(scheme):], true
}

// Secrets are base64url without padding; GenerateKey's are 43 characters.
const (
	minSecret = 16
	maxSecret = 128
)

// splitKey splits "<id>.<secret>" at the first '.' and checks both parts'
// alphabets and lengths.
func splitKey(key []byte) (id, secret []byte, ok bool) {
	i := bytes.IndexByte(key, '.')
	if i < 1 || i > 64 {
		return nil, nil, false
	}
	id, secret = key[:i], key[i+1:]
	if len(secret) < minSecret || len(secret) > maxSecret {
		return nil, nil, false
	}
	for _, c := range id {
		if !base64URL(c) {
			return nil, nil, false
		}
	}
	for _, c := range secret {
		if !base64URL(c) {
			return nil, nil, false
		}
	}
	return id, secret, true
}

// base64URL reports whether c is in the base64url alphabet, which is also
// the ids' alphabet.
func base64URL(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// take takes n tokens of k's limiter at now, and returns 0, or how long
// until it holds need tokens (at least n, at most its burst).
func (a *Authenticator) take(k *live, now time.Time, n, need int) time.Duration {
	a.mu.Lock()
	if now.Sub(a.lastSweep) >= sweepEvery {
		a.sweepLocked(now)
	}
	b := a.buckets[k.id]
	switch {
	case b == nil:
		b = &bucket{lim: rate.NewLimiter(k.limit, k.burst), limit: k.limit, burst: k.burst}
		a.buckets[k.id] = b
	case b.limit != k.limit || b.burst != k.burst:
		// A reload changed the key's limit (apply usually got here first).
		b.setLocked(now, k.limit, k.burst)
	}
	b.last = now
	lim := b.lim
	a.mu.Unlock()

	if lim.AllowN(now, n) {
		return 0
	}
	// Another request may have taken tokens since, or a reload changed
	// the limit: never answer 0 for a refusal.
	return max(until(lim, now, need), time.Nanosecond)
}

// until is how long lim takes from now to hold need tokens: 0 if it does.
func until(lim *rate.Limiter, now time.Time, need int) time.Duration {
	tokens := lim.TokensAt(now)
	if tokens >= float64(need) || lim.Limit() <= 0 {
		return 0
	}
	return time.Duration(math.Ceil((float64(need) - tokens) / float64(lim.Limit()) * float64(time.Second)))
}

// wait returns how long until k's limiter holds need tokens at now,
// without taking them: 0 if it does (a key not used yet has a full
// bucket).
func (a *Authenticator) wait(k *live, now time.Time, need int) time.Duration {
	a.mu.Lock()
	b := a.buckets[k.id]
	a.mu.Unlock()
	if b == nil {
		return 0
	}
	return until(b.lim, now, need)
}

func (b *bucket) setLocked(now time.Time, limit rate.Limit, burst int) {
	b.lim.SetLimitAt(now, limit)
	b.lim.SetBurstAt(now, burst)
	b.limit, b.burst = limit, burst
}

// sweepLocked drops the limiters unused for limiterIdle and full again: a
// new one would start full too, so dropping them changes nothing.
func (a *Authenticator) sweepLocked(now time.Time) {
	a.lastSweep = now
	for id, b := range a.buckets {
		if now.Sub(b.last) >= limiterIdle && b.lim.TokensAt(now) >= float64(b.burst) {
			delete(a.buckets, id)
		}
	}
}

// limiters is the number of limiters held (for tests).
func (a *Authenticator) limiters() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.buckets)
}

// apply makes keys the current keys: requests checked from now on use
// them, requests already checked finish. A changed rate or burst applies
// to the key's limiter at once; a removed key's limiter and metrics go.
func (a *Authenticator) apply(keys *Keys) {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	old := a.state.Load()
	st := a.build(keys)
	a.state.Store(st)

	var added, removed, changed int
	for id, k := range st.byID {
		o := old.byID[id]
		switch {
		case o == nil:
			added++
		case o.digest != k.digest || o.scopes != k.scopes || o.limit != k.limit || o.burst != k.burst || o.concurrency != k.concurrency:
			changed++
		}
	}
	for id := range old.byID {
		if st.byID[id] == nil {
			removed++
			for _, name := range []string{keyMetric(requestsMetric, id, ""), keyMetric(rejectedMetric, id, ReasonScope),
				keyMetric(rejectedMetric, id, ReasonRate), keyMetric(rejectedMetric, id, ReasonConcurrency)} {
				a.cfg.Metrics.UnregisterMetric(name)
			}
		}
	}
	now := time.Now()
	a.mu.Lock()
	for id, b := range a.buckets {
		switch k := st.byID[id]; {
		case k == nil || !k.limited:
			delete(a.buckets, id)
		case b.limit != k.limit || b.burst != k.burst:
			b.setLocked(now, k.limit, k.burst)
		}
	}
	a.mu.Unlock()
	a.cfg.Log.Info("API keys applied", "keys", keys.Len(), "added", added, "removed", removed, "changed", changed)
}
