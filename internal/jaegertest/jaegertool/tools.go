//go:build tools

// Package jaegertool pins Jaeger's all-in-one binary (Jaeger v2, built on the
// OpenTelemetry Collector), built by scripts/build-jaeger.sh for the trace
// tests (internal/jaegertest).
package jaegertool

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
