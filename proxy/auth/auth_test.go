package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/batchgate/batchgate/internal/testenv"
)

// testSecret is a fixed secret, as GenerateKey makes them: 32 bytes in
// base64url, 43 characters.
func testSecret(seed string) string {
	b := sha256.Sum256([]byte("test secret " + seed))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func digestHex(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}

// keysFile is a keys file listing keys.
func keysFile(keys ...Key) []byte {
	var b strings.Builder
	b.WriteString("keys:\n")
	for _, k := range keys {
		b.WriteString(k.Entry())
	}
	return []byte(b.String())
}

func mustParse(t testing.TB, data []byte) *Keys {
	t.Helper()
	k, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	secretA  = testSecret("a")
	secretB  = testSecret("b")
	secretC  = testSecret("c")
	secretD  = testSecret("d")
	keyA     = "team-a." + secretA // predict and metadata, unlimited
	keyB     = "team-b." + secretB // metadata only
	keyC     = "team-c." + secretC // predict, 1/s, burst 2
	keyD     = "team-d." + secretD // predict and versions (not in testKeys)
	testKeys = []Key{
		{ID: "team-a", SHA256: digestHex(secretA), Scopes: []Scope{Predict, Metadata}},
		{ID: "team-b", SHA256: digestHex(secretB), Scopes: []Scope{Metadata}},
		{ID: "team-c", SHA256: digestHex(secretC), Scopes: []Scope{Predict}, Rate: 1, Burst: 2},
	}
)

// metricValue reads one series of set, by its full name with labels; a
// series the set lacks fails the test.
func metricValue(t testing.TB, set *metrics.Set, name string) float64 {
	t.Helper()
	return testenv.SetMetrics(t, set).Value(t, name)
}

func TestParse(t *testing.T) {
	d := digestHex(secretA)
	entry := func(fields string) string { return "keys:\n  - " + fields + "\n" }
	for _, tc := range []struct {
		name string
		file string
		want []string // substrings of the error; none: valid
	}{
		{"valid", entry("{id: team-a, sha256: " + d + ", scopes: [predict]}"), nil},
		{"valid JSON", `{"keys":[{"id":"team-a","sha256":"` + d + `","scopes":["predict","metadata"],"rate":2.5}]}`, nil},
		{"upper-case hex", entry("{id: a, sha256: " + strings.ToUpper(d) + ", scopes: [metadata]}"), nil},
		{"no keys at all", "keys: []\n", nil},
		{"burst without rate is ignored", entry("{id: a, sha256: " + d + ", scopes: [predict], burst: 3}"), nil},
		{"empty", "", []string{"keys file is empty"}},
		{"only a comment", "# nothing\n", []string{"keys file is empty"}},
		{"no keys list", "other: 1\n", []string{"field other not found"}},
		{"null keys", "keys:\n", []string{"no `keys:` list"}},
		{"not YAML", "keys: [\n", []string{"not valid YAML or JSON"}},
		{"unknown field", entry("{id: a, sha256: " + d + ", scopes: [predict], rates: 3}"), []string{"field rates not found"}},
		{"rate not a number", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: fast}"), []string{"cannot unmarshal"}},
		{"no id", entry("{sha256: " + d + ", scopes: [predict]}"), []string{"keys[0]: id is required"}},
		{"id with a dot", entry("{id: a.b, sha256: " + d + ", scopes: [predict]}"), []string{"keys[0]: id has a '.'", "is it a whole key"}},
		{"id too long", entry("{id: " + strings.Repeat("x", 65) + ", sha256: " + d + ", scopes: [predict]}"), []string{"keys[0]: id must be 1-64", "65 characters"}},
		{"id with a space", entry("{id: 'a b', sha256: " + d + ", scopes: [predict]}"), []string{"keys[0]: id must be"}},
		{"duplicate id", "keys:\n  - {id: a, sha256: " + d + ", scopes: [predict]}\n  - {id: a, sha256: " + digestHex(secretB) + ", scopes: [predict]}\n",
			[]string{`keys[1] ("a"): id already used by keys[0]`}},
		{"no sha256", entry("{id: a, scopes: [predict]}"), []string{`keys[0] ("a"): sha256 must be the 64 hex digits`, "0 characters"}},
		{"short hex", entry("{id: a, sha256: " + d[:62] + ", scopes: [predict]}"), []string{"sha256 must be", "62 characters"}},
		{"long hex", entry("{id: a, sha256: " + d + "00, scopes: [predict]}"), []string{"sha256 must be", "66 characters"}},
		{"not hex", entry("{id: a, sha256: " + strings.Repeat("g", 64) + ", scopes: [predict]}"), []string{"sha256 must be"}},
		{"the secret instead of its digest", entry("{id: a, sha256: " + secretA + ", scopes: [predict]}"), []string{"sha256 must be", "looks like a key or a secret"}},
		{"the key instead of its digest", entry("{id: a, sha256: " + keyA + ", scopes: [predict]}"), []string{"sha256 must be", "looks like a key or a secret"}},
		{"duplicate digest", "keys:\n  - {id: a, sha256: " + d + ", scopes: [predict]}\n  - {id: b, sha256: " + strings.ToUpper(d) + ", scopes: [predict]}\n",
			[]string{`keys[1] ("b"): same sha256 as keys[0]`}},
		{"no scopes", entry("{id: a, sha256: " + d + "}"), []string{`keys[0] ("a"): scopes is empty`}},
		{"empty scopes", entry("{id: a, sha256: " + d + ", scopes: []}"), []string{"scopes is empty"}},
		{"unknown scope", entry("{id: a, sha256: " + d + ", scopes: [predict, admin]}"), []string{`unknown scope "admin"`}},
		{"scope twice", entry("{id: a, sha256: " + d + ", scopes: [predict, predict]}"), []string{`scope "predict" listed twice`}},
		{"negative rate", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: -1}"), []string{"rate -1: want images per second"}},
		{"NaN rate", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: .nan}"), []string{"rate NaN"}},
		{"infinite rate", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: .inf}"), []string{"rate +Inf"}},
		{"rate too high", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: 2e6}"), []string{"rate 2e+06"}},
		{"negative burst", entry("{id: a, sha256: " + d + ", scopes: [predict], rate: 1, burst: -1}"), []string{"burst -1: want at least 1"}},
		{"versions scope", entry("{id: a, sha256: " + d + ", scopes: [predict, versions]}"), nil},
		{"versions without predict", entry("{id: a, sha256: " + d + ", scopes: [metadata, versions]}"), []string{"scope versions only chooses", "add predict too"}},
		{"concurrency", entry("{id: a, sha256: " + d + ", scopes: [predict], max_concurrent_images: 16}"), nil},
		{"negative concurrency", entry("{id: a, sha256: " + d + ", scopes: [predict], max_concurrent_images: -1}"), []string{"max_concurrent_images -1: want images in [0, 1048576]"}},
		{"concurrency too high", entry("{id: a, sha256: " + d + ", scopes: [predict], max_concurrent_images: 2000000}"), []string{"max_concurrent_images 2000000"}},
		{"misspelt concurrency", entry("{id: a, sha256: " + d + ", scopes: [predict], concurrency: 2}"), []string{"field concurrency not found"}},
		{"every problem listed", "keys:\n  - {id: a.b, sha256: x, scopes: []}\n  - {id: c, sha256: " + d + ", scopes: [root], rate: -2}\n",
			[]string{"keys[0]: id has a '.'", "keys[0]: sha256 must be", "keys[0]: scopes is empty", `keys[1] ("c"): unknown scope "root"`, `keys[1] ("c"): rate -2`}},
		{"too many keys", "keys:\n" + strings.Repeat("  - {}\n", MaxKeys+1), []string{"lists 10001 keys; the limit is 10000"}},
		{"too large", "keys: []\n" + strings.Repeat("#", MaxFileSize), []string{"the limit is 4194304"}},
	} {
		k, err := Parse([]byte(tc.file))
		if len(tc.want) == 0 {
			if err != nil || k == nil {
				t.Errorf("%s: %v; want it accepted", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted; want an error about %q", tc.name, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q; want it to say %q", tc.name, err, w)
			}
		}
		if lines := strings.Count(err.Error(), "\n"); tc.name == "every problem listed" && lines != len(tc.want) {
			t.Errorf("%s: %d problems listed, want %d: %v", tc.name, lines, len(tc.want), err)
		}
		if strings.Contains(err.Error(), secretA) {
			t.Errorf("%s: the error shows a secret: %v", tc.name, err)
		}
	}
}

// Defaults are filled in and the digest normalized.
func TestParseDefaults(t *testing.T) {
	k := mustParse(t, []byte("keys:\n"+
		"  - {id: a, sha256: "+strings.ToUpper(digestHex(secretA))+", scopes: [predict], rate: 2.5}\n"+
		"  - {id: b, sha256: "+digestHex(secretB)+", scopes: [predict], rate: 0.1}\n"+
		"  - {id: c, sha256: "+digestHex(secretC)+", scopes: [predict], rate: 20, burst: 40}\n"))
	for _, tc := range []struct {
		id    string
		rate  float64
		burst int
	}{{"a", 2.5, 3}, {"b", 0.1, 1}, {"c", 20, 40}} {
		got, ok := k.Key(tc.id)
		if !ok || got.Rate != tc.rate || got.Burst != tc.burst || got.SHA256 != strings.ToLower(got.SHA256) {
			t.Errorf("key %s: %+v, %v; want rate %v burst %d", tc.id, got, ok, tc.rate, tc.burst)
		}
	}
	if _, ok := k.Key("nope"); ok || k.Len() != 3 {
		t.Errorf("Len %d, Key(nope) found %v", k.Len(), ok)
	}
}

func TestParseScopes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Scope
		err  string
	}{
		{"predict", []Scope{Predict}, ""},
		{"predict, metadata", []Scope{Predict, Metadata}, ""},
		{"predict,versions", []Scope{Predict, Versions}, ""},
		{"metadata,predict", []Scope{Metadata, Predict}, ""},
		{"", nil, "unknown scope"},
		{"predict,", nil, "unknown scope"},
		{"admin", nil, "want predict, metadata or versions"},
		{"predict,predict", nil, "twice"},
	} {
		got, err := ParseScopes(tc.in)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseScopes(%q) = %v, %v; want %v, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// An entry made by Entry reads back as it was.
func TestEntry(t *testing.T) {
	keys := append(testKeys[:len(testKeys):len(testKeys)], Key{ID: "team-d", SHA256: digestHex(secretD),
		Scopes: []Scope{Predict, Versions}, Rate: 0.5, Burst: 8, MaxConcurrentImages: 12})
	k := mustParse(t, keysFile(keys...))
	for _, want := range keys {
		got, ok := k.Key(want.ID)
		if !ok || got.SHA256 != want.SHA256 || fmt.Sprint(got.Scopes) != fmt.Sprint(want.Scopes) || got.Rate != want.Rate || got.Burst != want.Burst ||
			got.MaxConcurrentImages != want.MaxConcurrentImages {
			t.Errorf("%s: read back as %+v", want.ID, got)
		}
	}
}

func TestGenerateKey(t *testing.T) {
	key, sum, err := GenerateKey("team-a")
	if err != nil {
		t.Fatal(err)
	}
	id, secret, ok := strings.Cut(key, ".")
	raw, decErr := base64.RawURLEncoding.DecodeString(secret)
	if !ok || id != "team-a" || len(secret) != 43 || decErr != nil || len(raw) != 32 || sum != digestHex(secret) {
		t.Errorf("GenerateKey = %q, %q; want team-a.<43 base64url characters of 32 bytes> and its secret's sha256", key, sum)
	}
	other, _, _ := GenerateKey("team-a")
	if other == key {
		t.Error("two keys are the same")
	}
	for _, bad := range []string{"", "a.b", strings.Repeat("x", 65), "a b", "ü"} {
		if k, _, err := GenerateKey(bad); err == nil {
			t.Errorf("GenerateKey(%q) = %q; want an error", bad, k)
		}
	}
}

func newTest(t testing.TB, keys ...Key) (*Authenticator, *metrics.Set) {
	t.Helper()
	set := metrics.NewSet()
	return New(mustParse(t, keysFile(keys...)), [32]byte{}, Config{Metrics: set}), set
}

func TestCheck(t *testing.T) {
	a, set := newTest(t, testKeys...)
	long := strings.Repeat("x", 64)
	for _, tc := range []struct {
		name          string
		authorization string
		apiKey        string
		scope         Scope
		status        int
		reason        string
		keyID         string
	}{
		{"Bearer", "Bearer " + keyA, "", Predict, 0, "", "team-a"},
		{"bearer in lower case", "bearer " + keyA, "", Predict, 0, "", "team-a"},
		{"BEARER in upper case", "BEARER " + keyA, "", Metadata, 0, "", "team-a"},
		{"BeArEr", "BeArEr " + keyA, "", Metadata, 0, "", "team-a"},
		{"X-API-Key", "", keyA, Predict, 0, "", "team-a"},
		{"Authorization wins", "Bearer " + keyA, "garbage", Predict, 0, "", "team-a"},
		{"Authorization wins when bad", "Basic dXNlcjpwYXNz", keyA, Predict, 401, ReasonMalformed, ""},
		{"Authorization wins when wrong", "Bearer team-a." + secretB, keyA, Predict, 401, ReasonSecret, ""},
		{"nothing", "", "", Predict, 401, ReasonMissing, ""},
		{"Basic", "Basic dXNlcjpwYXNz", "", Predict, 401, ReasonMalformed, ""},
		{"scheme only", "Bearer", "", Predict, 401, ReasonMalformed, ""},
		{"scheme and a space", "Bearer ", "", Predict, 401, ReasonMalformed, ""},
		{"two spaces", "Bearer  " + keyA, "", Predict, 401, ReasonMalformed, ""},
		{"a tab", "Bearer\t" + keyA, "", Predict, 401, ReasonMalformed, ""},
		{"no scheme", keyA, "", Predict, 401, ReasonMalformed, ""},
		{"Bearer in X-API-Key", "", "Bearer " + keyA, Predict, 401, ReasonMalformed, ""},
		{"trailing space", "", keyA + " ", Predict, 401, ReasonMalformed, ""},
		{"no dot", "", "team-a" + secretA, Predict, 401, ReasonMalformed, ""},
		{"no id", "", "." + secretA, Predict, 401, ReasonMalformed, ""},
		{"id too long", "", long + "x." + secretA, Predict, 401, ReasonMalformed, ""},
		{"id of 64 characters", "", long + "." + secretA, Predict, 401, ReasonUnknown, ""},
		{"secret too short", "", "team-a." + secretA[:15], Predict, 401, ReasonMalformed, ""},
		{"secret too long", "", "team-a." + strings.Repeat("A", 129), Predict, 401, ReasonMalformed, ""},
		{"padding", "", keyA + "=", Predict, 401, ReasonMalformed, ""},
		{"standard base64", "", "team-a." + strings.ReplaceAll(secretA, "_", "/") + "+", Predict, 401, ReasonMalformed, ""},
		{"two dots", "", keyA + ".x", Predict, 401, ReasonMalformed, ""},
		{"NUL", "", keyA[:10] + "\x00" + keyA[11:], Predict, 401, ReasonMalformed, ""},
		{"unknown id", "", "team-z." + secretA, Predict, 401, ReasonUnknown, ""},
		{"another key's secret", "", "team-a." + secretB, Predict, 401, ReasonSecret, ""},
		{"wrong secret", "Bearer team-b." + secretA, "", Metadata, 401, ReasonSecret, ""},
		{"id in another case", "", "TEAM-A." + secretA, Predict, 401, ReasonUnknown, ""},
		{"missing scope", "", keyB, Predict, 403, ReasonScope, "team-b"},
		{"its scope", "", keyB, Metadata, 0, "", "team-b"},
		{"unknown scope", "", keyA, Scope("admin"), 403, ReasonScope, "team-a"},
		{"limited, first", "", keyC, Predict, 0, "", "team-c"},
		{"limited, burst", "", keyC, Predict, 0, "", "team-c"},
		{"limited, over", "", keyC, Predict, 429, ReasonRate, "team-c"},
		{"limited, wrong scope first", "", keyC, Metadata, 403, ReasonScope, "team-c"},
	} {
		d := a.Check([]byte(tc.authorization), []byte(tc.apiKey), tc.scope, true)
		if d.Status != tc.status || d.Reason != tc.reason || d.KeyID != tc.keyID || d.Allowed() != (tc.status == 0) ||
			(d.Status == 429) != (d.RetryAfter > 0) {
			t.Errorf("%s: %+v; want status %d, reason %q, key %q", tc.name, d, tc.status, tc.reason, tc.keyID)
		}
	}
	for name, want := range map[string]float64{
		`auth_requests_total{key="team-a"}`:                6,
		`auth_requests_total{key="team-b"}`:                1,
		`auth_requests_total{key="team-c"}`:                2,
		`auth_rejected_total{reason="missing"}`:            1,
		`auth_rejected_total{reason="malformed"}`:          18,
		`auth_rejected_total{reason="unknown_key"}`:        3,
		`auth_rejected_total{reason="bad_secret"}`:         3,
		`auth_rejected_total{reason="scope",key="team-b"}`: 1,
		`auth_rejected_total{reason="scope",key="team-a"}`: 1,
		`auth_rejected_total{reason="scope",key="team-c"}`: 1,
		`auth_rejected_total{reason="rate",key="team-c"}`:  1,
		`auth_rejected_total{reason="rate",key="team-a"}`:  0,
		`auth_keys`:                            3,
		`auth_reloads_total{result="applied"}`: 0,
	} {
		if got := metricValue(t, set, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	m := testenv.SetMetrics(t, set)
	for _, name := range []string{ // no series for a key not in the file
		`auth_requests_total{key="team-z"}`,
		`auth_rejected_total{reason="scope",key="team-z"}`,
		`auth_rejected_total{reason="unknown_key",key="z"}`,
	} {
		if got, ok := m.Lookup(name); ok {
			t.Errorf("%s = %v; want no such series", name, got)
		}
	}
}

// Before a body is sent (take false) only the key and the scope are
// checked: no token is taken, and the request is not yet counted.
func TestCheckWithoutTake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, set := newTest(t, Key{ID: "k", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, Rate: 1, Burst: 1})
		key := []byte("k." + secretA)
		for range 5 {
			if d := a.Check(nil, key, Predict, false); !d.Allowed() || d.KeyID != "k" {
				t.Fatalf("without take: %+v", d)
			}
		}
		if d := a.Check(nil, key, Metadata, false); d.Status != 403 {
			t.Errorf("without take, wrong scope: %+v", d)
		}
		if d := a.Check(nil, []byte("k."+secretB), Predict, false); d.Status != 401 {
			t.Errorf("without take, wrong secret: %+v", d)
		}
		if d := a.Check(nil, key, Predict, true); !d.Allowed() {
			t.Errorf("the first request taking a token: %+v", d)
		}
		if d := a.Check(nil, key, Predict, true); d.Status != 429 || d.RetryAfter != time.Second {
			t.Errorf("the second: %+v; want 429 retry after 1s", d)
		}
		// Out of tokens: refused before its body too, and still nothing
		// taken: the token that refills after 1 s is there for the body.
		if d := a.Check(nil, key, Predict, false); d.Status != 429 || d.RetryAfter != time.Second {
			t.Errorf("without take, out of tokens: %+v; want 429 retry after 1s", d)
		}
		time.Sleep(time.Second)
		if d := a.Check(nil, key, Predict, false); !d.Allowed() {
			t.Errorf("without take, a token refilled: %+v", d)
		}
		if d := a.Check(nil, key, Predict, true); !d.Allowed() {
			t.Errorf("taking the refilled token: %+v", d)
		}
		if got := metricValue(t, set, `auth_requests_total{key="k"}`); got != 2 {
			t.Errorf("auth_requests_total = %v, want 2 (only the requests that took a token)", got)
		}
	})
}

