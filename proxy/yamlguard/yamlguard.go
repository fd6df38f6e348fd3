// Package yamlguard refuses YAML that would make gopkg.in/yaml.v3 allocate
// out of proportion to its text, before it is decoded: the routing file and
// the API keys file are checked with it (docs/memory.md).
package yamlguard

import (
	"bytes"
	"errors"
	"fmt"

	"gopkg.in/yaml.v3"
)

// MaxMapKeys bounds the keys of one YAML map: the files' schemas have a few.
const MaxMapKeys = 64

// Check refuses YAML that would make yaml.v3 allocate out of proportion
// before it is decoded: more than max nodes, counted from the text before
// yaml.v3 builds any (Nodes) and again with aliases expanded (it
// decodes each alias in full: "billion laughs"), nesting deeper than 64, a
// map of more than MaxMapKeys keys or with a key twice (it compares every
// pair of keys and reports each equal pair: quadratic); showKeys says
// whether a repeated key may be named in the error. A text that is not
// YAML passes: the decoder reports it.
func Check(data []byte, max int, showKeys bool) error {
	if Nodes(data) > max {
		return fmt.Errorf("more than %d YAML values, lists and maps: far more than a valid file has", max)
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return nil
	}
	type key struct {
		kind  yaml.Kind
		value string
	}
	nodes := 0
	var walk func(n *yaml.Node, depth int) error
	walk = func(n *yaml.Node, depth int) error {
		switch nodes++; {
		case nodes > max:
			return fmt.Errorf("more than %d YAML values, lists and maps with aliases expanded", max)
		case depth > 64: // also ends an alias that contains itself
			return fmt.Errorf("line %d: YAML nested deeper than 64", n.Line)
		case n.Kind == yaml.AliasNode:
			return walk(n.Alias, depth+1)
		case n.Kind == yaml.MappingNode && len(n.Content) > 2*MaxMapKeys: // the decoder compares every pair
			return fmt.Errorf("line %d: a map of more than %d keys", n.Line, MaxMapKeys)
		case n.Kind == yaml.MappingNode:
			seen := make(map[key]int, len(n.Content)/2)
			for i := 0; i < len(n.Content); i += 2 {
				k := n.Content[i]
				if line, dup := seen[key{k.Kind, k.Value}]; dup && showKeys {
					return fmt.Errorf("line %d: key %.64q already defined at line %d", k.Line, k.Value, line)
				} else if dup {
					return fmt.Errorf("line %d: a key already defined at line %d (not shown)", k.Line, line)
				}
				seen[key{k.Kind, k.Value}] = k.Line
			}
		}
		for _, c := range n.Content {
			if err := walk(c, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(&doc, 0)
}

// Nodes bounds the nodes of a YAML text, reading it once without
// allocating: a node starts at the start of a line or after one of
// - ? : , [ {, and at most two start at one place (a map and its first
// key). Blank and comment lines start none; counting the same characters
// within values, strings and comments only loosens the bound.
func Nodes(data []byte) int {
	starts := 0
	for line := range bytes.Lines(data) {
		line = bytes.TrimLeft(line, " \t")
		if len(line) == 0 || line[0] == '#' || line[0] == '\n' || line[0] == '\r' {
			continue
		}
		starts++
		for _, c := range line {
			switch c {
			case '-', '?', ':', ',', '[', '{':
				starts++
			}
		}
	}
	return 2 * starts
}

// MaxProblems bounds the problems an invalid file's error lists.
const MaxProblems = 100

// Problems collects what is wrong with a file, listing at most MaxProblems:
// a file of a million bad entries costs a bounded error.
type Problems struct{ errs []error }

// Add records a problem.
func (p *Problems) Add(format string, args ...any) {
	switch {
	case len(p.errs) < MaxProblems:
		p.errs = append(p.errs, fmt.Errorf(format, args...))
	case len(p.errs) == MaxProblems:
		p.errs = append(p.errs, errors.New("(more problems not shown)"))
	}
}

// Err is the problems joined, nil when there are none.
func (p *Problems) Err() error { return errors.Join(p.errs...) }
