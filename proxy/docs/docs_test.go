package docs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
)

func loadSpec(t *testing.T) map[string]any {
	t.Helper()
	b, _, ok := Lookup("/openapi.json")
	if !ok {
		t.Fatal("/openapi.json not found")
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	return doc
}

// resolve follows a local JSON pointer ref ("#/a/b~1c") in doc.
func resolve(doc any, ref string) (any, error) {
	ptr, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, fmt.Errorf("%s: only local refs are used here", ref)
	}
	cur := doc
	if ptr == "" {
		return cur, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, fmt.Errorf("%s: not a JSON pointer", ref)
	}
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("%s: no %q", ref, tok)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("%s: no index %q", ref, tok)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("%s: %q is inside a scalar", ref, tok)
		}
	}
	return cur, nil
}

// refs walks v and returns every $ref (and discriminator mapping target),
// with where it was found. Example values are skipped: they are data.
func refs(v any, at string, out map[string]string) {
	switch c := v.(type) {
	case map[string]any:
		for k, x := range c {
			switch {
			case k == "$ref":
				s, _ := x.(string)
				out[at+"/$ref"] = s
			case k == "example" || (k == "value" && strings.Contains(at, "/examples/")):
				continue
			case k == "mapping" && strings.HasSuffix(at, "/discriminator"):
				for name, target := range x.(map[string]any) {
					s, _ := target.(string)
					out[at+"/mapping/"+name] = s
				}
			default:
				refs(x, at+"/"+k, out)
			}
		}
	case []any:
		for i, x := range c {
			refs(x, at+"/"+strconv.Itoa(i), out)
		}
	}
}

// brokenRefs returns a line for each ref of doc that does not resolve.
func brokenRefs(doc any) []string {
	all := map[string]string{}
	refs(doc, "#", all)
	var bad []string
	for at, ref := range all {
		if _, err := resolve(doc, ref); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", at, err))
		}
	}
	sort.Strings(bad)
	return bad
}

func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadSpec(t)
	all := map[string]string{}
	refs(doc, "#", all)
	if len(all) < 50 {
		t.Errorf("found only %d refs: the walker is not seeing the document", len(all))
	}
	for _, line := range brokenRefs(doc) {
		t.Errorf("broken ref %s", line)
	}
}

// The ref check must catch what it is for: a typo'd ref, at any depth.
func TestBrokenRefsDetected(t *testing.T) {
	doc := loadSpec(t)
	if len(brokenRefs(doc)) != 0 {
		t.Skip("the document already has broken refs (see TestOpenAPIRefsResolve)")
	}
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	schemas["PredictResponse"].(map[string]any)["properties"].(map[string]any)["timings"] =
		map[string]any{"$ref": "#/components/schemas/Timing"}
	if bad := brokenRefs(doc); len(bad) != 1 || !strings.Contains(bad[0], "Timing") {
		t.Errorf("brokenRefs = %v, want the one broken ref to Timing", bad)
	}
	if _, err := resolve(doc, "#/paths/~1predict/post/responses/200"); err != nil {
		t.Errorf("escaped pointer: %v", err)
	}
}

