// Command fuzzrun runs native Go fuzz targets one after another, each for a
// fixed time after its seed corpus, and fails on the first finding:
//
//	go run ./internal/fuzzrun -fuzztime 10s runtime/wire:FuzzDecode proxy/auth:FuzzCheck
//
// It exists for one false alarm. Go 1.26's fuzzing coordinator can fail a
// run that found nothing with a bare "context deadline exceeded" as
// -fuzztime ends: it compares the deadline's error with its workers'
// context before that context has been cancelled (go.dev/issue/75804,
// fixed in Go 1.27). That outcome, and only that one, is checked by
// replaying the target's corpus and reported instead of failing. A run
// that wrote a failing input, or failed in any other way, fails.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

func main() {
	fuzztime := flag.String("fuzztime", "10s", "how long to fuzz each target (go test -fuzztime)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: fuzzrun [-fuzztime 10s] package:FuzzTarget ...")
		flag.PrintDefaults()
	}
	flag.Parse()
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	for _, arg := range flag.Args() {
		pkg, target, ok := strings.Cut(arg, ":")
		if !ok || pkg == "" || !strings.HasPrefix(target, "Fuzz") {
			fmt.Fprintf(os.Stderr, "fuzzrun: %q is not package:FuzzTarget\n", arg)
			os.Exit(2)
		}
		if err := fuzz(goBin, pkg, target, *fuzztime); err != nil {
			fmt.Fprintf(os.Stderr, "fuzzrun: %v\n", err)
			os.Exit(1)
		}
	}
}

// fuzz runs one target, its output going to stdout as it comes.
func fuzz(goBin, pkg, target, fuzztime string) error {
	fmt.Printf("fuzz: %s in ./%s for %s\n", target, pkg, fuzztime)
	var out bytes.Buffer
	err := run(io.MultiWriter(os.Stdout, &out), goBin, "test", "-run", "^$", "-fuzz", "^"+target+"$", "-fuzztime", fuzztime, "./"+pkg)
	if err == nil {
		return nil
	}
	if !coordinatorRace(out.String(), target) {
		return fmt.Errorf("%s in ./%s failed: %w", target, pkg, err)
	}
	fmt.Printf("fuzz: %s found nothing but failed with Go's coordinator race at the end of -fuzztime (go.dev/issue/75804); replaying its corpus\n", target)
	if err := run(os.Stdout, goBin, "test", "-count=1", "-run", "^"+target+"$", "./"+pkg); err != nil {
		return fmt.Errorf("%s in ./%s: replaying its corpus: %w", target, pkg, err)
	}
	return nil
}

func run(w io.Writer, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = w, w
	return cmd.Run()
}

// coordinatorRace tells whether a failed fuzzing run's output is that of
// go.dev/issue/75804 and nothing else: the target's only failure is the
// bare deadline error, and no failing input was written.
func coordinatorRace(out, target string) bool {
	if strings.Contains(out, "Failing input written") || strings.Count(out, "--- FAIL") != 1 {
		return false
	}
	_, after, ok := strings.Cut(out, "--- FAIL: "+target+" (")
	if !ok {
		return false
	}
	lines := strings.Split(after, "\n")
	return len(lines) >= 3 && strings.TrimSpace(lines[1]) == "context deadline exceeded" && strings.TrimSpace(lines[2]) == "FAIL"
}
