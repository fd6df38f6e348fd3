package adversarial

import (
	"context"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
	"github.com/batchgate/batchgate/perf/harness"
)

// TestAdversarialShort is a small `perf -adversarial`: every scenario with
// fewer connections and shorter holds. The proxy runs in a 512 MiB memory
// cgroup where one can be made (as root, which `make test` is), so going
// over the limit is an OOM kill that this test sees.
func TestAdversarialShort(t *testing.T) {
	t.Setenv("ORT_LIBRARY", testenv.ORTLibrary(t))
	cfg := fullSoak.scaled(0.1)
	res, limited, err := adversarial(context.Background(), cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(limited)
	// Quiet twice (as fast as answered, paced), 4 + 5 attacks, then the
	// keyed proxy: quiet, 3 attacks.
	if want := 2 + 4 + 5 + 1 + 3; len(res) != want {
		t.Fatalf("%d of %d scenarios ran: the proxy died", len(res), want)
	}
	if res[0].Honest.OK == 0 {
		t.Fatalf("the honest clients got nothing through alone: %+v", res[0].Honest)
	}
	for _, r := range res[2:] {
		if strings.Contains(r.Name, "quiet:") {
			continue
		}
		if r.PeakRSSMiB <= 0 || r.PeakRSSMiB > limitMiB {
			t.Errorf("%s: peak RSS %.0f MiB, over the %d MiB budget", r.Name, r.PeakRSSMiB, limitMiB)
		}
		n := 0
		for outcome, c := range r.Outcomes {
			if outcome == "OTLP KiB received" { // a measure, not a connection
				continue
			}
			n += c
			switch outcome {
			case "200", "400", "401", "403", "408", "413", "429", "503", "closed", "held to the end":
			default:
				t.Errorf("%s: %d connections got %q", r.Name, c, outcome)
			}
		}
		if n < r.Connections {
			t.Errorf("%s: %d outcomes for %d connections", r.Name, n, r.Connections)
		}
		if r.Honest.OK == 0 {
			t.Errorf("%s: the honest clients got nothing through: %+v", r.Name, r.Honest)
		}
	}
	t.Log("\n" + soakReport(res, limited, harness.Machine()))
}
