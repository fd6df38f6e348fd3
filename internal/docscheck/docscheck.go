// Package docscheck finds the repository paths that Markdown names, so that
// a test can fail when the docs point at a file that moved.
//
// The heuristic is deliberately simple:
//   - a link target, [text](target), that is not a URL (no scheme) nor an
//     anchor alone is a path relative to the Markdown file (its #anchor
//     dropped);
//   - a backticked span outside fenced code blocks is a path relative to
//     the repository root when it is one word of path characters, holds a
//     '/', and its first element is an entry of the root (`proxy/gateway`,
//     `./perf`, `.ci/run`): so `image/png`, `net/http`, `/predict` and
//     `k8s.io/api` are not paths; spans with glob, placeholder or shell
//     characters (`helm/*_test.go`, `perf/results/<timestamp>/`, `go run
//     ./perf`) are not either; a trailing `/...`, `:line` or `.Identifier`
//     (`proxy/flight.Group`) is dropped;
//   - fenced code blocks (example commands) are skipped.
//
// Paths under what .gitignore ignores as a folder (build and run-time
// output: .deps/, perf/results/) are for the caller to leave out; see
// IgnoredDirs.
package docscheck

import (
	"bufio"
	"bytes"
	"path"
	"regexp"
	"strings"
)

// Ref is a path named by a Markdown file.
type Ref struct {
	Line int
	Text string // as written
	Path string // slash-separated, relative to the repository root
}

var (
	linkRe  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	spanRe  = regexp.MustCompile("`([^`]+)`")
	wordRe  = regexp.MustCompile(`^[A-Za-z0-9_./-]+$`)
	schemRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	lineRe  = regexp.MustCompile(`:\d+$`)
	identRe = regexp.MustCompile(`\.[A-Z]\w*$`)
)

// Refs returns the repository paths that md, the Markdown file at mdPath
// (relative to the root), names; isRoot reports whether a name is an entry
// of the repository root.
func Refs(mdPath string, md []byte, isRoot func(string) bool) []Ref {
	var out []Ref
	fenced := false
	sc := bufio.NewScanner(bytes.NewReader(md))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if t := strings.TrimSpace(line); strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range linkRe.FindAllStringSubmatch(line, -1) {
			target, _, _ := strings.Cut(m[1], "#")
			if target == "" || schemRe.MatchString(target) {
				continue
			}
			out = append(out, Ref{n, m[1], path.Join(path.Dir(mdPath), target)})
		}
		for _, m := range spanRe.FindAllStringSubmatch(line, -1) {
			if p, ok := spanPath(m[1], isRoot); ok {
				out = append(out, Ref{n, m[1], p})
			}
		}
	}
	return out
}

// spanPath returns the path a backticked span names, if it names one.
func spanPath(s string, isRoot func(string) bool) (string, bool) {
	if !wordRe.MatchString(lineRe.ReplaceAllString(s, "")) || !strings.Contains(s, "/") || strings.HasPrefix(s, "/") {
		return "", false
	}
	s = strings.TrimSuffix(strings.TrimPrefix(lineRe.ReplaceAllString(s, ""), "./"), "/...")
	first, _, _ := strings.Cut(s, "/")
	if !isRoot(first) {
		return "", false
	}
	return path.Clean(identRe.ReplaceAllString(s, "")), true
}

// IgnoredDirs returns the folders (slash-separated, relative to the root,
// with a trailing slash) that a .gitignore ignores as a whole: a line
// "dir/" or "/dir/" or "/dir/*". Other patterns are not folders of output
// and are left to the check.
func IgnoredDirs(gitignore []byte) []string {
	var out []string
	for _, l := range strings.Split(string(gitignore), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "!") {
			continue
		}
		l = strings.TrimSuffix(strings.TrimPrefix(l, "/"), "*")
		if strings.HasSuffix(l, "/") && !strings.ContainsAny(l, "*?[") {
			out = append(out, l)
		}
	}
	return out
}
