package routing

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/proxy/yamlguard"
)

// laughs is a "billion laughs" document: each level an anchored list of
// ten aliases of the one before.
func laughs(levels int) []byte {
	var b strings.Builder
	b.WriteString("a0: &a0 [lol]\n")
	for i := 1; i <= levels; i++ {
		prev := "*a" + string(rune('0'+i-1))
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [" + strings.Repeat(prev+",", 9) + prev + "]\n")
	}
	b.WriteString("models: [{name: m, versions: [{name: a, socket: /a, weight: 1}]}]\n")
	return []byte(b.String())
}

// TestParseAllocationBound: no routing file makes Parse allocate more than
// parseBoundK times its size plus parseBoundC: 32 MiB at most.
func TestParseAllocationBound(t *testing.T) {
	const version = "{name: a, socket: /a, weight: 1}"
	for _, tc := range []struct {
		name string
		gen  func(size int) []byte
	}{
		{"many models", func(n int) []byte { return testenv.FillTo("models:\n", "  - {name: m, versions: []}\n", "", n) }},
		{"many versions", func(n int) []byte {
			return testenv.FillTo("models:\n  - name: m\n    versions:\n", "      - "+version+"\n", "", n)
		}},
		{"long flow list", func(n int) []byte { return testenv.FillTo("models: [", "{},", "{}]", n) }},
		{"list of scalars in a field", func(n int) []byte {
			return testenv.FillTo("models:\n  - name: m\n    versions: [", "a,", "a]", n)
		}},
		{"unknown field", func(n int) []byte { return testenv.FillTo("x: [", "1,", "1]\nmodels: []\n", n) }},
		{"deep flow nesting", func(n int) []byte {
			d := min(n/2, 9000)
			return []byte("x: " + strings.Repeat("[", d) + strings.Repeat("]", d) + "\n")
		}},
		{"deep block nesting", func(n int) []byte {
			var b strings.Builder
			for i := 0; b.Len() < n; i++ {
				b.WriteString(strings.Repeat(" ", i) + "a:\n")
			}
			return []byte(b.String())
		}},
		{"long string", func(n int) []byte { return testenv.FillTo("models:\n  - name: \"", "m", "\"\n", n) }},
		{"many keys", func(n int) []byte { return testenv.FillTo("models:\n  - name: m\n", "    name: m\n", "", n) }},
		{"many comments", func(n int) []byte { return testenv.FillTo("", "#\n", "models: []\n", n) }},
		{"many documents", func(n int) []byte { return testenv.FillTo("models: []\n", "---\n", "", n) }},
		{"billion laughs", func(n int) []byte { return laughs(9) }},
		{"many aliases", func(n int) []byte { return testenv.FillTo("a: &a {}\nx: [", "*a,", "*a]\nmodels: []\n", n) }},
	} {
		// The largest size whose nodes the text check lets through, to
		// reach what lies behind it.
		under := sort.Search(MaxFileSize, func(n int) bool { return yamlguard.Nodes(tc.gen(n)) > maxYAMLNodes }) - 1
		for _, size := range []int{64 << 10, MaxFileSize, under} {
			data := tc.gen(size)
			var err error
			got := testenv.AllocatedBy(func() { _, err = Parse(data) })
			t.Logf("%-26s %8d bytes: %10d allocated (%.1fx), %.200v", tc.name, len(data), got, float64(got)/float64(len(data)), err)
			if limit := uint64(parseBoundK*len(data) + parseBoundC); got > limit {
				t.Errorf("%s, %d bytes: allocated %d (%.1fx), over %d", tc.name, len(data), got, float64(got)/float64(len(data)), limit)
			}
		}
	}
}

// The bound of Parse (docs/memory.md): yaml.v3 allocates up to 14 bytes a
// byte of comments or long values, and about 550 bytes a node over the two
// passes (checkYAML's, the decoder's), at most maxYAMLNodes of them.
const (
	parseBoundK = 16
	parseBoundC = 16 << 20
)

// TestCheckYAML: the YAML checks refuse what they should and nothing a
// valid file holds, even the largest in the longest style.
func TestCheckYAML(t *testing.T) {
	var big strings.Builder
	big.WriteString("# every model and version the limits allow, in block style\nmodels:\n")
	for m := range MaxModels {
		fmt.Fprintf(&big, "  - name: model-%d # a comment: with, [indicators]\n    sticky:\n      header: X-User-Id\n      salt: \"2026-05\"\n"+
			"    shadow:\n      version: v-1\n      percent: 10\n      max_queue: 4\n    versions:\n", m)
		for v := range MaxVersions {
			fmt.Fprintf(&big, "      - name: v-%d\n        socket: /sockets/model-%d-v-%d.sock\n        variant: fp32\n        weight: 1\n"+
				"        rollback:\n          window: 60s\n          min_requests: 20\n          max_error_rate: 0.05\n          max_p99: 2s\n          count_explicit: false\n", v, m, v)
		}
	}
	if _, err := Parse([]byte(big.String())); err != nil {
		t.Errorf("the largest valid file: %v", err)
	}
	anchors := "models:\n  - name: m\n    versions:\n      - {name: a, socket: /a, weight: 1, rollback: &rb {max_p99: 2s}}\n      - {name: b, socket: /b, weight: 1, rollback: *rb}\n"
	if _, err := Parse([]byte(anchors)); err != nil {
		t.Errorf("anchors: %v", err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"key twice", "models: []\nmodels: []\n", `line 2: key "models" already defined at line 1`},
		{"nested too deep", "x: " + strings.Repeat("[", 70) + strings.Repeat("]", 70) + "\n", "nested deeper than 64"},
		{"laughs", string(laughs(5)), "with aliases expanded"},
		{"too many nodes", "x: [" + strings.Repeat("1,", 9000) + "1]\n", "more than 16384 YAML values"},
	} {
		if _, err := Parse([]byte(tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}