// The secret's sha256 is compared with the stored one: two 32-byte
// digests, whatever the length of the secret presented, so a secret one
// character longer or shorter, or differing in its last character, is a
// wrong secret, compared like any other.
func TestDigestComparison(t *testing.T) {
	var _ func(a, b *[32]byte) bool = digestsEqual // fixed-length digests, by type
	a, _ := newTest(t, testKeys[0])
	last := secretA[len(secretA)-1]
	other := byte('A')
	if last == other {
		other = 'B'
	}
	for _, tc := range []struct {
		name   string
		secret string
		reason string
	}{
		{"the secret", secretA, ""},
		{"one more character", secretA + "A", ReasonSecret},
		{"one less character", secretA[:len(secretA)-1], ReasonSecret},
		{"last character differs", secretA[:len(secretA)-1] + string(other), ReasonSecret},
		{"first character differs", "_" + secretA[1:], ReasonSecret},
		{"twice the secret", secretA + secretA, ReasonSecret},
		{"the shortest", secretA[:minSecret], ReasonSecret},
		{"the longest", strings.Repeat(secretA, 3)[:maxSecret], ReasonSecret},
		{"the digest itself", digestHex(secretA)[:maxSecret/2], ReasonSecret},
	} {
		d := a.Check(nil, []byte("team-a."+tc.secret), Predict, true)
		if d.Reason != tc.reason {
			t.Errorf("%s (%d characters): %+v; want reason %q", tc.name, len(tc.secret), d, tc.reason)
		}
		got := sha256.Sum256([]byte(tc.secret))
		stored := testKeys[0].SHA256
		var want [32]byte
		hex.Decode(want[:], []byte(stored))
		if digestsEqual(&got, &want) != (tc.reason == "") {
			t.Errorf("%s: digestsEqual disagrees with Check", tc.name)
		}
	}
	// An unknown id is compared with a digest no secret has.
	if digestsEqual(&dummyDigest, new([32]byte)) || digestsEqual(new([32]byte), &dummyDigest) {
		t.Error("the dummy digest equals zero")
	}
}

