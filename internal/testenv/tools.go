package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Tool returns the path of a test tool that `make deps-test` builds from
// its pinned Go module into <repository>/.deps/tools (grpcurl, for one),
// else the one on $PATH. A missing tool fails the test, saying how to get
// it: a skipped test would hide the gap.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Root(t), ".deps", "tools", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s not found in .deps/tools or on $PATH: run `make deps-test` (`make test` runs it), which builds it", name)
	return ""
}

// DebianPython returns Debian's python3 (/usr/bin/python3, the one that
// sees the python3-* packages scripts/install-tools.sh installs, whatever
// python3 comes first on $PATH) after checking that it imports modules. A
// missing module fails the test, naming the package that `make deps-test`
// installs.
func DebianPython(t testing.TB, pkg string, modules ...string) string {
	t.Helper()
	const python = "/usr/bin/python3"
	script := "import sys\nfor m in sys.argv[1:]: __import__(m)"
	if out, err := exec.Command(python, append([]string{"-c", script}, modules...)...).CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import %v (Debian's %s): run `make deps-test` (`make test` runs it), which installs it: %v\n%s",
			python, modules, pkg, err, out)
	}
	return python
}
