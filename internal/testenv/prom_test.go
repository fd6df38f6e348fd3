package testenv

import (
	"runtime"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

func TestParseMetrics(t *testing.T) {
	set := metrics.NewSet()
	set.NewCounter(`requests_total{route="/predict",code="200"}`).Add(3)
	set.NewCounter(`requests_total{route="/v2",code="500"}`).Add(2)
	set.NewCounter(`requests_total{route="other",code="500"}`).Add(1)
	set.NewCounter(`odd{v="a \"quoted\" \\ value"}`).Inc()
	set.NewGauge("depth", func() float64 { return 0.25 })
	set.NewPrometheusHistogramExt("wait_seconds", []float64{1}).Update(0.5)
	m := SetMetrics(t, set)
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{`requests_total{route="/predict",code="200"}`, 3},
		{`requests_total{code="200",route="/predict"}`, 3}, // labels in any order
		{`odd{v="a \"quoted\" \\ value"}`, 1},
		{"depth", 0.25},
		{"wait_seconds_count", 1},
		{`wait_seconds_bucket{le="+Inf"}`, 1},
	} {
		if got := m.Value(t, tc.series); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.series, got, tc.want)
		}
	}
	spaced := MustParseMetrics(t, []byte(`go_info_ext{compiler="gc", GOOS="linux"} 1`+"\n"))
	if got := spaced.Value(t, `go_info_ext{GOOS="linux",compiler="gc"}`); got != 1 {
		t.Errorf("labels with blanks: %v, want 1", got)
	}
	if got := m.Sum(t, "requests_total", `code="500"`); got != 3 {
		t.Errorf("sum of code 500 = %v, want 3", got)
	}
	for _, absent := range []string{"requests_total", `requests_total{route="/predict"}`, `requests_total{route="/predict",code="200",x="y"}`, "dept"} {
		if v, ok := m.Lookup(absent); ok {
			t.Errorf("Lookup(%s) = %v, true; want absent", absent, v)
		}
	}
	if !m.Has("requests_total") || m.Has("requests") {
		t.Error("Has: wrong answer")
	}
	for _, bad := range []string{"a{b=\"c\" 1", "a 1 2 3", "a{b=c} 1", "a x", "9a 1", "a 1\na 2", `a{b="1",b="2"} 1`} {
		if _, err := ParseMetrics([]byte(bad)); err == nil {
			t.Errorf("ParseMetrics(%q): no error", bad)
		}
	}
}

// A missing series fails the test: "want 0" cannot pass after a rename.
func TestMissingSeriesFails(t *testing.T) {
	m := MustParseMetrics(t, []byte("# HELP x\nfoo_total 0\n"))
	for name, read := range map[string]func(tb testing.TB){
		"Value": func(tb testing.TB) { m.Value(tb, "foo_totals") },
		"Sum":   func(tb testing.TB) { m.Sum(tb, "foo_total", `a="b"`) },
	} {
		ft := &fakeTB{TB: t}
		done := make(chan struct{})
		go func() { defer close(done); read(ft) }()
		<-done
		if !ft.failed {
			t.Errorf("%s of a missing series did not fail the test", name)
		}
	}
	if got := m.Value(t, "foo_total"); got != 0 {
		t.Errorf("foo_total = %v, want 0", got)
	}
}

// fakeTB records a failure; Fatalf ends the goroutine as testing's does.
type fakeTB struct {
	testing.TB
	failed bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit()
}
