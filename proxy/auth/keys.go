package auth

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/proxy/filewatch"
	"github.com/batchgate/batchgate/proxy/yamlguard"
)

// Limits on the keys file: they bound its memory, the limiters and the
// metrics' key label.
const (
	MaxKeys     = 10000
	MaxFileSize = 4 << 20
	// MaxRate is the highest rate a key may set, in images per second;
	// leave rate out for no limit.
	MaxRate = 1e6
	// MaxConcurrentImages is the highest max_concurrent_images a key may
	// set; leave it out for no limit.
	MaxConcurrentImages = 1 << 20
)

// Scope is what a key may do: Predict, Metadata or Versions.
type Scope string

// The scopes. Routes are mapped to scopes by package httpapi (docs/auth.md).
const (
	// Predict: POST /predict and the OIP infer routes.
	Predict Scope = "predict"
	// Metadata: the OIP server and model metadata and model readiness.
	Metadata Scope = "metadata"
	// Versions: choosing a model version explicitly, with /predict's
	// X-Model-Version or OIP's /v2/models/{name}/versions/{v}/infer, on
	// top of predict. Without it a key's requests are routed by the
	// routing file's weights, so it cannot reach a weight-0 or
	// rolled-back version.
	Versions Scope = "versions"
)

// allScopes lists the scopes for messages.
const allScopes = "predict, metadata or versions"

// scopeSet is a set of scopes as bits.
type scopeSet uint8

// bit is s's bit, 0 for an unknown scope (which no key holds).
func (s Scope) bit() scopeSet {
	switch s {
	case Predict:
		return 1
	case Metadata:
		return 2
	case Versions:
		return 4
	}
	return 0
}

// ParseScopes reads a comma-separated list of scopes, such as
// "predict,metadata,versions".
func ParseScopes(s string) ([]Scope, error) {
	var out []Scope
	var seen scopeSet
	for f := range strings.SplitSeq(s, ",") {
		sc := Scope(strings.TrimSpace(f))
		b := sc.bit()
		switch {
		case b == 0:
			return nil, fmt.Errorf("unknown scope %.20q: want %s", sc, allScopes)
		case seen&b != 0:
			return nil, fmt.Errorf("scope %q listed twice", sc)
		}
		seen |= b
		out = append(out, sc)
	}
	return out, nil
}

// Key is one entry of the keys file. It holds the sha256 of the key's
// secret, never the secret.
type Key struct {
	// ID names the key in requests' logs and metrics: 1-64 letters,
	// digits, '_' or '-'.
	ID string `yaml:"id" json:"id"`
	// SHA256 is the hex sha256 of the key's secret (the part after the
	// '.'), 64 hex digits.
	SHA256 string `yaml:"sha256" json:"sha256"`
	// Scopes are what the key may do; at least one.
	Scopes []Scope `yaml:"scopes" json:"scopes"`
	// Rate is the key's images per second (a request to a route needing
	// a key counts as 1, an OIP infer request as its images); 0:
	// unlimited.
	Rate float64 `yaml:"rate" json:"rate,omitempty"`
	// Burst is how many images may come at once, and so the most one
	// request may carry; with a rate, default max(1, ceil(rate)).
	// Ignored without a rate.
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// MaxConcurrentImages is the most images the key's inference
	// requests may have in flight at once; 0: unlimited.
	MaxConcurrentImages int `yaml:"max_concurrent_images" json:"max_concurrent_images,omitempty"`

	digest [32]byte
	scopes scopeSet
}

// Entry is k as an item of the keys file's `keys:` list, ready to paste:
// Parse of "keys:\n" and entries reads them back.
func (k Key) Entry() string {
	var b strings.Builder
	scopes := make([]string, len(k.Scopes))
	for i, s := range k.Scopes {
		scopes[i] = string(s)
	}
	fmt.Fprintf(&b, "  - id: %s\n    sha256: %s\n    scopes: [%s]\n", k.ID, k.SHA256, strings.Join(scopes, ", "))
	if k.Rate != 0 {
		fmt.Fprintf(&b, "    rate: %s\n", strconv.FormatFloat(k.Rate, 'g', -1, 64))
	}
	if k.Burst != 0 {
		fmt.Fprintf(&b, "    burst: %d\n", k.Burst)
	}
	if k.MaxConcurrentImages != 0 {
		fmt.Fprintf(&b, "    max_concurrent_images: %d\n", k.MaxConcurrentImages)
	}
	return b.String()
}

// Keys is a parsed, validated keys file. It is immutable.
type Keys struct {
	list []Key
}

// Len is the number of keys.
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.list)
}

// Key returns the key called id, with its defaults filled in.
func (k *Keys) Key(id string) (Key, bool) {
	if k != nil {
		for _, key := range k.list {
			if key.ID == id {
				return key, true
			}
		}
	}
	return Key{}, false
}