// A key of rate 20 and burst 5, tried every 5 ms for 10 s, gets 20 a
// second plus its burst: 205, within 10%.
func TestRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, set := newTest(t, Key{ID: "k", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, Rate: 20, Burst: 5})
		key := []byte("Bearer k." + secretA)
		start := time.Now()
		allowed, refused := 0, 0
		for time.Since(start) < 10*time.Second {
			switch d := a.Check(key, nil, Predict, true); d.Status {
			case 0:
				allowed++
			case 429:
				refused++
				if d.RetryAfter <= 0 || d.RetryAfter > 50*time.Millisecond || d.KeyID != "k" {
					t.Fatalf("refused with %+v; want Retry-After in (0, 50ms]", d)
				}
			default:
				t.Fatalf("%+v", d)
			}
			time.Sleep(5 * time.Millisecond)
		}
		const want = 20*10 + 5
		t.Logf("%d allowed, %d refused in 10 s", allowed, refused)
		if math.Abs(float64(allowed-want)) > want/10 {
			t.Errorf("%d allowed in 10 s; want %d ±10%%", allowed, want)
		}
		if allowed+refused != 2000 || metricValue(t, set, `auth_rejected_total{reason="rate",key="k"}`) != float64(refused) {
			t.Errorf("%d allowed, %d refused (%v counted)", allowed, refused, metricValue(t, set, `auth_rejected_total{reason="rate",key="k"}`))
		}
		// Retry-After is honest: waiting it gets a token.
		for a.Check(key, nil, Predict, true).Allowed() {
		}
		d := a.Check(key, nil, Predict, true)
		time.Sleep(d.RetryAfter)
		if d2 := a.Check(key, nil, Predict, true); !d2.Allowed() {
			t.Errorf("after waiting Retry-After %v: %+v", d.RetryAfter, d2)
		}
	})
}

