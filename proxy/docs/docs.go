// Package docs holds the proxy's embedded documentation: Swagger UI at /docs
// (served from the binary: no CDN), the hand-written guide at /docs/guide and
// the OpenAPI description at /openapi.json. It knows nothing of HTTP servers:
// Lookup returns bytes and a content type.
//
// The Swagger UI files in swagger-ui/ are fetched by
// scripts/fetch-swagger-ui.sh (make deps-run) and are not committed. Built
// without them, /docs answers a page saying how to get them.
package docs

import (
	"embed"
	"io/fs"
	"path"
)

//go:embed openapi.json guide.html swagger.html swagger-ui
var files embed.FS

// UIPrefix is where the Swagger UI files are served.
const UIPrefix = "/docs/swagger-ui/"

// uiRequired are the files the Swagger page cannot work without.
var uiRequired = []string{"swagger-ui-bundle.js", "swagger-ui.css"}

// missingUI is /docs when the binary was built without the Swagger UI files.
var missingUI = []byte(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>batchgate API</title></head>
<body style="font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em">
<h1>batchgate API</h1>
<p>The interactive reference (Swagger UI) is not in this build: its files were not fetched before
<code>go build</code>. Run <code>make deps-run</code> (it runs <code>scripts/fetch-swagger-ui.sh
proxy/docs/swagger-ui</code>) and build again.</p>
<p>Meanwhile: the <a href="/docs/guide">guide</a> and the OpenAPI description,
<a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
`)

// Lookup returns what to serve at path: "/docs" and "/docs/" (Swagger UI, or
// a short page saying how to get it), "/docs/guide", "/docs/swagger-ui/<file>"
// and "/openapi.json". ok is false for any other path. body is shared: the
// caller must not modify it.
func Lookup(path string) (body []byte, contentType string, ok bool) {
	a, ok := assets[path]
	return a.body, a.contentType, ok
}

// HasUI reports whether the Swagger UI files are in this build.
func HasUI() bool { return hasUI(files) }

type asset struct {
	body        []byte
	contentType string
}

// assets maps each served path to its content, read once (embed.FS.ReadFile
// copies on every call).
var assets = table(files)

// table maps each path served to its content, from fsys laid out as this
// package's directory.
func table(fsys fs.FS) map[string]asset {
	t := map[string]asset{}
	add := func(p, name string) {
		if b, err := fs.ReadFile(fsys, name); err == nil {
			t[p] = asset{b, contentType(name)}
		}
	}
	if hasUI(fsys) {
		add("/docs", "swagger.html")
	} else {
		t["/docs"] = asset{missingUI, "text/html; charset=utf-8"}
	}
	add("/docs/guide", "guide.html")
	add("/openapi.json", "openapi.json")
	entries, _ := fs.ReadDir(fsys, "swagger-ui")
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "README.md" {
			add(UIPrefix+e.Name(), "swagger-ui/"+e.Name())
		}
	}
	for _, p := range []string{"/docs", "/docs/guide"} {
		if a, ok := t[p]; ok {
			t[p+"/"] = a
		}
	}
	return t
}

func hasUI(fsys fs.FS) bool {
	for _, name := range uiRequired {
		if st, err := fs.Stat(fsys, "swagger-ui/"+name); err != nil || st.Size() == 0 {
			return false
		}
	}
	return true
}

// contentType names the few kinds of file served here.
func contentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".json":
		return "application/json"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".png":
		return "image/png"
	}
	return "text/plain; charset=utf-8" // LICENSE, NOTICE, *.LICENSE.txt
}
