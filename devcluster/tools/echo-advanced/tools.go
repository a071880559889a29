//go:build tools

// Package tools pins Istio's echo app, the image behind the Gateway API
// conformance echo-advanced:v0.1.0.
package tools

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
