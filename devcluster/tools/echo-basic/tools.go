//go:build tools

// Package tools pins the Gateway API echo-basic server (the last
// gateway-api release that ships its source in the module).
package tools

import _ "sigs.k8s.io/gateway-api/conformance/echo-basic"
