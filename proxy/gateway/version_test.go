package gateway

import (
	"os"
	"regexp"
	"testing"
)

// TestOneVersion: the product's version is Version, and the chart's
// appVersion (the default image tag) and the CHANGELOG's newest heading
// say the same, so GET /v2, the images and the notes never disagree.
func TestOneVersion(t *testing.T) {
	tests := []struct {
		file string
		re   string // its first submatch is the version
	}{
		{"../../helm/batchgate/Chart.yaml", `(?m)^appVersion: "?([0-9][^"\s]*)"?$`},
		{"../../CHANGELOG.md", `(?m)^## \[([^\]]+)\]`},
	}
	for _, tt := range tests {
		b, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(tt.re).FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no version found (%s)", tt.file, tt.re)
			continue
		}
		if got := string(m[1]); got != Version {
			t.Errorf("%s says %q, gateway.Version (GET /v2) %q: set them together", tt.file, got, Version)
		}
	}
}
