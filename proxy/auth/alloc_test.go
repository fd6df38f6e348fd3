package auth

import (
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/yamlguard"
)

// TestParseAllocationBound: no keys file makes Parse allocate more than
// parseBound, whatever it holds.
func TestParseAllocationBound(t *testing.T) {
	for _, tc := range []struct {
		name string
		gen  func(size int) []byte
	}{
		{"valid keys", func(n int) []byte { return validKeys(n, MaxKeys) }},
		{"many empty keys", func(n int) []byte { return testenv.FillTo("keys:\n", "  - {}\n", "", n) }},
		{"flow list of keys", func(n int) []byte { return testenv.FillTo("keys: [", "{},", "{}]", n) }},
		{"long scopes list", func(n int) []byte { return testenv.FillTo("keys:\n  - id: a\n    scopes: [", "a,", "a]\n", n) }},
		{"unknown field", func(n int) []byte { return testenv.FillTo("x: [", "1,", "1]\nkeys: []\n", n) }},
		{"repeated key in a mapping", func(n int) []byte { return testenv.FillTo("keys:\n  - id: a\n", "    id: a\n", "", n) }},
		{"distinct unknown keys", func(n int) []byte {
			var b strings.Builder
			b.WriteString("keys:\n  - id: a\n")
			for i := 0; b.Len() < n; i++ {
				b.WriteString("    k" + strconv.Itoa(i) + ": 1\n")
			}
			return []byte(b.String())
		}},
		{"deep flow nesting", func(n int) []byte {
			d := min(n/2, 9000)
			return []byte("x: " + strings.Repeat("[", d) + strings.Repeat("]", d) + "\n")
		}},
		{"long string", func(n int) []byte { return testenv.FillTo("keys:\n  - id: \"", "a", "\"\n", n) }},
		{"aliased scopes", func(n int) []byte {
			return testenv.FillTo("keys:\n  - {id: a, scopes: &s ["+strings.Repeat("predict,", 1000)+"predict]}\n", "  - {scopes: *s}\n", "", n)
		}},
		{"aliased keys", func(n int) []byte {
			return testenv.FillTo("keys:\n  - &k {id: a, scopes: [predict]}\n", "  - *k\n", "", n)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The largest size whose nodes the text check lets through,
			// to reach what lies behind it.
			sizes := []int{64 << 10, MaxFileSize}
			if !testing.Short() && !testenv.RaceEnabled() { // a second or more each, many with the race detector
				sizes = append(sizes, sort.Search(MaxFileSize, func(n int) bool { return yamlguard.Nodes(tc.gen(n)) > maxYAMLNodes })-1)
			}
			for _, size := range sizes {
				data := tc.gen(size)
				var err error
				got := testenv.AllocatedBy(func() { _, err = Parse(data) })
				t.Logf("%8d bytes: %10d allocated (%.1fx), %.200v", len(data), got, float64(got)/float64(len(data)), err)
				if got > parseBound {
					t.Errorf("%d bytes: allocated %d (%.1fx), over %d", len(data), got, float64(got)/float64(len(data)), parseBound)
				}
			}
		})
	}
}

// parseBound is the bound of Parse (docs/memory.md): yaml.v3 allocates
// about 250 bytes a node on each of two passes, at most maxYAMLNodes; the
// largest valid file (validKeys) takes about 110 MiB.
const parseBound = 256 << 20

// validKeys is a valid keys file of at most n keys and about size bytes,
// every field set, with comments: the most nodes a key has.
func validKeys(size, n int) []byte {
	var b strings.Builder
	b.WriteString("keys:\n")
	for i := 0; i < n && b.Len() < size-300; i++ {
		b.WriteString("  - id: team-a-prod-" + strconv.Itoa(i) + "   # owner: team a, eu-west-1\n    sha256: " + digestHex(strconv.Itoa(i)) +
			"\n    scopes: [predict, metadata, versions]\n    rate: 20\n    burst: 40\n    max_concurrent_images: 32\n")
	}
	return []byte(b.String())
}

// TestCheckYAML: the YAML checks refuse what they should and nothing a
// valid file holds, even the largest.
func TestCheckYAML(t *testing.T) {
	if _, err := Parse(validKeys(MaxFileSize, MaxKeys)); err != nil {
		t.Errorf("the largest valid file: %v", err)
	}
	anchors := "keys:\n  - {id: a, sha256: " + digestHex("a") + ", scopes: &s [predict, metadata]}\n  - {id: b, sha256: " + digestHex("b") + ", scopes: *s}\n"
	if _, err := Parse([]byte(anchors)); err != nil {
		t.Errorf("anchors: %v", err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"key twice", "keys: []\nkeys: []\n", "line 2: a key already defined at line 1 (not shown)"},
		{"nested too deep", "x: " + strings.Repeat("[", 70) + strings.Repeat("]", 70) + "\n", "nested deeper than 64"},
		{"big map", "keys:\n  - {" + strings.Repeat("a: 1, ", 65) + "}\n", "a map of more than 64 keys"},
		{"laughs", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n" +
			"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
			"with aliases expanded"},
	} {
		if _, err := Parse([]byte(tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}