var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPIStructure checks what OpenAPI 3.0 requires and a reader of
// /docs relies on: every operation has responses and a unique operationId,
// every {param} of a path template is declared, and the routes the proxy
// serves are all there.
func TestOpenAPIStructure(t *testing.T) {
	doc := loadSpec(t)
	if doc["openapi"] != "3.0.3" {
		t.Errorf("openapi = %v, want 3.0.3", doc["openapi"])
	}
	info, _ := doc["info"].(map[string]any)
	if info["title"] == nil || info["version"] == nil {
		t.Errorf("info needs title and version: %v", info)
	}
	paths := doc["paths"].(map[string]any)
	for _, p := range []string{"/predict", "/v2", "/v2/health/live", "/v2/health/ready",
		"/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer",
		"/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready",
		"/v2/models/{name}/versions/{version}/infer", "/healthz", "/readyz", "/metrics"} {
		if paths[p] == nil {
			t.Errorf("path %s is not described", p)
		}
	}
	ids := map[string]string{}
	tmpl := regexp.MustCompile(`\{([^}]+)\}`)
	for p, item := range paths {
		for _, m := range methods {
			op, ok := item.(map[string]any)[m].(map[string]any)
			if !ok {
				continue
			}
			where := strings.ToUpper(m) + " " + p
			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s: no operationId", where)
			} else if prev, dup := ids[id]; dup {
				t.Errorf("%s: operationId %q already used by %s", where, id, prev)
			}
			ids[id] = where
			resps, _ := op["responses"].(map[string]any)
			if len(resps) == 0 {
				t.Errorf("%s: no responses", where)
			}
			for code, r := range resps {
				r, err := deref(doc, r)
				if err != nil {
					t.Errorf("%s %s: %v", where, code, err)
					continue
				}
				if _, ok := r.(map[string]any)["description"].(string); !ok {
					t.Errorf("%s %s: a response needs a description", where, code)
				}
			}
			declared := map[string]bool{}
			// Swagger UI's "Try it out" fills each parameter with its
			// example and sends it: an example on an optional parameter
			// (a timeout, Cache-Control, Inference-Header-Content-Length)
			// would change every request tried from /docs.
			params, _ := op["parameters"].([]any)
			for _, prm := range params {
				prm, err := deref(doc, prm)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				pm := prm.(map[string]any)
				schema, _ := pm["schema"].(map[string]any)
				if pm["required"] != true && (pm["example"] != nil || schema["example"] != nil) {
					t.Errorf("%s: optional parameter %v has an example, which Try it out would send", where, pm["name"])
				}
				if pm["in"] == "path" {
					declared[pm["name"].(string)] = true
					if pm["required"] != true {
						t.Errorf("%s: path parameter %v must be required", where, pm["name"])
					}
				}
			}
			for _, sub := range tmpl.FindAllStringSubmatch(p, -1) {
				if !declared[sub[1]] {
					t.Errorf("%s: path parameter {%s} is not declared", where, sub[1])
				}
			}
		}
	}
}

