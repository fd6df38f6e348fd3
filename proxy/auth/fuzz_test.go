package auth

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzCheck sends any Authorization and X-API-Key bytes to CheckAll, the
// part of this package a client reaches, for a route's scope alone or with
// versions (a request choosing its model version): nothing panics, every
// decision is one of the documented ones, and a request is allowed only
// with a right key holding every scope asked for, by an independent reading
// of the two headers.
func FuzzCheck(f *testing.F) {
	for _, s := range [][2]string{
		{"Bearer " + keyA, ""},
		{"bearer " + keyB, ""},
		{"BEARER " + keyC, ""},
		{"", keyA},
		{"", keyB},
		{"Bearer " + keyA, keyB},
		{"Basic dXNlcjpwYXNz", keyA},
		{"Bearer", ""},
		{"Bearer ", ""},
		{"Bearer  " + keyA, ""},
		{"Bearer\t" + keyA, ""},
		{"Bearer team-a." + secretB, ""},
		{"", "team-a." + secretA + "="},
		{"", "team-a." + secretA[:42]},
		{"", "team-a." + secretA + "A"},
		{"", "team-z." + secretA},
		{"", "." + secretA},
		{"", "team-a."},
		{"", "team-a"},
		{"", strings.Repeat("a", 64) + "." + secretA},
		{"", "team-a." + strings.Repeat("A", 129)},
		{"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", ""}, // a JWT
		{"Bearer team-a.\x00" + secretA, ""},
		{"", "tëam-a." + secretA},
	} {
		f.Add([]byte(s[0]), []byte(s[1]), true, false)
	}
	f.Add([]byte("Bearer "+keyD), []byte(nil), true, true)
	f.Add([]byte(nil), []byte(keyA), true, true)
	a, _ := newTest(f, append(testKeys[:len(testKeys):len(testKeys)], Key{ID: "team-d", SHA256: digestHex(secretD), Scopes: []Scope{Predict, Versions}})...)
	scopes := map[string]scopeSet{"team-a": 3, "team-b": 2, "team-c": 1, "team-d": 5}
	valid := map[string]bool{keyA: true, keyB: true, keyC: true, keyD: true}
	f.Fuzz(func(t *testing.T, authorization, apiKey []byte, predict, version bool) {
		need := []Scope{Metadata}
		if predict {
			need[0] = Predict
		}
		if version {
			need = append(need, Versions)
		}
		var needSet scopeSet
		for _, s := range need {
			needSet |= s.bit()
		}
		d := a.CheckAll(authorization, apiKey, need, true)

		// The key presented, read independently.
		presented, wellFormed := string(apiKey), true
		if len(authorization) > 0 {
			scheme, key, ok := bytes.Cut(authorization, []byte(" "))
			presented, wellFormed = string(key), ok && strings.EqualFold(string(scheme), "bearer")
		}
		right := wellFormed && valid[presented]
		id, _, _ := strings.Cut(presented, ".")
		switch d.Status {
		case 0:
			if !right || scopes[id]&needSet != needSet || d.KeyID != id || d.Reason != "" {
				t.Fatalf("Authorization %q, X-API-Key %q allowed as %+v", authorization, apiKey, d)
			}
		case 401:
			if right || d.KeyID != "" {
				t.Fatalf("Authorization %q, X-API-Key %q: %+v", authorization, apiKey, d)
			}
			switch d.Reason {
			case ReasonMissing, ReasonMalformed, ReasonUnknown, ReasonSecret:
			default:
				t.Fatalf("401 for %q", d.Reason)
			}
		case 403:
			if !right || scopes[id]&needSet == needSet || d.KeyID != id || d.Reason != ReasonScope ||
				scopes[id]&d.Scope.bit() != 0 || needSet&d.Scope.bit() == 0 {
				t.Fatalf("Authorization %q, X-API-Key %q: %+v", authorization, apiKey, d)
			}
		case 429:
			if !right || id != "team-c" || d.RetryAfter <= 0 || d.Reason != ReasonRate {
				t.Fatalf("Authorization %q, X-API-Key %q: %+v", authorization, apiKey, d)
			}
		default:
			t.Fatalf("status %d: %+v", d.Status, d)
		}
	})
}
