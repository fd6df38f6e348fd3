package docscheck

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestDocPathsExist: every path that README.md and docs/*.md name (see the
// package comment for what counts as one) exists in the repository, apart
// from what .gitignore ignores as a folder (.deps/, perf/results/, ...).
func TestDocPathsExist(t *testing.T) {
	root := testenv.Root(t)
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	gitignore, err := os.ReadFile(filepath.Join(root, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	ignored := IgnoredDirs(gitignore)
	isRoot := func(name string) bool { _, err := os.Stat(filepath.Join(root, name)); return err == nil }
	checked := 0
	for _, f := range files {
		md, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
	refs:
		for _, r := range Refs(filepath.ToSlash(rel), md, isRoot) {
			for _, dir := range ignored {
				if strings.HasPrefix(r.Path+"/", dir) {
					continue refs
				}
			}
			checked++
			if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(r.Path))); err != nil {
				t.Errorf("%s:%d: %q: %s does not exist", rel, r.Line, r.Text, r.Path)
			}
		}
	}
	if checked < 50 {
		t.Errorf("only %d paths checked: the heuristic finds too little", checked)
	}
}

// TestRefs pins the heuristic: what is a path and what is not.
func TestRefs(t *testing.T) {
	md := strings.Join([]string{
		"See [the API](api.md#errors), [chart](../helm/batchgate/README.md), [site](https://example.com/x), [top](#top).",
		"Code in `proxy/gateway/gateway.go:12`, `./perf`, `proxy/flight.Group`, `runtime/...`, `.ci/run`.",
		"Not paths: `image/png`, `net/http`, `/predict`, `k8s.io/api`, `helm/*_test.go`, `perf/results/<timestamp>/`,",
		"`go run ./perf -chaos`, `MODEL=a/b`, `main.go`, `unknown/dir`.",
		"```",
		"cat proxy/in/a/fence.go `proxy/in/fence.go`",
		"```",
	}, "\n")
	roots := map[string]bool{"proxy": true, "perf": true, "runtime": true, ".ci": true, "helm": true, "image": false}
	var got []string
	for _, r := range Refs("docs/x.md", []byte(md), func(s string) bool { return roots[s] }) {
		got = append(got, r.Path)
	}
	want := []string{"docs/api.md", "helm/batchgate/README.md", "proxy/gateway/gateway.go", "perf", "proxy/flight", "runtime", ".ci/run"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("paths\n %q\nwant\n %q", got, want)
	}
	ign := IgnoredDirs([]byte(".deps/\n/bin/\n*.test\n/perf/results/\n# x\n/proxy/docs/swagger-ui/*\n!/proxy/docs/swagger-ui/README.md\n"))
	if want := []string{".deps/", "bin/", "perf/results/", "proxy/docs/swagger-ui/"}; !reflect.DeepEqual(ign, want) {
		t.Errorf("ignored %q, want %q", ign, want)
	}
}
