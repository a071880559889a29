//go:build tools

// Package tools pins the fortio load generator and server that the ztunnel
// data-path benchmark (make bench-mesh) runs in the ambit/fortio:dev image.
package tools

import _ "fortio.org/fortio"