// Limiters unused for 10 minutes, and full again, are dropped by a sweep
// during Check, at most once a minute; unlimited keys never get one.
func TestLimiterEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, _ := newTest(t,
			Key{ID: "a", SHA256: digestHex(secretA), Scopes: []Scope{Predict}, Rate: 10},
			Key{ID: "b", SHA256: digestHex(secretB), Scopes: []Scope{Predict}, Rate: 10},
			Key{ID: "slow", SHA256: digestHex(secretC), Scopes: []Scope{Predict}, Rate: 0.001, Burst: 2},
			Key{ID: "free", SHA256: digestHex(testSecret("free")), Scopes: []Scope{Predict}})
		check := func(id, secret string) {
			t.Helper()
			if d := a.Check(nil, []byte(id+"."+secret), Predict, true); !d.Allowed() {
				t.Fatalf("%s: %+v", id, d)
			}
		}
		check("a", secretA)
		check("slow", secretC)
		check("slow", secretC) // empty: refills in 2000 s
		check("free", testSecret("free"))
		if n := a.limiters(); n != 2 {
			t.Fatalf("%d limiters, want 2 (none for the unlimited key)", n)
		}
		time.Sleep(9 * time.Minute)
		check("b", secretB)
		time.Sleep(2 * time.Minute)
		check("b", secretB) // a is idle 11 min: dropped; b 2 min; slow not full yet
		if n := a.limiters(); n != 2 {
			t.Errorf("after 11 minutes: %d limiters, want 2 (b, and slow, not full yet)", n)
		}
		time.Sleep(30 * time.Second)
		check("a", secretA)
		time.Sleep(20 * time.Minute) // a is idle 20 min, but the last sweep was 30 s ago
		if n := a.limiters(); n != 3 {
			t.Errorf("%d limiters, want 3", n)
		}
		time.Sleep(time.Hour)
		check("free", testSecret("free")) // no sweep: unlimited keys take no lock
		if n := a.limiters(); n != 3 {
			t.Errorf("after an unlimited key's request: %d limiters, want 3", n)
		}
		check("b", secretB) // every limiter idle and full: dropped, and b's made anew
		if n := a.limiters(); n != 1 {
			t.Errorf("after an hour more: %d limiters, want 1 (b's new one)", n)
		}
	})
}

