package helm_test

import (
	"strings"
	"testing"
)

// TestModelVariant: model.variant reaches the runtime as MODEL_VARIANT (so
// it refuses a model of the other variant), picks the pinned model that
// `source: download` fetches unless url and sha256 are both set, and the
// `helm test` pod checks that answers come from that variant.
func TestModelVariant(t *testing.T) {
	const (
		fp32URL = "resnet50-v1-12.onnx"
		fp32SHA = "ab65bdc02c5b3123eb3cdf6dac01742438517d8635d4f233913b2be1c70db3b6"
		int8URL = "resnet50-v1-12-int8.onnx"
		int8SHA = "c234f30975989788b4405f25253275aae247ab6dbdd34aaa69ab0a59ff76f6d0"
		ownSHA  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	)
	for _, tc := range []struct {
		name    string
		set     []string
		variant string
		url     string // in the download script; "" when there is no init container
		sha     string
		fails   string // part of the error when rendering must fail
	}{
		{name: "default", variant: "fp32"},
		{name: "int8 in the image", set: []string{"model.variant=int8"}, variant: "int8"},
		{name: "fp32 downloaded", set: []string{"model.source=download"}, variant: "fp32", url: fp32URL, sha: fp32SHA},
		{name: "int8 downloaded", set: []string{"model.source=download", "model.variant=int8"}, variant: "int8", url: int8URL, sha: int8SHA},
		{name: "own model", set: []string{"model.source=download", "model.variant=int8",
			"model.url=https://models.example.com/mine.onnx", "model.sha256=" + ownSHA}, variant: "int8", url: "mine.onnx", sha: ownSHA},
		{name: "url without sha256", set: []string{"model.source=download", "model.url=https://models.example.com/mine.onnx"}, fails: "set both model.url and model.sha256"},
		{name: "unknown variant", set: []string{"model.variant=fp16"}, fails: "variant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			if tc.fails != "" {
				out, err := renderErr(t, "rel", "ns1", args...)
				if err == nil || !strings.Contains(out, tc.fails) {
					t.Errorf("render: %v, want a failure about %q:\n%s", err, tc.fails, out)
				}
				return
			}
			docs := render(t, "rel", "ns1", args...)
			spec := get(find(docs, "Deployment"), "spec", "template", "spec")
			if got := envOf(containerNamed(spec, "runtime"))["MODEL_VARIANT"]; got != tc.variant {
				t.Errorf("runtime MODEL_VARIANT = %v, want %s", got, tc.variant)
			}
			fetch := containerNamed(spec, "fetch-model")
			if tc.url == "" {
				if fetch != nil {
					t.Error("a fetch-model init container with source: image")
				}
			} else {
				script, _ := get(fetch, "command", 2).(string)
				if !strings.Contains(script, tc.url+`"`) || strings.Count(script, tc.sha) != 2 {
					t.Errorf("fetch-model script does not fetch %s with sha256 %s:\n%s", tc.url, tc.sha, script)
				}
			}
			test, _ := get(find(docs, "Pod"), "spec", "containers", 0, "command", 2).(string)
			if !strings.Contains(test, `"model_variant":"`+tc.variant+`"`) {
				t.Errorf("helm test does not check the variant:\n%s", test)
			}
		})
	}
}
