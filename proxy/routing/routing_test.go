package routing

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

const example = `
models:
  - name: resnet50
    sticky: {header: X-User-Id, salt: "2026-05"}
    shadow: {version: v3, percent: 10}
    versions:
      - {name: v1, socket: /s/v1.sock, variant: fp32, weight: 90}
      - name: v2
        socket: /s/v2.sock
        weight: 10
        rollback: {max_error_rate: 0.05, max_p99: 2s}
      - {name: v3, socket: /s/v3.sock, weight: 0}
`

func TestParse(t *testing.T) {
	f, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	m := f.Default()
	if m.Name != "resnet50" || len(m.Versions) != 3 || m.Versions[0].Variant != "fp32" || m.Sticky.Header != "X-User-Id" {
		t.Errorf("parsed %+v", m)
	}
	if r := m.Versions[1].Rollback; r.Window != time.Minute || r.MinRequests != 20 || r.MaxP99 != 2*time.Second {
		t.Errorf("rollback defaults: %+v", r)
	}
	if m.Shadow.MaxQueue != 4 {
		t.Errorf("shadow max_queue default: %d", m.Shadow.MaxQueue)
	}
	// JSON is YAML.
	j := `{"models":[{"name":"m","versions":[{"name":"a","socket":"/a","weight":1}]}]}`
	if _, err := Parse([]byte(j)); err != nil {
		t.Errorf("JSON: %v", err)
	}

	v := func(extra string) string {
		return "models:\n  - name: m\n    versions:\n      - {name: a, socket: /a, weight: 1}\n" + extra
	}
	for _, tc := range []struct{ file, want string }{
		{"", "empty"},
		{"models: []", "no models"},
		{"models:\n  - name: m\n", "no versions"},
		{"models:\n  - name: m\n    versionz: []\n", "field versionz not found"},
		{"models:\n  - name: 'bad name'\n    versions: [{name: a, socket: /a, weight: 1}]\n", "name must be"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: 0}]\n", "every weight is 0"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: -1}, {name: b, socket: /b, weight: 1}]\n", "finite number >= 0"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: 1}, {name: a, socket: /b, weight: 1}]\n", "listed twice"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: 1}, {name: b, socket: /a, weight: 1}]\n", "already used by m/a"},
		{"models:\n  - name: m\n    versions: [{name: a, weight: 1}]\n", "socket is required"},
		{v("    shadow: {version: zz, percent: 5}\n"), `shadow.version "zz"`},
		{v("    shadow: {version: a, percent: 0}\n"), "shadow.percent"},
		{v("    sticky: {salt: x}\n"), "set header"},
		{v("    sticky: {header: X-A, image: true}\n"), "not both"},
		{v("    sticky: {header: 'X A'}\n"), "not a valid header"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: 1, rollback: {window: 10s}}]\n", "set max_error_rate, max_p99"},
		{"models:\n  - name: m\n    versions: [{name: a, socket: /a, weight: 1, rollback: {max_error_rate: 2}}]\n", "max_error_rate 2"},
		{"models:\n  - {name: m, versions: [{name: a, socket: /a, weight: 1}]}\n  - {name: m, versions: [{name: b, socket: /b, weight: 1}]}\n", "model listed twice"},
		{"models: {name: m}\n", "not valid YAML"},
	} {
		_, err := Parse([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.file, err, tc.want)
		}
	}
}

// TestSplit: 10,000 random picks land within 2 percentage points of the
// weights, for two and for three versions.
func TestSplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, weights := range [][]float64{{90, 10}, {0.5, 0.3, 0.2}, {1, 0, 3}} {
		counts := make([]int, len(weights))
		const n = 10000
		for range n {
			counts[Pick(weights, rng.Float64())]++
		}
		var total float64
		for _, w := range weights {
			total += w
		}
		for i, w := range weights {
			got, want := 100*float64(counts[i])/n, 100*w/total
			if math.Abs(got-want) > 2 {
				t.Errorf("weights %v: version %d got %.2f%%, want %.2f%% ± 2", weights, i, got, want)
			}
			t.Logf("weights %v: version %d %.2f%% (want %.2f%%)", weights, i, got, want)
		}
	}
	if Pick([]float64{0, 0}, 0.5) != -1 {
		t.Error("all-zero weights picked a version")
	}
	if Pick([]float64{1, 1}, math.Nextafter(1, 0)) != 1 {
		t.Error("top end")
	}
}

// TestSticky: a key always gets the same version while the weights are
// unchanged; over 10,000 keys the sticky split follows the weights too;
// the salt reshuffles.
func TestSticky(t *testing.T) {
	weights := []float64{90, 10}
	first := map[string]int{}
	counts := make([]int, 2)
	for i := range 10000 {
		key := fmt.Sprintf("user-%d", i)
		v := Pick(weights, StickyPoint("s1", []byte(key)))
		first[key] = v
		counts[v]++
	}
	if got := float64(counts[1]) / 100; math.Abs(got-10) > 2 {
		t.Errorf("sticky split: %.2f%% on the 10%% version", got)
	}
	moved := 0
	for round := range 5 {
		for key, v := range first {
			if got := Pick(weights, StickyPoint("s1", []byte(key))); got != v {
				t.Fatalf("round %d: key %s moved from %d to %d with the weights unchanged", round, key, v, got)
			}
			if Pick(weights, StickyPoint("s2", []byte(key))) != v {
				moved++
			}
		}
	}
	if moved == 0 {
		t.Error("a new salt moved no key")
	}
	if p := StickyPoint("", nil); p < 0 || p >= 1 {
		t.Errorf("point %v outside [0, 1)", p)
	}
}