func deref(doc, v any) (any, error) {
	for range 10 {
		m, ok := v.(map[string]any)
		if !ok {
			return v, nil
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return v, nil
		}
		var err error
		if v, err = resolve(doc, ref); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("ref chain too long")
}

// validate checks v against schema, for the JSON Schema subset the
// document uses. It returns the first mismatch.
func validate(doc, schema, v any, at string) error {
	s, err := deref(doc, schema)
	if err != nil {
		return err
	}
	sm := s.(map[string]any)
	if alts, ok := sm["oneOf"].([]any); ok {
		n := 0
		var errs []string
		for _, alt := range alts {
			if err := validate(doc, alt, v, at); err != nil {
				errs = append(errs, err.Error())
			} else {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: matches %d of oneOf, want 1 (%s)", at, n, strings.Join(errs, "; "))
		}
	}
	if enum, ok := sm["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
		return fmt.Errorf("%s: %v not in %v", at, v, enum)
	}
	num := func(key string) (float64, bool) {
		n, ok := sm[key].(json.Number)
		if !ok {
			return 0, false
		}
		f, _ := n.Float64()
		return f, true
	}
	switch sm["type"] {
	case "object":
		o, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		req, _ := sm["required"].([]any)
		for _, r := range req {
			if _, ok := o[r.(string)]; !ok {
				return fmt.Errorf("%s: missing required %q", at, r)
			}
		}
		props, _ := sm["properties"].(map[string]any)
		for k, x := range o {
			ps, ok := props[k]
			if !ok {
				if ap, ok := sm["additionalProperties"]; ok && ap != false {
					continue
				}
				return fmt.Errorf("%s: property %q is not described", at, k)
			}
			if err := validate(doc, ps, x, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		if lo, ok := num("minItems"); ok && float64(len(a)) < lo {
			return fmt.Errorf("%s: %d items, want at least %v", at, len(a), lo)
		}
		if hi, ok := num("maxItems"); ok && float64(len(a)) > hi {
			return fmt.Errorf("%s: %d items, want at most %v", at, len(a), hi)
		}
		for i, x := range a {
			if err := validate(doc, sm["items"], x, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
		if p, ok := sm["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			return fmt.Errorf("%s: %q does not match %s", at, str, p)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want a number, got %T", at, v)
		}
		f, _ := n.Float64()
		if sm["type"] == "integer" && f != math.Trunc(f) {
			return fmt.Errorf("%s: %v is not an integer", at, n)
		}
		if lo, ok := num("minimum"); ok && f < lo {
			return fmt.Errorf("%s: %v < minimum %v", at, f, lo)
		}
		if hi, ok := num("maximum"); ok && f > hi {
			return fmt.Errorf("%s: %v > maximum %v", at, f, hi)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	}
	return nil
}

// TestOpenAPIExamples checks every example of a media type (request and
// response bodies) against its schema, so the examples shown in /docs and
// sent by "Try it out" are what the schemas say.
func TestOpenAPIExamples(t *testing.T) {
	doc := loadSpec(t)
	count := 0
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch c := v.(type) {
		case map[string]any:
			if schema, ok := c["schema"]; ok && strings.Contains(at, "/content/") {
				if ex, ok := c["example"]; ok {
					count++
					if err := validate(doc, schema, ex, at+"/example"); err != nil {
						t.Error(err)
					}
				}
				exs, _ := c["examples"].(map[string]any)
				for name, ex := range exs {
					ex, err := deref(doc, ex)
					if err != nil {
						t.Error(err)
						continue
					}
					count++
					if err := validate(doc, schema, ex.(map[string]any)["value"], at+"/examples/"+name); err != nil {
						t.Error(err)
					}
				}
				return
			}
			for k, x := range c {
				walk(x, at+"/"+k)
			}
		case []any:
			for i, x := range c {
				walk(x, at+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(doc, "#")
	if count < 15 {
		t.Errorf("checked only %d examples", count)
	}
	// The validator must reject what the schemas exclude.
	bad := map[string]any{"model": "m", "model_sha256": "xyz", "predictions": []any{}, "cached": false,
		"coalesced": false, "timings": map[string]any{}}
	if validate(doc, map[string]any{"$ref": "#/components/schemas/PredictResponse"}, bad, "bad") == nil {
		t.Error("a model_sha256 that is not hex passed validation")
	}
}

// TestMetricsOnItsOwnPort: /metrics is served on METRICS_PORT only (the
// API port answers 404), so the description sends "Try it out" and readers
// there with a path-level server, and no other path leaves the API's
// server. The guide, served on the API port, must not link /metrics there.
func TestMetricsOnItsOwnPort(t *testing.T) {
	doc := loadSpec(t)
	paths := doc["paths"].(map[string]any)
	for p, item := range paths {
		servers, has := item.(map[string]any)["servers"]
		if p != "/metrics" {
			if has {
				t.Errorf("%s: a servers override; only /metrics is served apart from the API", p)
			}
			continue
		}
		list, _ := servers.([]any)
		if len(list) == 0 {
			t.Fatal("/metrics: no servers override naming the metrics port")
		}
		srv, _ := list[0].(map[string]any)
		if url, _ := srv["url"].(string); url != "http://localhost:9464" {
			t.Errorf("/metrics: server %q, want http://localhost:9464 (METRICS_PORT's default)", url)
		}
		if d, _ := srv["description"].(string); !strings.Contains(d, "METRICS_PORT") {
			t.Errorf("/metrics: the server's description %q does not name METRICS_PORT", d)
		}
		if d, _ := item.(map[string]any)["description"].(string); !strings.Contains(d, "METRICS_PORT") || !strings.Contains(d, "404") {
			t.Errorf("/metrics: the description %q does not say it is on METRICS_PORT and a 404 on the API port", d)
		}
	}
	guide, _, _ := Lookup("/docs/guide")
	if bytes.Contains(guide, []byte(`href="/metrics"`)) {
		t.Error(`the guide links /metrics on the API port, where it is a 404`)
	}
	if !bytes.Contains(guide, []byte("localhost:9464/metrics")) || !bytes.Contains(guide, []byte("METRICS_PORT")) {
		t.Error("the guide does not say where /metrics is (localhost:9464, METRICS_PORT)")
	}
}

func TestLookup(t *testing.T) {
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/docs/guide", "text/html; charset=utf-8", "curl -F file=@photo.jpg"},
		{"/docs/guide/", "text/html; charset=utf-8", "curl -F file=@photo.jpg"},
		{"/openapi.json", "application/json", `"openapi": "3.0.3"`},
	} {
		body, ctype, ok := Lookup(tc.path)
		if !ok || ctype != tc.ctype || !bytes.Contains(body, []byte(tc.contains)) {
			t.Errorf("Lookup(%q) = %d bytes, %q, %v", tc.path, len(body), ctype, ok)
		}
	}
	for _, p := range []string{"/docs/nope", "/docs/swagger-ui/", "/docs/swagger-ui/README.md",
		"/docs/swagger-ui/../openapi.json", "/docs/swagger-ui/x/y.js", "/openapi.yaml", "/docs/index.html"} {
		if _, _, ok := Lookup(p); ok {
			t.Errorf("Lookup(%q) found something", p)
		}
	}
	if !HasUI() {
		t.Skip("Swagger UI files not fetched (make deps-run); the fallback is tested by TestMissingUI")
	}
	body, ctype, ok := Lookup("/docs")
	if !ok || ctype != "text/html; charset=utf-8" || !bytes.Contains(body, []byte(`src="/docs/swagger-ui/swagger-ui-bundle.js"`)) {
		t.Errorf("/docs = %q, %v: %.200s", ctype, ok, body)
	}
	if b2, _, _ := Lookup("/docs/"); !bytes.Equal(body, b2) {
		t.Error("/docs/ differs from /docs")
	}
	for name, ctype := range map[string]string{"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
		"swagger-ui.css": "text/css; charset=utf-8", "favicon-32x32.png": "image/png", "LICENSE": "text/plain; charset=utf-8"} {
		if b, ct, ok := Lookup(UIPrefix + name); !ok || ct != ctype || len(b) == 0 {
			t.Errorf("Lookup(%s) = %d bytes, %q, %v", name, len(b), ct, ok)
		}
	}
}

// Built without the fetched files, /docs is a page saying what to run, and
// the rest still works.
func TestMissingUI(t *testing.T) {
	fsys := fstest.MapFS{
		"openapi.json":         {Data: []byte(`{}`)},
		"guide.html":           {Data: []byte(`guide`)},
		"swagger.html":         {Data: []byte(`swagger`)},
		"swagger-ui/README.md": {Data: []byte(`readme`)},
	}
	tab := table(fsys)
	for _, p := range []string{"/docs", "/docs/"} {
		a, ok := tab[p]
		if !ok || a.contentType != "text/html; charset=utf-8" || !bytes.Contains(a.body, []byte("make deps-run")) ||
			!bytes.Contains(a.body, []byte(`href="/docs/guide"`)) || !bytes.Contains(a.body, []byte(`href="/openapi.json"`)) {
			t.Errorf("%s without the UI = %q %v", p, a.body, ok)
		}
	}
	if a := tab["/docs/guide"]; string(a.body) != "guide" {
		t.Errorf("/docs/guide = %q", a.body)
	}
	if _, ok := tab[UIPrefix+"README.md"]; ok {
		t.Error("the README is served")
	}
	fsys["swagger-ui/swagger-ui-bundle.js"] = &fstest.MapFile{Data: []byte(`js`)}
	fsys["swagger-ui/swagger-ui.css"] = &fstest.MapFile{Data: []byte(`css`)}
	tab = table(fsys)
	if string(tab["/docs"].body) != "swagger" || string(tab[UIPrefix+"swagger-ui-bundle.js"].body) != "js" {
		t.Errorf("with the UI: /docs = %q", tab["/docs"].body)
	}
}
