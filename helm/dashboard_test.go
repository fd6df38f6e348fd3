package helm_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestDashboardLoadPanels: the default dashboard shows what the autoscaler
// scales on (issue 24): the expected queue wait in seconds and the runtime's
// utilization (offered and busy) as a fraction. Every panel's PromQL parses
// (promtool) and reads only series the proxy exports (its metrics package,
// every gauge set as the gateway sets them). TestScaledObjectOnPrometheus
// checks that each expression returns data from a real proxy under load.
func TestDashboardLoadPanels(t *testing.T) {
	docs := render(t, "rel", "ns1", "--set", "monitoring.dashboard.enabled=true")
	var d struct {
		Panels []struct {
			Title       string
			FieldConfig struct{ Defaults struct{ Unit string } }
			Targets     []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(get(named(docs, "ConfigMap", "rel-batchgate-dashboard"), "data", "batchgate.json").(string)), &d); err != nil {
		t.Fatal(err)
	}
	// The series each required panel reads, in the unit it must show.
	want := map[string]string{
		"inference_expected_wait_seconds":        "s",
		"inference_runtime_demand_seconds_total": "percentunit",
		"inference_runtime_busy_seconds_total":   "percentunit",
	}
	exported := routedMetrics(t)
	name := regexp.MustCompile(`\b([a-z_:][a-z0-9_:]*?)(_bucket|_sum|_count)?\{`)
	shown := map[string]string{}
	var rec []map[string]string
	for i, p := range d.Panels {
		for j, tg := range p.Targets {
			rec = append(rec, map[string]string{"record": fmt.Sprintf("dashboard:panel%d_%d", i, j), "expr": tg.Expr})
			names := name.FindAllStringSubmatch(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: no series in %s", p.Title, tg.Expr)
			}
			for _, n := range names {
				if _, ok := exported[n[1]]; !ok {
					t.Errorf("panel %q reads %s, which the proxy does not export", p.Title, n[1])
				}
				if unit, ok := want[n[1]]; ok && p.FieldConfig.Defaults.Unit == unit {
					shown[n[1]] = p.Title
				}
			}
		}
	}
	for series, unit := range want {
		if shown[series] == "" {
			t.Errorf("no panel shows %s in unit %q", series, unit)
		} else {
			t.Logf("%s: panel %q (%s)", series, shown[series], unit)
		}
	}
	b, _ := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rec}}})
	rules := filepath.Join(t.TempDir(), "dashboard.yaml")
	os.WriteFile(rules, b, 0o644)
	run(t, tool(t, "promtool"), "check", "rules", rules)
}
