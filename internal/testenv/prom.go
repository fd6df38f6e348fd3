package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics is a parsed Prometheus text exposition: every sample by its
// series, the name with its labels. It is the one parser of /metrics and
// *metrics.Set output that tests use. Reading a series that is not there
// fails the test: a renamed series must not read as 0.
type Metrics struct {
	samples map[string]Sample // by Key
}

// Sample is one line of an exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Key is the sample's series written canonically: name{k="v",...} with the
// labels sorted, or the bare name without labels.
func (s Sample) Key() string { return seriesKey(s.Name, s.Labels) }

// ParseMetrics parses a Prometheus text exposition (version 0.0.4). A
// malformed line, or a series written twice, is an error.
func ParseMetrics(text []byte) (*Metrics, error) {
	m := &Metrics{samples: map[string]Sample{}}
	for n, line := range bytes.Split(text, []byte("\n")) {
		l := strings.TrimSpace(string(line))
		if l == "" || l[0] == '#' {
			continue
		}
		name, labels, rest, err := parseSeries(l)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n+1, l, err)
		}
		f := strings.Fields(rest)
		if len(f) < 1 || len(f) > 2 || rest == "" || rest[0] != ' ' {
			return nil, fmt.Errorf("line %d %q: want the series, a space, the value and an optional timestamp", n+1, l)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n+1, l, err)
		}
		s := Sample{Name: name, Labels: labels, Value: v}
		if _, dup := m.samples[s.Key()]; dup {
			return nil, fmt.Errorf("line %d: series %s written twice", n+1, s.Key())
		}
		m.samples[s.Key()] = s
	}
	return m, nil
}

// MustParseMetrics is ParseMetrics, failing t on a malformed exposition.
func MustParseMetrics(t testing.TB, text []byte) *Metrics {
	t.Helper()
	m, err := ParseMetrics(text)
	if err != nil {
		t.Fatalf("malformed metrics exposition: %v", err)
	}
	return m
}

// SetMetrics parses what set writes.
func SetMetrics(t testing.TB, set *metrics.Set) *Metrics {
	t.Helper()
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	return MustParseMetrics(t, buf.Bytes())
}

// Lookup returns the value of series (name{k="v",...}, the labels in any
// order); ok is false when the exposition has no such series.
func (m *Metrics) Lookup(series string) (v float64, ok bool) {
	key, err := canonical(series)
	if err != nil {
		return 0, false
	}
	s, ok := m.samples[key]
	return s.Value, ok
}

// Value returns the value of series, failing t (at once) when the
// exposition has no such series.
func (m *Metrics) Value(t testing.TB, series string) float64 {
	t.Helper()
	if _, err := canonical(series); err != nil {
		t.Fatalf("bad series %q: %v", series, err)
	}
	v, ok := m.Lookup(series)
	if !ok {
		t.Fatalf("no series %s in the metrics (renamed, or never registered?); series named like it: %v", series, m.similar(series))
	}
	return v
}

// Sum adds the samples named name whose labels include every k="v" of
// labels (written as in a series, without braces: `code="500"`), failing t
// when none matches.
func (m *Metrics) Sum(t testing.TB, name, labels string) float64 {
	t.Helper()
	_, want, rest, err := parseSeries(name + "{" + labels + "}")
	if err != nil || rest != "" {
		t.Fatalf("bad labels %q: %v", labels, err)
	}
	var sum float64
	found := false
	for _, s := range m.samples {
		if s.Name != name {
			continue
		}
		match := true
		for k, v := range want {
			if s.Labels[k] != v {
				match = false
			}
		}
		if match {
			sum += s.Value
			found = true
		}
	}
	if !found {
		series := name
		if labels != "" {
			series += "{" + labels + "}"
		}
		t.Fatalf("no series %s in the metrics; series named like it: %v", series, m.similar(name))
	}
	return sum
}

// Has reports whether any series is named name, whatever its labels.
func (m *Metrics) Has(name string) bool {
	for _, s := range m.samples {
		if s.Name == name {
			return true
		}
	}
	return false
}

// Samples returns every sample, sorted by series.
func (m *Metrics) Samples() []Sample {
	return slices.SortedFunc(maps.Values(m.samples), func(a, b Sample) int { return strings.Compare(a.Key(), b.Key()) })
}

// similar lists the series whose names share the longest prefix with
// series' name, for a failure message that shows what a rename became.
func (m *Metrics) similar(series string) []string {
	name, _, _ := strings.Cut(series, "{")
	common := func(a string) int {
		n := 0
		for n < len(a) && n < len(name) && a[n] == name[n] {
			n++
		}
		return n
	}
	best := 1
	for _, s := range m.samples {
		best = max(best, common(s.Name))
	}
	var out []string
	for _, s := range m.Samples() {
		if common(s.Name) == best && len(out) < 20 {
			out = append(out, s.Key())
		}
	}
	return out
}

// MetricValue reads one series of set by its full name with labels; ok is
// false when set has no such series.
func MetricValue(set *metrics.Set, series string) (v float64, ok bool) {
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	m, err := ParseMetrics(buf.Bytes())
	if err != nil {
		return 0, false
	}
	return m.Lookup(series)
}

func canonical(series string) (string, error) {
	name, labels, rest, err := parseSeries(series)
	if err != nil {
		return "", err
	}
	if rest != "" {
		return "", fmt.Errorf("%q after the series", rest)
	}
	return seriesKey(name, labels), nil
}

func seriesKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range slices.Sorted(maps.Keys(labels)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%s", k, strconv.Quote(labels[k]))
	}
	b.WriteByte('}')
	return b.String()
}

// parseSeries reads name{k="v",...} at the start of s and returns what
// follows it.
func parseSeries(s string) (name string, labels map[string]string, rest string, err error) {
	i := strings.IndexAny(s, "{ ")
	if i < 0 {
		i = len(s)
	}
	name, s = s[:i], s[i:]
	if !validName(name) {
		return "", nil, "", fmt.Errorf("bad metric name %q", name)
	}
	if s == "" || s[0] != '{' {
		return name, nil, s, nil
	}
	s = s[1:]
	labels = map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t") // the format allows blanks between labels
		if s == "" {
			return "", nil, "", errors.New("unterminated labels")
		}
		if s[0] == '}' {
			return name, labels, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 || !validName(s[:eq]) || len(s) < eq+2 || s[eq+1] != '"' {
			return "", nil, "", fmt.Errorf("bad label at %q", s)
		}
		k := s[:eq]
		s = s[eq+2:]
		var v strings.Builder
		for {
			if s == "" {
				return "", nil, "", errors.New("unterminated label value")
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' {
				if s == "" {
					return "", nil, "", errors.New("unterminated escape")
				}
				switch s[0] {
				case '\\', '"':
					v.WriteByte(s[0])
				case 'n':
					v.WriteByte('\n')
				default:
					return "", nil, "", fmt.Errorf("bad escape \\%c", s[0])
				}
				s = s[1:]
				continue
			}
			v.WriteByte(c)
		}
		if _, dup := labels[k]; dup {
			return "", nil, "", fmt.Errorf("label %s twice", k)
		}
		labels[k] = v.String()
		switch {
		case strings.HasPrefix(s, ","):
			s = s[1:]
		case strings.HasPrefix(s, "}"):
		default:
			return "", nil, "", fmt.Errorf("want , or } at %q", s)
		}
	}
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