func TestMirror(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n := 0
	for range 10000 {
		if Mirror(10, rng.Float64()) {
			n++
		}
	}
	if math.Abs(float64(n)/100-10) > 2 {
		t.Errorf("mirrored %.2f%%, want 10%%", float64(n)/100)
	}
	if Mirror(100, math.Nextafter(1, 0)) != true || Mirror(0.001, 0.5) {
		t.Error("bounds")
	}
}

// TestWindow drives the rollback window on synctest's clock.
func TestWindow(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name    string
		spec    Rollback
		run     func(w *Window) *Breach
		tripped bool
	}{
		{"errors trip", Rollback{Window: time.Minute, MinRequests: 20, MaxErrorRate: 0.1}, func(w *Window) *Breach {
			var b *Breach
			for i := range 40 {
				if x := w.Observe(10*ms, i%4 == 0); x != nil {
					b = x
				}
				time.Sleep(100 * ms)
			}
			return b
		}, true},
		{"too few requests", Rollback{Window: time.Minute, MinRequests: 20, MaxErrorRate: 0.1}, func(w *Window) *Breach {
			for range 19 {
				if b := w.Observe(0, true); b != nil {
					return b
				}
			}
			return nil
		}, false},
		{"errors spread past the window", Rollback{Window: 10 * time.Second, MinRequests: 5, MaxErrorRate: 0.5}, func(w *Window) *Breach {
			// One failure every 3 s among successes: never more
			// than half in any 10 s.
			for i := range 60 {
				if b := w.Observe(ms, i%3 == 0); b != nil {
					return b
				}
				time.Sleep(time.Second)
			}
			return nil
		}, false},
		{"old failures slide out", Rollback{Window: 10 * time.Second, MinRequests: 5, MaxErrorRate: 0.5}, func(w *Window) *Breach {
			for range 4 {
				w.Observe(0, true) // too few to judge
			}
			time.Sleep(11 * time.Second)
			for range 10 {
				if b := w.Observe(ms, false); b != nil {
					return b
				}
			}
			return nil
		}, false},
		{"p99 trips", Rollback{Window: time.Minute, MinRequests: 20, MaxP99: 500 * ms}, func(w *Window) *Breach {
			var b *Breach
			for i := range 100 {
				took := 20 * ms
				if i%50 == 0 {
					took = 2 * time.Second // 2%: above the 99th percentile
				}
				if x := w.Observe(took, false); x != nil {
					b = x
				}
			}
			return b
		}, true},
		{"p99 within", Rollback{Window: time.Minute, MinRequests: 20, MaxP99: 500 * ms}, func(w *Window) *Breach {
			for i := range 200 {
				took := 20 * ms
				if i == 150 {
					took = 2 * time.Second // 0.5%
				}
				if b := w.Observe(took, false); b != nil {
					return b
				}
			}
			return nil
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := NewWindow(tc.spec)
				b := tc.run(w)
				if (b != nil) != tc.tripped || w.Tripped() != tc.tripped {
					t.Fatalf("breach %+v, tripped %v; want tripped %v", b, w.Tripped(), tc.tripped)
				}
				if b != nil {
					t.Logf("%s", b.Reason)
					if w.Observe(0, true) != nil {
						t.Error("a tripped window reported a second breach")
					}
				}
			})
		})
	}
}

// TestWatch: a changed file is applied, an invalid one rejected (the caller
// keeps the old), a ConfigMap-style symlink swap is seen, and an unchanged
// file is not applied again.
func TestWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		// ConfigMap layout: routing.yaml -> ..data/routing.yaml, ..data -> ..v1
		write := func(gen, content string) {
			d := filepath.Join(dir, gen)
			os.Mkdir(d, 0o755)
			if err := os.WriteFile(filepath.Join(d, "routing.yaml"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(dir, "..data_tmp")
			os.Remove(tmp)
			if err := os.Symlink(gen, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
		}
		write("..v1", example)
		path := filepath.Join(dir, "routing.yaml")
		if err := os.Symlink("..data/routing.yaml", path); err != nil {
			t.Fatal(err)
		}
		_, sum, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		var applied []*File
		var rejected []error
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			Watch(ctx, path, time.Second, sum, func(f *File) { applied = append(applied, f) }, func(err error) { rejected = append(rejected, err) })
		}()
		step := func() { time.Sleep(1500 * time.Millisecond); synctest.Wait() }
		step()
		if len(applied)+len(rejected) != 0 {
			t.Fatalf("unchanged file: applied %d, rejected %v", len(applied), rejected)
		}
		write("..v2", strings.Replace(example, "weight: 90", "weight: 80", 1))
		step()
		if len(applied) != 1 || applied[0].Default().Versions[0].Weight != 80 {
			t.Fatalf("after the swap: applied %v", applied)
		}
		write("..v3", "models: [{name: m}]")
		step()
		if len(applied) != 1 || len(rejected) != 1 || !strings.Contains(rejected[0].Error(), "no versions") {
			t.Fatalf("invalid file: applied %d, rejected %v", len(applied), rejected)
		}
		step() // the same bad content is reported once
		if len(rejected) != 1 {
			t.Fatalf("rejected again: %v", rejected)
		}
		write("..v4", example)
		step()
		if len(applied) != 2 || applied[1].Default().Versions[0].Weight != 90 {
			t.Fatalf("fixed file: applied %d", len(applied))
		}
		cancel()
		<-done
	})
}