// idPattern is an id: no '.', which separates it from the secret.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Parse reads and validates a keys file, YAML or JSON:
//
//	keys:
//	  - id: team-a
//	    sha256: 3f1c...        # hex sha256 of the secret part
//	    scopes: [predict, metadata]   # and versions, to choose a model version
//	    rate: 20               # images/second; 0 or absent: unlimited
//	    burst: 40              # images at once; default max(1, ceil(rate))
//	    max_concurrent_images: 32     # 0 or absent: unlimited
//
// Its errors list every problem with its entry, one line each, and never
// show a value that might be a secret pasted in the wrong place.
func Parse(data []byte) (*Keys, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("keys file is %d bytes; the limit is %d", len(data), MaxFileSize)
	}
	if err := yamlguard.Check(data, maxYAMLNodes, false); err != nil {
		return nil, fmt.Errorf("keys file is not valid for the keys schema (see docs/auth.md): %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelt key is an error, not a silent default
	var f struct {
		Keys []Key `yaml:"keys"`
	}
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("keys file is empty: list the keys under `keys:` (see docs/auth.md)")
		}
		return nil, fmt.Errorf("keys file is not valid YAML or JSON for the keys schema (see docs/auth.md): %w", err)
	}
	if f.Keys == nil {
		return nil, errors.New("keys file has no `keys:` list: add one (`keys: []` refuses every key)")
	}
	if len(f.Keys) > MaxKeys {
		return nil, fmt.Errorf("keys file lists %d keys; the limit is %d", len(f.Keys), MaxKeys)
	}
	var problems yamlguard.Problems
	bad := problems.Add
	ids := make(map[string]int, len(f.Keys))
	digests := make(map[[32]byte]int, len(f.Keys))
	for i := range f.Keys {
		k := &f.Keys[i]
		where := fmt.Sprintf("keys[%d]", i)
		validID := idPattern.MatchString(k.ID)
		if validID {
			where += fmt.Sprintf(" (%q)", k.ID)
		}
		switch {
		case k.ID == "":
			bad("%s: id is required", where)
		case strings.Contains(k.ID, "."):
			bad("%s: id has a '.' (%d characters, not shown): is it a whole key? Put only the part before the '.' here, and the sha256 of the part after it under sha256", where, len(k.ID))
		case !validID:
			bad("%s: id must be 1-64 letters, digits, '_' or '-' (it has %d characters, not shown)", where, len(k.ID))
		default:
			if j, dup := ids[k.ID]; dup {
				bad("%s: id already used by keys[%d]", where, j)
			}
			ids[k.ID] = i
		}
		if !decodeDigest(&k.digest, k.SHA256) {
			hint := ""
			if strings.Contains(k.SHA256, ".") || len(k.SHA256) == 43 {
				hint = "; it looks like a key or a secret: never put those in the file"
			}
			bad("%s: sha256 must be the 64 hex digits of the sha256 of the key's secret (the part after the '.'); it has %d characters, not shown%s", where, len(k.SHA256), hint)
		} else {
			k.SHA256 = strings.ToLower(k.SHA256)
			if j, dup := digests[k.digest]; dup {
				bad("%s: same sha256 as keys[%d]: every key needs its own secret", where, j)
			} else {
				digests[k.digest] = i
			}
		}
		if len(k.Scopes) == 0 {
			bad("%s: scopes is empty: list at least one of %s, %s and %s", where, Predict, Metadata, Versions)
		}
		for _, s := range k.Scopes {
			b := s.bit()
			switch {
			case b == 0:
				bad("%s: unknown scope %.20q: want %s", where, s, allScopes)
			case k.scopes&b != 0:
				bad("%s: scope %q listed twice", where, s)
			}
			k.scopes |= b
		}
		if k.scopes&Versions.bit() != 0 && k.scopes&Predict.bit() == 0 {
			bad("%s: scope %s only chooses the version of a prediction: add %s too", where, Versions, Predict)
		}
		switch {
		case math.IsNaN(k.Rate) || k.Rate < 0 || k.Rate > MaxRate:
			bad("%s: rate %v: want images per second in [0, %d]; leave it out (or 0) for no limit", where, k.Rate, int(MaxRate))
		case k.Burst < 0:
			bad("%s: burst %d: want at least 1 (default max(1, ceil(rate)))", where, k.Burst)
		case k.Rate > 0 && k.Burst == 0:
			k.Burst = max(1, int(math.Ceil(k.Rate)))
		}
		if k.MaxConcurrentImages < 0 || k.MaxConcurrentImages > MaxConcurrentImages {
			bad("%s: max_concurrent_images %d: want images in [0, %d]; leave it out (or 0) for no limit", where, k.MaxConcurrentImages, MaxConcurrentImages)
		}
	}
	if err := problems.Err(); err != nil {
		return nil, fmt.Errorf("invalid keys file:\n%w", err)
	}
	return &Keys{list: f.Keys}, nil
}

// maxYAMLNodes bounds the YAML nodes (values, lists, maps) of a keys file,
// aliases expanded: a valid file of MaxKeys keys, every field set, has
// about 16 a key, which yamlguard.Nodes counts as up to 46 (comments and ids with
// '-' count). yaml.v3 allocates about 250 bytes a node on each of the two
// passes (yamlguard.Check's, the decoder's), so this bounds what Parse allocates
// (docs/memory.md).
const maxYAMLNodes = 64 * MaxKeys

// decodeDigest decodes 64 hex digits into d.
func decodeDigest(d *[32]byte, s string) bool {
	if len(s) != 2*len(d) {
		return false
	}
	n, err := hex.Decode(d[:], []byte(s))
	return err == nil && n == len(d)
}

// Load reads and parses the keys file at path, and returns its sha256 too
// (filewatch.Load).
func Load(path string) (*Keys, [32]byte, error) {
	return filewatch.Load(path, "the keys file (AUTH_KEYS_FILE)", Parse)
}
