package gateway

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/batchgate/batchgate/internal/testenv"
)

// TestVariantSwitch restarts the runtime on the same socket with the other
// variant of the model, back and forth. The cache key holds the model's
// sha256, so an answer cached from one variant is never served for the
// other: the first request after a switch runs the model again, and every
// answer and /v2/models/{name} name the variant that computed it.
func TestVariantSwitch(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "runtime")
	if out, err := runCmd("go", "build", "-o", bin, "../../runtime"); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := execCommand(bin, "fetch-model", "-tiny", "-variant", "int8", "-dir", dir, "-ort-library", testenv.ORTLibrary(t)).Output()
	if err != nil {
		t.Fatalf("fetch-model -tiny -variant int8: %v", err)
	}
	models := map[string]string{"fp32": testenv.TinyModel(t), "int8": strings.TrimSpace(string(out))}
	socket := filepath.Join(dir, "rt.sock")
	var proc *os.Process
	stop := func() {
		if proc != nil {
			proc.Kill()
			proc.Wait()
		}
	}
	defer stop()
	start := func(variant string) {
		var err error
		proc, err = os.StartProcess(bin, []string{bin, "serve", "-socket", socket, "-model", models[variant], "-variant", variant,
			"-ort-library", testenv.ORTLibrary(t), "-ort-cache-dir", "off", "-max-batch-size", "4"},
			&os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}})
		if err != nil {
			t.Fatal(err)
		}
	}

	start("fp32")
	tp := startProxy(t, testConfig(socket))
	img := testenv.Image(t, "small.png")
	current := "fp32"
	answers := map[string]response{} // variant -> its first answer
	sha := map[string]string{}
	for i, step := range []struct {
		variant string
		cached  bool
	}{
		{"fp32", false}, {"fp32", true}, // computed, then cached
		{"int8", false}, {"int8", true}, // not fp32's cached answer
		{"fp32", true}, // fp32's own entry again
	} {
		if step.variant != current {
			stop()
			tp.waitReady(t, false)
			start(step.variant)
			tp.waitReady(t, true)
			current = step.variant
		}
		r := do(t, rawReq(tp.url+"/predict", "image/png", img))
		if r.status != 200 || r.body["model_variant"] != step.variant || r.body["cached"] != step.cached {
			t.Fatalf("step %d: %d %s; want 200 from %s with cached=%v", i, r.status, r.raw, step.variant, step.cached)
		}
		if first, ok := answers[step.variant]; !ok {
			answers[step.variant] = r
			sha[step.variant] = r.body["model_sha256"].(string)
		} else if !reflect.DeepEqual(first.body["predictions"], r.body["predictions"]) || r.body["model_sha256"] != sha[step.variant] {
			t.Errorf("step %d: %s answered %s, before %s", i, step.variant, r.raw, first.raw)
		}
		meta := get(t, tp.url+"/v2/models/resnet50").body
		if p, _ := meta["parameters"].(map[string]any); p["variant"] != step.variant || p["model_sha256"] != sha[step.variant] {
			t.Errorf("step %d: /v2/models/resnet50 parameters %v, want variant %s", i, p, step.variant)
		}
	}
	if sha["fp32"] == sha["int8"] {
		t.Errorf("both variants have sha256 %s", sha["fp32"])
	}
}
