// Package routing is the traffic policy over several versions of a model:
// the declarative routing file (parsed and validated here), the weighted
// split, sticky assignment, shadow sampling, the rollback controller's
// sliding window, and the poll that reloads the file when it changes. It
// knows nothing of HTTP, sockets or batching: proxy/versions wires it to one
// runtime connection and one batcher per version.
//
// # The routing file
//
// YAML (or JSON, which is YAML):
//
//	models:
//	  - name: resnet50          # the name the runtime reports; /predict serves the first model
//	    sticky: {header: X-User-Id, salt: "2026-05"}
//	    shadow: {version: v3, percent: 10, max_queue: 4}
//	    versions:
//	      - {name: v1, socket: /sockets/v1.sock, variant: fp32, weight: 90}
//	      - name: v2
//	        socket: /sockets/v2.sock
//	        weight: 10
//	        rollback: {window: 60s, min_requests: 20, max_error_rate: 0.05, max_p99: 2s, count_explicit: false}
//	      - {name: v3, socket: /sockets/v3.sock, weight: 0}
//
// docs/versions.md is the reference.
package routing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/batchgate/batchgate/proxy/yamlguard"
)

// Limits on the file: they bound the metrics' label cardinality and the
// runtime connections a proxy holds.
const (
	MaxModels   = 8
	MaxVersions = 16 // per model
	MaxFileSize = 1 << 20
)

// File is a parsed, validated routing file.
type File struct {
	Models []Model `yaml:"models" json:"models"`
}

// Model is one model name and its versions.
type Model struct {
	// Name is the model's name: OIP's /v2/models/{name}. The runtimes of
	// its versions should report it; the proxy logs a warning otherwise.
	Name string `yaml:"name" json:"name"`
	// ShareCache lets versions whose runtimes serve byte-identical models
	// (same sha256) share cache entries and coalesce identical requests.
	// Default false: every version has its own entries, so a comparison
	// of two versions sees each one's own answers.
	ShareCache bool      `yaml:"share_cache" json:"share_cache"`
	Sticky     *Sticky   `yaml:"sticky" json:"sticky,omitempty"`
	Shadow     *Shadow   `yaml:"shadow" json:"shadow,omitempty"`
	Versions   []Version `yaml:"versions" json:"versions"`
}

// Version is one model version, served by its own runtime.
type Version struct {
	// Name is the version: OIP's /v2/models/{name}/versions/{version},
	// /predict's X-Model-Version, and the metrics' version label.
	Name string `yaml:"name" json:"name"`
	// Socket is the unix socket of the runtime serving it.
	Socket string `yaml:"socket" json:"socket"`
	// Variant, if set, must be the variant the runtime reports ("fp32",
	// "int8"); a runtime reporting another is not ready.
	Variant string `yaml:"variant" json:"variant,omitempty"`
	// Weight is the version's share of the split, relative to the other
	// versions' (90 and 10, or 0.9 and 0.1). 0: explicit requests and
	// shadow traffic only.
	Weight float64 `yaml:"weight" json:"weight"`
	// Rollback, if set, sets the weight to 0 when the version breaches
	// its limits.
	Rollback *Rollback `yaml:"rollback" json:"rollback,omitempty"`
}

// Sticky assigns each request by a hash of a key and the salt, instead of at
// random: the same key gets the same version while the weights are
// unchanged. Exactly one of Header and Image.
type Sticky struct {
	// Header is the request header holding the key, such as X-User-Id. A
	// request without it is assigned at random.
	Header string `yaml:"header" json:"header,omitempty"`
	// Image uses the image's (the request body's) sha256 as the key.
	Image bool `yaml:"image" json:"image,omitempty"`
	// Salt is hashed with the key: change it to reshuffle assignments.
	Salt string `yaml:"salt" json:"salt,omitempty"`
}

