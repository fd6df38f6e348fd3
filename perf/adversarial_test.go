package main

import (
	"context"
	"os"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestAdversarialShort is a small `perf -adversarial`: every scenario with
// fewer connections and shorter holds. The proxy runs in a 512 MiB memory
// cgroup where one can be made (as root, which `make test` is), so going
// over the limit is an OOM kill that this test sees.
func TestAdversarialShort(t *testing.T) {
	os.Setenv("ORT_LIBRARY", testenv.ORTLibrary(t))
	cfg := fullSoak.scaled(0.1)
	res, limited, err := adversarial(context.Background(), cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(limited)
	if len(res) != 4 {
		t.Fatalf("%d of 4 scenarios ran: the proxy died", len(res))
	}
	for _, r := range res {
		if r.PeakRSSMiB <= 0 || r.PeakRSSMiB > limitMiB {
			t.Errorf("%s: peak RSS %.0f MiB, over the %d MiB budget", r.Name, r.PeakRSSMiB, limitMiB)
		}
		n := 0
		for outcome, c := range r.Outcomes {
			n += c
			switch outcome {
			case "200", "413", "429", "503", "closed":
			default:
				t.Errorf("%s: %d connections got %q", r.Name, c, outcome)
			}
		}
		if n < r.Connections {
			t.Errorf("%s: %d outcomes for %d connections", r.Name, n, r.Connections)
		}
		if r.Outcomes["200"] == 0 {
			t.Errorf("%s: no request succeeded: %v", r.Name, r.Outcomes)
		}
	}
	t.Log("\n" + soakReport(res, limited, machine()))
}