var generation atomic.Int64

// writeFile replaces path's content atomically, as a Secret volume does
// (its files are links into a directory whose link is swapped).
func writeFile(t *testing.T, dir string, data []byte) {
	t.Helper()
	gen := filepath.Join(dir, fmt.Sprintf("..gen%d", generation.Add(1)))
	if err := os.Mkdir(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "keys.yaml"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "keys.yaml")
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(filepath.Join("..data", "keys.yaml"), link); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(dir, "keys.yaml")
		writeFile(t, dir, keysFile(testKeys...))
		keys, sum, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		set := metrics.NewSet()
		var logs testenv.SyncBuffer
		a := New(keys, sum, Config{File: path, Poll: time.Second, Metrics: set, Log: slog.New(slog.NewTextHandler(&logs, nil))})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		defer func() { cancel(); <-done }()
		wait := func() { time.Sleep(1500 * time.Millisecond); synctest.Wait() }
		check := func(what, key string, scope Scope, status int) {
			t.Helper()
			if d := a.Check(nil, []byte(key), scope, true); d.Status != status {
				t.Errorf("%s: %+v; want status %d", what, d, status)
			}
		}
		check("before", keyC, Predict, 0)
		check("before", keyC, Predict, 0)
		check("before, over the burst", keyC, Predict, 429)

		// team-a's scopes change, team-b goes, team-c's limit rises, team-d comes.
		secretD := testSecret("d")
		next := []Key{
			{ID: "team-a", SHA256: digestHex(secretA), Scopes: []Scope{Metadata}},
			{ID: "team-c", SHA256: digestHex(secretC), Scopes: []Scope{Predict}, Rate: 1, Burst: 5},
			{ID: "team-d", SHA256: digestHex(secretD), Scopes: []Scope{Predict}},
		}
		writeFile(t, dir, keysFile(next...))
		wait()
		if got := metricValue(t, set, `auth_reloads_total{result="applied"}`); got != 1 || a.Keys().Len() != 3 {
			t.Fatalf("after a new file: %v applied, %d keys", got, a.Keys().Len())
		}
		check("a lost predict", keyA, Predict, 403)
		check("a keeps metadata", keyA, Metadata, 0)
		check("b removed", keyB, Metadata, 401)
		check("d added", "team-d."+secretD, Predict, 0)
		time.Sleep(10 * time.Second) // the limiter follows the new burst: 5 tokens, not 2
		for i := range 5 {
			check(fmt.Sprintf("c with the new burst, %d", i), keyC, Predict, 0)
		}
		check("c over the new burst", keyC, Predict, 429)
		if got, ok := testenv.SetMetrics(t, set).Lookup(`auth_requests_total{key="team-b"}`); ok {
			t.Errorf("the removed key's series is still there: %v", got)
		}
		if got := metricValue(t, set, "auth_keys"); got != 3 {
			t.Errorf("auth_keys = %v", got)
		}

		// A bad file, then an unreadable one: both rejected, the keys stay.
		writeFile(t, dir, []byte("keys:\n  - {id: team-a, sha256: nothex, scopes: [predict]}\n"))
		wait()
		writeFile(t, dir, []byte("keys:\n  - {id: team-a, sha256: nothex, scopes: [predict]}\n")) // same content: not logged again
		wait()
		os.Remove(path)
		wait()
		wait()
		if got := metricValue(t, set, `auth_reloads_total{result="rejected"}`); got != 2 {
			t.Errorf("%v rejected; want 2 (the bad file, the missing one: each once)", got)
		}
		check("after the bad files, a", keyA, Metadata, 0)
		check("after the bad files, d", "team-d."+secretD, Predict, 0)
		if !strings.Contains(logs.String(), "sha256 must be the 64 hex digits") || !strings.Contains(logs.String(), "no such file") {
			t.Errorf("the rejections are not logged: %s", logs.String())
		}

		// Restored: applied again.
		os.Symlink(filepath.Join("..data", "keys.yaml"), path)
		writeFile(t, dir, keysFile(testKeys...))
		wait()
		if got := metricValue(t, set, `auth_reloads_total{result="applied"}`); got != 2 {
			t.Errorf("%v applied, want 2", got)
		}
		check("b is back", keyB, Metadata, 0)
		for _, s := range []string{secretA, secretB, secretC, secretD} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("a secret is logged: %s", logs.String())
			}
		}
	})
}