// Shadow mirrors a share of the model's traffic to a version whose answers
// are compared with the primary's and discarded.
type Shadow struct {
	Version string `yaml:"version" json:"version"`
	// Percent of the requests the primary computes (not cached) that are
	// mirrored, in (0, 100].
	Percent float64 `yaml:"percent" json:"percent"`
	// MaxQueue: a mirrored request is dropped (and counted) when the
	// shadow version already has this many items waiting or running.
	// Default 4.
	MaxQueue int `yaml:"max_queue" json:"max_queue,omitempty"`
}

// Rollback limits a version: when over Window it served at least
// MinRequests and its error rate is above MaxErrorRate or its p99 latency
// above MaxP99, its weight is set to 0 until the routing file changes.
type Rollback struct {
	// Window is the sliding window. Default 60s.
	Window time.Duration `yaml:"window" json:"window,omitempty"`
	// MinRequests is the fewest requests in the window that are judged.
	// Default 20.
	MinRequests int `yaml:"min_requests" json:"min_requests,omitempty"`
	// MaxErrorRate in (0, 1]; 0: not checked.
	MaxErrorRate float64 `yaml:"max_error_rate" json:"max_error_rate,omitempty"`
	// MaxP99 bounds the 99th percentile of the time a request spends in
	// the version (queue and runtime); 0: not checked.
	MaxP99 time.Duration `yaml:"max_p99" json:"max_p99,omitempty"`
	// CountExplicit counts requests that chose the version explicitly
	// (X-Model-Version, /versions/{v}) in the window too. Default false:
	// only the traffic the weights send is judged, so a client choosing
	// the version cannot push it into rollback.
	CountExplicit bool `yaml:"count_explicit" json:"count_explicit,omitempty"`
}

// CountsExplicit reports whether w judges explicitly routed requests too
// (Rollback.CountExplicit).
func (w *Window) CountsExplicit() bool { return w.spec.CountExplicit }

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Parse reads and validates a routing file. Its errors say what is wrong and
// where, one line each.
func Parse(data []byte) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("routing file is %d bytes; the limit is %d", len(data), MaxFileSize)
	}
	if err := yamlguard.Check(data, maxYAMLNodes, true); err != nil {
		return nil, fmt.Errorf("routing file is not valid for the routing schema (see docs/versions.md): %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelt key is an error, not a silent default
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("routing file is empty: list at least one model under `models:`")
		}
		return nil, fmt.Errorf("routing file is not valid YAML or JSON for the routing schema (see docs/versions.md): %w", err)
	}
	f.defaults()
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *File) defaults() {
	for i := range f.Models {
		m := &f.Models[i]
		if m.Shadow != nil && m.Shadow.MaxQueue == 0 {
			m.Shadow.MaxQueue = 4
		}
		for j := range m.Versions {
			if r := m.Versions[j].Rollback; r != nil {
				if r.Window == 0 {
					r.Window = time.Minute
				}
				if r.MinRequests == 0 {
					r.MinRequests = 20
				}
			}
		}
	}
}

