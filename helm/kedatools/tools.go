//go:build tools

// Package kedatools pins KEDA's operator and metrics adapter, built by
// scripts/build-k8s-tools.sh for the control-loop test (helm/controlloop_test.go).
package kedatools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