// A key rotated (its digest replaced) while requests check it: each
// checker sees the old secret pass until the reload, and 401 after; once
// the reload is applied, the old secret gets 401 and the new one passes.
// Run with -race.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	writeFile(t, dir, keysFile(testKeys...))
	keys, sum, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a := New(keys, sum, Config{File: path, Poll: time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	newSecret := testSecret("a, rotated")
	oldKey, newKey := []byte("Bearer "+keyA), []byte("Bearer team-a."+newSecret)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var allowed, refused [4]atomic.Int64 // per checker, the old key's
	for g := range refused {
		wg.Go(func() {
			rejected := false
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := a.Check(oldKey, nil, Predict, true)
				switch {
				case d.Allowed() && !rejected:
					allowed[g].Add(1)
				case d.Status == 401 && d.Reason == ReasonSecret:
					rejected = true
					refused[g].Add(1)
				default:
					t.Errorf("checker %d: %+v after %d refusals", g, d, refused[g].Load())
					return
				}
			}
		})
	}
	time.Sleep(5 * time.Millisecond) // let the checkers start (not needed for correctness)
	rotated := append([]Key(nil), testKeys...)
	rotated[0].SHA256 = digestHex(newSecret)
	writeFile(t, dir, keysFile(rotated...))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if k, _ := a.Keys().Key("team-a"); k.SHA256 == digestHex(newSecret) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rotated file was not applied within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	if d := a.Check(oldKey, nil, Predict, true); d.Status != 401 {
		t.Errorf("the old secret after the reload: %+v", d)
	}
	if d := a.Check(newKey, nil, Predict, true); !d.Allowed() || d.KeyID != "team-a" {
		t.Errorf("the new secret after the reload: %+v", d)
	}
	// Every checker goes on until it has seen the reload: its own 401.
	for g := range refused {
		for refused[g].Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	var results [][2]int64
	for g := range refused {
		results = append(results, [2]int64{allowed[g].Load(), refused[g].Load()})
		if refused[g].Load() == 0 {
			t.Errorf("checker %d never got 401 for the old secret (%d allowed): it did not see the reload", g, allowed[g].Load())
		}
	}
	t.Logf("old key per checker (allowed, refused): %v", results)
}

// ExampleGenerateKey makes a key, the entry for the keys file, and checks
// requests against it.
func ExampleGenerateKey() {
	key, sum, err := GenerateKey("team-a")
	if err != nil {
		panic(err)
	}
	file := "keys:\n" + Key{ID: "team-a", SHA256: sum, Scopes: []Scope{Predict}, Rate: 20}.Entry()
	keys, err := Parse([]byte(file))
	if err != nil {
		panic(err)
	}
	a := New(keys, sha256.Sum256([]byte(file)), Config{})
	fmt.Println(a.Check([]byte("Bearer "+key), nil, Predict, true))
	fmt.Println(a.Check(nil, []byte(key), Predict, true))     // X-API-Key
	fmt.Println(a.Check(nil, []byte(key), Metadata, true))    // not its scope
	fmt.Println(a.Check(nil, []byte(key+"x"), Predict, true)) // not its secret
	fmt.Println(a.Check(nil, nil, Predict, true))
	// Output:
	// {team-a 0   0s 0}
	// {team-a 0   0s 0}
	// {team-a 403 scope metadata 0s 0}
	// { 401 bad_secret  0s 0}
	// { 401 missing  0s 0}
}