func (f *File) validate() error {
	var problems yamlguard.Problems
	bad := problems.Add
	if len(f.Models) == 0 {
		bad("no models: list at least one under `models:`")
	}
	if len(f.Models) > MaxModels {
		bad("%d models: at most %d", len(f.Models), MaxModels)
	}
	models, sockets := map[string]bool{}, map[string]string{}
	for i, m := range f.Models {
		// Names, sockets and headers are clipped: a long one is not
		// repeated in full in every message.
		where := fmt.Sprintf("models[%d] (%.64q)", i, m.Name)
		if !namePattern.MatchString(m.Name) {
			bad("%s: name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", where)
		}
		if models[m.Name] {
			bad("%s: model listed twice", where)
		}
		models[m.Name] = true
		if len(m.Versions) == 0 {
			bad("%s: no versions: list at least one under `versions:`", where)
		}
		if len(m.Versions) > MaxVersions {
			bad("%s: %d versions: at most %d", where, len(m.Versions), MaxVersions)
		}
		versions := map[string]bool{}
		var total float64
		for j, v := range m.Versions {
			vw := fmt.Sprintf("%s.versions[%d] (%.64q)", where, j, v.Name)
			if !namePattern.MatchString(v.Name) {
				bad("%s: name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", vw)
			}
			if versions[v.Name] {
				bad("%s: version listed twice in the model", vw)
			}
			versions[v.Name] = true
			switch {
			case v.Socket == "":
				bad("%s: socket is required (the unix socket of the version's runtime)", vw)
			case sockets[v.Socket] != "":
				bad("%s: socket %.64q is already used by %.130s: each version needs its own runtime", vw, v.Socket, sockets[v.Socket])
			default:
				sockets[v.Socket] = m.Name + "/" + v.Name
			}
			if v.Weight < 0 || math.IsNaN(v.Weight) || math.IsInf(v.Weight, 0) {
				bad("%s: weight %v: want a finite number >= 0", vw, v.Weight)
			} else {
				total += v.Weight
			}
			if r := v.Rollback; r != nil {
				if r.Window < 0 || r.MinRequests < 0 {
					bad("%s.rollback: window and min_requests must be positive", vw)
				}
				if r.MaxErrorRate < 0 || r.MaxErrorRate > 1 || math.IsNaN(r.MaxErrorRate) {
					bad("%s.rollback: max_error_rate %v: want a fraction in (0, 1]", vw, r.MaxErrorRate)
				}
				if r.MaxP99 < 0 {
					bad("%s.rollback: max_p99 must be positive", vw)
				}
				if r.MaxErrorRate == 0 && r.MaxP99 == 0 {
					bad("%s.rollback: set max_error_rate, max_p99 or both", vw)
				}
			}
		}
		if total <= 0 {
			bad("%s: every weight is 0: at least one version needs a weight > 0", where)
		}
		if s := m.Sticky; s != nil {
			switch {
			case s.Header != "" && s.Image:
				bad("%s.sticky: set header or image, not both", where)
			case s.Header == "" && !s.Image:
				bad("%s.sticky: set header (such as X-User-Id) or image: true", where)
			case s.Header != "" && !validHeader(s.Header):
				bad("%s.sticky.header %.64q is not a valid header name", where, s.Header)
			}
		}
		if s := m.Shadow; s != nil {
			if !versions[s.Version] {
				bad("%s.shadow.version %.64q is not one of the model's versions", where, s.Version)
			}
			if !(s.Percent > 0 && s.Percent <= 100) {
				bad("%s.shadow.percent %v: want a number in (0, 100]", where, s.Percent)
			}
			if s.MaxQueue < 0 {
				bad("%s.shadow.max_queue must be positive", where)
			}
		}
	}
	if err := problems.Err(); err != nil {
		return fmt.Errorf("invalid routing file:\n%w", err)
	}
	return nil
}

func validHeader(h string) bool {
	if len(h) > 100 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return false
		}
	}
	return http.CanonicalHeaderKey(h) != ""
}

// maxYAMLNodes bounds the YAML nodes (values, lists, maps) of a routing
// file, aliases expanded: a valid file at MaxModels and MaxVersions, every
// field set, counts under 7000 (yamlguard.Nodes). yaml.v3 allocates about 250
// bytes a node on each of the two passes (yamlguard.Check's, the decoder's), so
// this bounds what Parse allocates to a few MiB (docs/memory.md).
const maxYAMLNodes = 16384

// Default is the model /predict serves: the first listed.
func (f *File) Default() *Model { return &f.Models[0] }

// Model returns the model called name, or nil.
func (f *File) Model(name string) *Model {
	for i := range f.Models {
		if f.Models[i].Name == name {
			return &f.Models[i]
		}
	}
	return nil
}

// Single is the table of one runtime served without a routing file: one
// model with one version, "1", of weight 1, at socket. The model has no
// name (Name ""): its runtime's handshake names it, and answers show
// neither the version nor a versions list, as a server of one model. A
// routing file cannot declare such a model: Parse requires names.
func Single(socket string) *File {
	return &File{Models: []Model{{Versions: []Version{{Name: "1", Socket: socket, Weight: 1}}}}}
}

// Declared reports whether m comes from a routing file (Single's model
// does not).
func (m *Model) Declared() bool { return m.Name != "" }
