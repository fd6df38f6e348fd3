package modelgen

import (
	"errors"
	"testing"
)

func TestParseErrors(t *testing.T) {
	b, _ := Tiny(DefaultSeed)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"truncated", b[:len(b)/2]},
		{"bad wire type", []byte{0x0f}},
		{"unknown model field", []byte{0x98, 0x01, 0x00}}, // field 19, varint
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.data); err == nil {
				t.Error("Parse succeeded")
			} else if tc.name == "truncated" && !errors.Is(err, errTruncated) {
				t.Errorf("Parse = %v, want errTruncated", err)
			}
		})
	}
}
