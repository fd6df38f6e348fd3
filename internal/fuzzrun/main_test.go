package main

import "testing"

func TestCoordinatorRace(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      bool
	}{
		{"the race (CI, FuzzCheck)", `fuzz: elapsed: 9s, execs: 116233 (13561/sec), new interesting: 0 (total: 82)
fuzz: elapsed: 10s, execs: 128567 (11896/sec), new interesting: 0 (total: 82)
--- FAIL: FuzzCheck (10.06s)
    context deadline exceeded
FAIL
exit status 1
FAIL	github.com/batchgate/batchgate/proxy/auth	10.079s
`, true},
		{"a finding", `fuzz: minimizing 2118-byte failing input file
fuzz: elapsed: 5s, minimizing
--- FAIL: FuzzCheck (5.09s)
    --- FAIL: FuzzCheck (0.00s)
        turbojpeg_test.go:200: 1/1 of 0x0 decoded as 48x32

    Failing input written to testdata/fuzz/FuzzCheck/9b429024d4426c2b
    To re-run:
    go test -run=FuzzCheck/9b429024d4426c2b
FAIL
`, false},
		{"a hung worker", `--- FAIL: FuzzCheck (11.38s)
    fuzzing process hung or terminated unexpectedly while minimizing: EOF
    Failing input written to testdata/fuzz/FuzzCheck/96d031e852b4a24c
FAIL
`, false},
		{"the deadline after a log line", `--- FAIL: FuzzCheck (10.06s)
    fuzz_test.go:12: something
    context deadline exceeded
FAIL
`, false},
		{"another target", `--- FAIL: FuzzOther (10.06s)
    context deadline exceeded
FAIL
`, false},
		{"a build failure", `# github.com/batchgate/batchgate/proxy/auth
./auth.go:1:1: syntax error
FAIL	github.com/batchgate/batchgate/proxy/auth [build failed]
`, false},
		{"a seed failing first", `--- FAIL: FuzzCheck (0.01s)
    --- FAIL: FuzzCheck/seed#3 (0.00s)
        fuzz_test.go:40: wrong
FAIL
`, false},
	} {
		if got := coordinatorRace(tc.out, "FuzzCheck"); got != tc.want {
			t.Errorf("%s: coordinatorRace = %v, want %v", tc.name, got, tc.want)
		}
	}
}
